"""Linearity and bit-line droop: the output against the total charge, all rows at common levels.

Outputs in s (``y = t0 - t``), charge in C (nominal, ``y * I_ref``). Table ``droop``
(``x``, ``t``, ``y``, ``level``); arrays ``droop_x_levels``, ``droop_y_s``,
``droop_fraction``. :func:`linearity_step` measures one level of the sweep (the live
view runs the sweep a level at a time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from labkit.backend import SafeArray
from labkit.errors import UsageError
from labkit.measure.acquire import Baseline, measure_vmm
from labkit.measure.patterns import quantize_inputs
from labkit.measure.progress import Progress, no_progress
from labkit.validate import check_int

__all__ = ["DroopSweep", "droop_sweep", "linearity_levels", "level_inputs", "linearity_step"]


def linearity_levels(levels: int, input_bits: int) -> np.ndarray:
    """The distinct non-zero input levels ``l / levels`` (l = 1..levels) on the input grid."""
    xl = np.unique(quantize_inputs(np.arange(1, levels + 1) / levels, input_bits))
    return xl[xl > 0]


def level_inputs(x_levels, rows: int, active=None) -> np.ndarray:
    """Inputs ``(L, rows)``: the ``active`` rows (default all) at each level of ``x_levels``, the others off."""
    xl = np.asarray(x_levels, dtype=float).ravel()
    x = np.zeros((len(xl), rows))
    x[:, np.arange(rows) if active is None else active] = xl[:, None]
    return x


def linearity_step(backend: SafeArray, baseline: Baseline, level: float, repeats: int = 4,
                   rows: Sequence[int] | None = None) -> np.ndarray:
    """Mean output ``y`` (s) per column of ``repeats`` VMMs with ``rows`` (default all)
    at input ``level`` in [0, 1]: one point of the linearity sweep."""
    repeats = check_int("repeats", repeats, 1)
    x = np.repeat(level_inputs([level], backend.geometry.rows, _active_rows(backend, rows)), repeats, axis=0)
    return measure_vmm(backend, x, baseline).y_s.mean(axis=0)


def _active_rows(backend: SafeArray, rows) -> np.ndarray:
    """The distinct rows of ``rows`` (all rows for None), checked against the geometry."""
    if rows is None:
        return np.arange(backend.geometry.rows)
    return np.unique(backend.cells([[r, 0] for r in rows])[:, 0])


@dataclass
class DroopSweep:
    """Output vs total charge: every row in ``rows`` at level ``x_levels[l]``.

    ``y_s`` (L, cols): mean output (s); ``valid`` (L, cols): not saturated (the crossing
    came later than ``saturation_margin`` of the baseline). A straight line
    ``intercept_s + slope_s * x`` through the small levels is the linear expectation
    (its intercept holds the edges' crosstalk); ``droop_fraction_col = 1 - (y - a) / (b x)``
    at each column's largest valid level (edges excluded from both), and
    ``droop_fraction`` its mean over columns. ``charge_c``: nominal charge ``y * I_ref``.
    """

    x_levels: np.ndarray
    y_s: np.ndarray
    y_std_s: np.ndarray
    valid: np.ndarray
    intercept_s: np.ndarray
    slope_s: np.ndarray
    droop_fraction_col: np.ndarray
    droop_fraction: float
    x_at_droop: np.ndarray
    charge_c: np.ndarray

    def linear_s(self) -> np.ndarray:
        """The linear expectation (s), ``(L, cols)``."""
        return self.intercept_s[None, :] + self.slope_s[None, :] * self.x_levels[:, None]

    @property
    def nonlinearity(self) -> np.ndarray:
        """Largest |y - linear| over valid levels, relative to the column's largest valid y."""
        dev = np.where(self.valid, np.abs(self.y_s - self.linear_s()), 0.0)
        top = np.where(self.valid, self.y_s, 0.0).max(axis=0)
        return dev.max(axis=0) / np.maximum(top, 1e-30)


def droop_sweep(backend: SafeArray, baseline: Baseline, levels: int = 16, repeats: int = 16,
                rows: Sequence[int] | None = None, fit_upto: float = 0.25, saturation_margin: float = 0.05,
                run=None, progress: Progress = no_progress) -> DroopSweep:
    """Linearity and bit-line droop: rows at increasing common levels ``l / levels``.

    Table ``droop`` (``x``, ``t``, ``y``, ``level``); arrays ``droop_y_s``, ``droop_fraction``.
    """
    levels = check_int("droop levels", levels, 4, 4096)
    repeats = check_int("droop repeats", repeats, 1)
    if not 0 < float(fit_upto) < 1:
        raise UsageError(f"fit_upto={fit_upto!r}; expected in (0, 1)")
    if not 0 <= float(saturation_margin) < 1:
        raise UsageError(f"saturation_margin={saturation_margin!r}; expected in [0, 1)")
    R, C = backend.geometry.rows, backend.geometry.cols
    active = _active_rows(backend, rows)
    if len(active) == 0:
        raise UsageError("droop_sweep needs at least one active row")
    xl = linearity_levels(levels, backend.settings.input_bits)
    x = np.tile(level_inputs(xl, R, active), (repeats, 1))
    lvl = np.tile(np.arange(len(xl)), repeats)
    d = measure_vmm(backend, x, baseline, run, "droop", {"level": lvl}, progress, "droop sweep")
    y = d.y_s.reshape(repeats, len(xl), C)
    t = d.t_s.reshape(repeats, len(xl), C)
    ym = y.mean(axis=0)
    ystd = y.std(axis=0, ddof=1) if repeats > 1 else np.zeros_like(ym)
    valid = t.mean(axis=0) > saturation_margin * baseline.t0_s[None, :]
    # A column stays valid only up to its first saturated level.
    valid = np.cumprod(valid, axis=0).astype(bool)
    a, b = np.zeros(C), np.zeros(C)
    frac, x_at = np.full(C, np.nan), np.full(C, np.nan)
    for j in range(C):
        idx = np.flatnonzero(valid[:, j])
        if len(idx) < 3:
            continue
        # The tangent at small outputs: a quadratic through every valid level (its
        # linear part is the extrapolation of the small outputs, with all points'
        # averaging), or a straight line through the levels up to fit_upto when there
        # are too few levels for a quadratic.
        w = 1.0 / np.maximum(ystd[idx, j], 1e-12) if repeats > 2 else None
        if len(idx) >= 5:
            _, b[j], a[j] = np.polyfit(xl[idx], ym[idx, j], 2, w=w)
        else:
            small = idx[xl[idx] <= fit_upto + 1e-12]
            small = small if len(small) >= 2 else idx[:2]
            b[j], a[j] = np.polyfit(xl[small], ym[small, j], 1)
        last = idx[-1]
        lin = b[j] * xl[last]
        if lin > 0:
            frac[j] = 1.0 - (ym[last, j] - a[j]) / lin
            x_at[j] = xl[last]
    overall = float(np.nanmean(frac)) if np.any(np.isfinite(frac)) else math.nan
    result = DroopSweep(xl, ym, ystd, valid, a, b, frac, overall, x_at,
                        ym * backend.datasheet.reference_current_a)
    if run is not None:
        run.put_array("droop_x_levels", xl)
        run.put_array("droop_y_s", ym)
        run.put_array("droop_fraction", frac)
    return result
