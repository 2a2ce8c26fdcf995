"""Word-line -> bit-line crosstalk: the output step of one falling edge, per (row, col).

Times in s; volts are *nominal*: ``step_s * I_ref / C`` from the datasheet's reference
current and bit-line capacitance (labkit knows nothing better). Table ``crosstalk``
(``x``, ``t``, ``probe_row`` (-1: reference), ``width_s``, ``repeat``); arrays
``crosstalk_step_s``, ``crosstalk_step_se_s``, ``crosstalk_v``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from labkit.backend import SafeArray
from labkit.errors import UsageError
from labkit.measure.acquire import measure_times
from labkit.measure.patterns import input_steps, quantize_inputs
from labkit.measure.progress import Progress, no_progress
from labkit.validate import check_inputs, check_int

__all__ = ["CrosstalkMap", "crosstalk_map", "crosstalk_pattern"]


def _nominal_volts(t_s, backend: SafeArray):
    """Output time (s) as nominal bit-line volts: ``t * I_ref / C`` from the datasheet."""
    sheet = backend.datasheet
    return np.asarray(t_s) * sheet.reference_current_a / sheet.bitline_capacitance_f


@dataclass
class CrosstalkMap:
    """Word-line -> bit-line crosstalk of one falling edge, per (row, col).

    ``step_s``: the output shift (s) that one edge of row i causes on column j, with the
    row's own charge removed by extrapolating the probe width to zero; ``step_se_s`` its
    standard error. ``volts``: the same in *nominal* volts, ``step_s * I_ref / C`` from
    the datasheet (positive: the edge pulled the bit line down). ``slope``: output
    seconds per second of probe width, i.e. the row's cell current over I_ref.
    """

    step_s: np.ndarray
    step_se_s: np.ndarray
    volts: np.ndarray
    slope: np.ndarray
    widths_s: np.ndarray
    background: np.ndarray
    full_scale_v: float

    @property
    def mean_v(self) -> float:
        """Mean |step| over the array (nominal V)."""
        return float(np.mean(np.abs(self.volts)))

    @property
    def max_v(self) -> float:
        """Largest |step| in the array (nominal V)."""
        return float(np.max(np.abs(self.volts)))

    @property
    def fraction_of_full_scale(self) -> float:
        """Mean |step| over the nominal full-scale swing (precharge - threshold)."""
        return self.mean_v / self.full_scale_v

    def pattern(self) -> dict:
        """The layout pattern of the map: :func:`crosstalk_pattern`."""
        return crosstalk_pattern(self.volts)


def crosstalk_map(backend: SafeArray, widths_clocks: Sequence[int] = (1, 2, 3, 4), repeats: int = 64,
                  background=None, run=None, progress: Progress = no_progress, chunk: int = 1024) -> CrosstalkMap:
    """Probe every row with one short pulse (one falling edge at ``k`` input clocks,
    ``k`` in ``widths_clocks``) against a fixed ``background`` (default: all rows off).

    Each repeat measures, back to back, the reference (the background with the probed
    row off) and every probe; ``y = t(reference) - t(probe)`` is the edge step plus the
    probe's own charge, which is linear in its width. A straight-line fit of ``y`` over
    the widths, per repeat, gives the intercept at width -> 0+: the edge step alone.
    Table ``crosstalk``; arrays ``crosstalk_step_s``, ``crosstalk_v``.
    """
    rows, cols = backend.geometry.rows, backend.geometry.cols
    steps = input_steps(backend.settings.input_bits)
    k = np.asarray(widths_clocks)
    if (k.ndim != 1 or len(k) < 2 or not np.issubdtype(k.dtype, np.integer) or k.min() < 1
            or k.max() > steps or len(np.unique(k)) != len(k)):
        raise UsageError(f"widths_clocks={list(np.atleast_1d(k))}; expected >= 2 distinct integers in [1, {steps}]")
    repeats = check_int("crosstalk repeats", repeats, 2)
    bg = np.zeros(rows) if background is None else quantize_inputs(
        check_inputs("background", np.atleast_2d(background), rows)[0], backend.settings.input_bits)
    refs_all = np.repeat(bg[None, :], rows, axis=0)
    refs_all[np.arange(rows), np.arange(rows)] = 0.0
    refs, ref_of_row = np.unique(refs_all, axis=0, return_inverse=True)
    ref_of_row = ref_of_row.ravel()
    xk = k / steps
    probe_row = np.repeat(np.arange(rows), len(k))
    probes = refs_all[probe_row].copy()
    probes[np.arange(len(probe_row)), probe_row] = np.tile(xk, rows)
    block = np.concatenate([refs, probes])  # one repeat
    nb = len(block)
    x = np.tile(block, (repeats, 1))
    T = backend.settings.integration_time_s
    extra = {
        "probe_row": np.tile(np.concatenate([np.full(len(refs), -1), probe_row]), repeats),
        "width_s": np.tile(np.concatenate([np.zeros(len(refs)), np.tile(xk, rows)]), repeats) * T,
        "repeat": np.repeat(np.arange(repeats), nb),
    }
    chunk = max(nb, (chunk // nb) * nb)
    t = measure_times(backend, x, None, run, "crosstalk", extra, progress, "crosstalk", chunk, store_y=False)
    t = t.reshape(repeats, nb, cols)
    t_ref = t[:, :len(refs)][:, ref_of_row]  # (rep, rows, cols)
    t_probe = t[:, len(refs):].reshape(repeats, rows, len(k), cols)
    y = t_ref[:, :, None, :] - t_probe  # (rep, rows, K, cols)
    w = xk * T
    design = np.stack([np.ones_like(w), w], axis=1)  # (K, 2)
    pinv = np.linalg.pinv(design)  # (2, K)
    coef = np.einsum("pk,rikc->rpic", pinv, y)  # (rep, 2, rows, cols)
    step = coef[:, 0].mean(axis=0)
    se = coef[:, 0].std(axis=0, ddof=1) / math.sqrt(repeats)
    slope = coef[:, 1].mean(axis=0)
    sheet = backend.datasheet
    result = CrosstalkMap(step, se, _nominal_volts(step, backend), slope, w, bg,
                          sheet.precharge_v - sheet.threshold_v)
    if run is not None:
        run.put_array("crosstalk_step_s", step)
        run.put_array("crosstalk_step_se_s", se)
        run.put_array("crosstalk_v", result.volts)
    return result


def crosstalk_pattern(volts) -> dict:
    """Describe the layout pattern of a crosstalk map ``(rows, cols)``.

    Returns the relative change across the columns and across the rows (from straight
    lines through the column and row means), the even/odd row ratio, columns that are
    markedly weaker than the column trend (and their period, if regular), the
    rank-1 fraction (how well a row profile times a column profile explains the map)
    and a one-line ``description``.
    """
    v = np.abs(np.asarray(volts, dtype=float))
    rows, cols = v.shape
    mean = float(v.mean())
    if not mean > 0:
        return {"description": "no crosstalk measured", "col_trend": 0.0, "row_trend": 0.0,
                "even_odd_row_ratio": 1.0, "weak_columns": [], "weak_column_ratio": 1.0,
                "weak_column_period": None, "rank1_fraction": 1.0}
    col_mean, row_mean = v.mean(axis=0), v.mean(axis=1)
    even, odd = row_mean[0::2].mean(), row_mean[1::2].mean()
    # Trends: fit the column profile with a line while the weak columns are set aside.
    ci = np.arange(cols)
    weak = np.zeros(cols, bool)
    for _ in range(3):
        pc = np.polyfit(ci[~weak], col_mean[~weak], 1)
        fit = np.polyval(pc, ci)
        weak = col_mean < 0.85 * fit
        if weak.sum() > cols // 2:
            weak[:] = False
            break
    pc = np.polyfit(ci[~weak], col_mean[~weak], 1)
    fit = np.polyval(pc, ci)
    col_trend = float(pc[0] * (cols - 1) / fit.mean())
    # Row trend from rows with the even/odd difference removed.
    rmean = row_mean / np.where(np.arange(rows) % 2 == 0, even, odd) * (even + odd) / 2
    pr = np.polyfit(np.arange(rows), rmean, 1)
    row_trend = float(pr[0] * (rows - 1) / rmean.mean())
    weak_cols = [int(c) for c in np.flatnonzero(weak)]
    ratio = float(np.mean(col_mean[weak] / fit[weak])) if weak_cols else 1.0
    period = None
    if len(weak_cols) >= 2:
        gaps = np.diff(weak_cols)
        if np.all(gaps == gaps[0]):
            period = int(gaps[0])
    s = np.linalg.svd(v, compute_uv=False)
    rank1 = float(s[0] ** 2 / np.sum(s**2))
    parts = [f"{100 * col_trend:+.0f}% across columns", f"{100 * row_trend:+.0f}% across rows",
             f"even/odd rows x{even / odd:.2f}"]
    if weak_cols:
        which = (f"every {period}th column from {weak_cols[0]}" if period else
                 "columns " + ",".join(map(str, weak_cols)))
        parts.append(f"{which} x{ratio:.2f}")
    return {"description": "; ".join(parts), "col_trend": col_trend, "row_trend": row_trend,
            "even_odd_row_ratio": float(even / odd), "weak_columns": weak_cols,
            "weak_column_ratio": ratio, "weak_column_period": period, "rank1_fraction": rank1}
