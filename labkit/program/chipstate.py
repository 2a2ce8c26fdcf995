"""The chip-state file: what was programmed onto which chip, cell by cell (JSON, no pickle).

Written by program-and-verify after every round, atomically (temporary file in the same
folder, fsync, ``os.replace``), so an interrupted run leaves a consistent record that
says exactly which cells are done. Per cell (``(rows, cols)`` grids, ``null`` where
not applicable): target current (A), last verified current (A), program pulses completed,
and a status:

- ``untargeted``: not part of the programming job;
- ``pending``: not yet within tolerance (or re-opened by a disturb / erase);
- ``pulsing``: a pulse was being applied when the record was written (one more pulse
  than ``pulses`` may have landed); its current is unknown until it is read again;
- ``done``: read within tolerance at the last verify;
- ``failed``: gave up (``reasons`` says why: unreachable, max pulses, overshoot).

Currents are SI amperes; times are seconds since the epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "labkit.chipstate/1"
STATUSES = ("untargeted", "pending", "pulsing", "done", "failed")


class ChipMismatchError(ValueError):
    """A chip-state file that belongs to another chip."""


def _grid(a: np.ndarray) -> list:
    """Float grid -> nested lists with None for NaN (strict JSON)."""
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a, dtype=float)]


def _ungrid(rows: list, shape: tuple[int, int], name: str) -> np.ndarray:
    try:
        a = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"chip-state field {name!r} is not a grid of numbers") from None
    if a.shape != shape:
        raise ValueError(f"chip-state field {name!r} has shape {a.shape}; expected {shape}")
    return a


@dataclass
class ChipState:
    """One chip's programming record. Grids are ``(rows, cols)`` (NaN = none)."""

    chip_id: str
    rows: int
    cols: int
    targets_a: np.ndarray
    achieved_a: np.ndarray
    pulses: np.ndarray  # int, program pulses used per cell (all runs on this record)
    status: np.ndarray  # str, one of STATUSES
    backend: str = ""
    firmware: str = ""
    tolerance: float = 0.01
    algorithm: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    run_status: str = "programming"  # programming | complete | interrupted | refreshing
    reasons: dict = field(default_factory=dict)  # "r,c" -> why the cell failed
    row_erases: list = field(default_factory=list)  # erase pulses per row
    settings: dict = field(default_factory=dict)  # read voltage, integration time, temperature
    window: dict | None = None  # WeightWindow.to_dict() when the targets came from weights
    weights: np.ndarray | None = None  # (rows, pairs) when mapped from weights
    model: dict = field(default_factory=dict)  # learned programming response (reused on refresh)
    history: list = field(default_factory=list)  # [{"time", "event", ...}]

    @classmethod
    def new(cls, identity, rows: int, cols: int, targets_a: np.ndarray, **kw) -> "ChipState":
        t = np.asarray(targets_a, dtype=float)
        status = np.where(np.isfinite(t), "pending", "untargeted").astype(object)
        return cls(chip_id=identity.chip_id, rows=rows, cols=cols, targets_a=t.copy(),
                   achieved_a=np.full((rows, cols), np.nan), pulses=np.zeros((rows, cols), dtype=int),
                   status=status, backend=identity.backend, firmware=identity.firmware,
                   row_erases=[0] * rows, **kw)

    # ---------------------------------------------------------------- queries
    def cells(self, status: str) -> np.ndarray:
        """``(N, 2)`` cells with ``status``, row-major."""
        return np.argwhere(self.status == status)

    def count(self, status: str) -> int:
        return int(np.sum(self.status == status))

    def check_chip(self, identity) -> None:
        """ChipMismatchError unless this record belongs to ``identity.chip_id``."""
        if identity.chip_id != self.chip_id:
            raise ChipMismatchError(f"chip-state file is for chip {self.chip_id!r}, but the backend is chip "
                                    f"{identity.chip_id!r}; nothing was programmed")

    # ---------------------------------------------------------------- file
    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "chip_id": self.chip_id, "backend": self.backend, "firmware": self.firmware,
            "rows": self.rows, "cols": self.cols, "created_at": self.created_at, "updated_at": self.updated_at,
            "run_status": self.run_status, "tolerance": self.tolerance, "algorithm": self.algorithm,
            "settings": self.settings, "window": self.window,
            "weights": None if self.weights is None else _grid(self.weights),
            "targets_a": _grid(self.targets_a), "achieved_a": _grid(self.achieved_a),
            "pulses": np.asarray(self.pulses, dtype=int).tolist(),
            "status": [list(map(str, row)) for row in self.status],
            "reasons": dict(self.reasons), "row_erases": [int(x) for x in self.row_erases],
            "model": self.model, "history": self.history,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + fsync + os.replace); returns the path."""
        self.updated_at = time.time()
        path = Path(path)
        text = json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a record is for the lab to read
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "ChipState":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a chip-state file (format {d.get('format') if isinstance(d, dict) else None!r}; "
                             f"expected {FORMAT!r})")
        try:
            rows, cols = int(d["rows"]), int(d["cols"])
            shape = (rows, cols)
            status = np.array(d["status"], dtype=object)
            pulses = np.array(d["pulses"], dtype=int)
            if status.shape != shape or pulses.shape != shape:
                raise ValueError(f"status/pulses grids are not {shape}")
            bad = set(status.ravel()) - set(STATUSES)
            if bad:
                raise ValueError(f"unknown cell status {sorted(bad)}")
            weights = d.get("weights")
            return cls(
                chip_id=str(d["chip_id"]), rows=rows, cols=cols,
                targets_a=_ungrid(d["targets_a"], shape, "targets_a"),
                achieved_a=_ungrid(d["achieved_a"], shape, "achieved_a"), pulses=pulses, status=status,
                backend=str(d.get("backend", "")), firmware=str(d.get("firmware", "")),
                tolerance=float(d.get("tolerance", 0.01)), algorithm=str(d.get("algorithm", "")),
                created_at=float(d.get("created_at", 0.0)), updated_at=float(d.get("updated_at", 0.0)),
                run_status=str(d.get("run_status", "")), reasons=dict(d.get("reasons", {})),
                row_erases=[int(x) for x in d.get("row_erases", [0] * rows)],
                settings=dict(d.get("settings", {})), window=d.get("window"),
                weights=None if weights is None else np.array(weights, dtype=float),
                model=dict(d.get("model", {})), history=list(d.get("history", [])),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed chip-state file: missing or bad field {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ChipState":
        """Read a chip-state file (ValueError if it is not one)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not a chip-state file: {exc}") from None
        try:
            return cls.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
