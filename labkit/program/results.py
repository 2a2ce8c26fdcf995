"""The outcome of one program-and-verify job (currents in A, per job cell)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from labkit.errors import ResultError


class FailedCellsError(ResultError):
    """Program-and-verify ran, but some cells are not within tolerance (exit code 3)."""


@dataclass
class ProgramResult:
    """Outcome of one job; arrays are per job cell (``cells`` is ``(N, 2)``), currents in A."""

    chip_id: str
    algorithm: str
    tolerance: float
    cells: np.ndarray
    targets_a: np.ndarray
    achieved_a: np.ndarray  # averaged read of the last verify of each cell
    pulses: np.ndarray  # program pulses in this job
    status: np.ndarray  # done | failed
    reasons: dict = field(default_factory=dict)  # "r,c" -> reason
    erases: int = 0  # erase pulses on rows (block + partial), the initial erase included
    partial_erases: int = 0
    rounds: int = 0
    final_reopened: int = 0  # cells the final verify passes found out of tolerance
    elapsed_s: float = 0.0

    def grid(self, name: str, rows: int, cols: int) -> np.ndarray:
        """A per-cell array of this result (e.g. ``achieved_a``) as a ``(rows, cols)`` grid (NaN elsewhere)."""
        out = np.full((rows, cols), np.nan)
        out[self.cells[:, 0], self.cells[:, 1]] = getattr(self, name)
        return out

    @property
    def rel_error(self) -> np.ndarray:
        return self.achieved_a / self.targets_a - 1.0

    def summary(self) -> dict:
        """Figures of the job (the ``--json`` object of ``labkit program``)."""
        e = self.rel_error
        ok = np.isfinite(e)
        ee = np.where(ok, e, np.inf)
        p = self.pulses
        failed = [{"row": int(r), "col": int(c), "reason": self.reasons.get(f"{r},{c}", "")}
                  for (r, c), s in zip(self.cells, self.status) if s == "failed"]
        return {
            "chip_id": self.chip_id, "algorithm": self.algorithm, "tolerance": self.tolerance,
            "cells": int(len(self.cells)),
            "rms_rel_error": float(np.sqrt(np.mean(e[ok] ** 2))) if ok.any() else None,
            "max_rel_error": float(np.max(np.abs(e[ok]))) if ok.any() else None,
            "within_tolerance_fraction": float(np.mean(np.abs(ee) <= self.tolerance)) if len(e) else 1.0,
            "pulses_median": float(np.median(p)) if len(p) else 0.0,
            "pulses_p95": float(np.percentile(p, 95)) if len(p) else 0.0,
            "pulses_max": int(np.max(p)) if len(p) else 0,
            "pulses_total": int(np.sum(p)),
            "failed_cells": len(failed), "failed": failed,
            "erases": self.erases, "partial_erases": self.partial_erases, "rounds": self.rounds,
            "final_reopened": self.final_reopened, "elapsed_s": self.elapsed_s,
        }
