"""Acquisition: batches of VMMs, the zero-input baseline, and repeated patterns.

Output convention: ``y = t(x=0) - t(x)`` in seconds, from a baseline of repeated
zero-input VMMs (:func:`measure_baseline`); a larger charge gives a larger ``y``.
Every routine writes its points to an open store run *as it goes* (in chunks), so an
interrupted run keeps what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labkit.backend import SafeArray
from labkit.errors import UsageError
from labkit.measure.metrics import noise_floor_ser, to_db
from labkit.measure.patterns import quantize_inputs
from labkit.measure.progress import Progress, no_progress
from labkit.validate import check_inputs, check_int

__all__ = ["Baseline", "VmmData", "RepeatData", "measure_times", "measure_baseline", "measure_vmm",
           "measure_repeats"]


@dataclass
class Baseline:
    """Zero-input crossing times: mean ``t0_s`` and spread ``std_s`` per column (s), over ``n`` VMMs."""

    t0_s: np.ndarray
    std_s: np.ndarray
    n: int

    @classmethod
    def from_times(cls, t_s) -> "Baseline":
        """The baseline of zero-input crossing times ``t_s`` (n >= 2, cols) in s."""
        t = np.asarray(t_s, dtype=float)
        return cls(t.mean(axis=0), t.std(axis=0, ddof=1), len(t))


@dataclass
class VmmData:
    """Inputs ``x`` (B, rows), crossing times ``t_s`` and outputs ``y_s = t0 - t`` (B, cols)."""

    x: np.ndarray
    t_s: np.ndarray
    y_s: np.ndarray


@dataclass
class RepeatData:
    """``repeats`` measurements of the same ``patterns``: ``y_s`` (R, B, cols) in s."""

    x: np.ndarray
    t_s: np.ndarray
    y_s: np.ndarray

    @classmethod
    def from_points(cls, x, t_s, t0_s, repeat, pattern, min_repeats: int = 1, what: str = "the table") -> "RepeatData":
        """Reshape a repeat table (rows ``x``, ``t_s`` with their ``repeat`` and ``pattern``
        indices, in any order) to (R, B, cols), keeping the leading complete repeats
        (an interrupted run ends inside one); ``y = t0_s - t``. UsageError, naming
        ``what``, with fewer than ``min_repeats`` complete repeats."""
        repeat, pattern = np.asarray(repeat).astype(int).ravel(), np.asarray(pattern).astype(int).ravel()
        B = int(pattern.max()) + 1 if len(pattern) else 0
        counts = np.bincount(repeat) if len(repeat) else np.zeros(0, int)
        R = 0
        while R < len(counts) and counts[R] == B:
            R += 1
        if R < min_repeats:
            raise UsageError(f"{what} holds {R} complete repeats of its {B} patterns; expected at least {min_repeats}")
        order = np.lexsort((pattern, repeat))[: R * B]
        t = np.asarray(t_s, dtype=float)[order].reshape(R, B, -1)
        return cls(np.asarray(x)[order][:B], t, np.asarray(t0_s) - t)

    @property
    def noise_floor_ser(self) -> float:
        """SER of one repeat against the noise-free output (:func:`~labkit.measure.metrics.noise_floor_ser`)."""
        return noise_floor_ser(self.y_s)

    @property
    def noise_floor_ser_db(self) -> float:
        """:attr:`noise_floor_ser` in dB."""
        return to_db(self.noise_floor_ser)

    @property
    def noise_std_s(self) -> np.ndarray:
        """Per-column output noise (s): repeat-to-repeat standard deviation, pooled."""
        return np.sqrt(self.y_s.var(axis=0, ddof=1).mean(axis=0))

    def noise_model(self) -> tuple[float, float]:
        """``(floor_s, relative)``: the output noise as a floor plus a part proportional to
        the output, ``var = floor^2 + (relative y)^2`` (comparator and reset noise; cell-
        current fluctuations), fitted by least squares over every (pattern, column) of
        the repeat-to-repeat variance against the squared mean output; both >= 0."""
        var = self.y_s.var(axis=0, ddof=1).ravel()
        m2 = np.square(self.y_s.mean(axis=0)).ravel()
        scale = max(float(m2.mean()), 1e-300)  # columns of like size for the solver
        (a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(m2), m2 / scale], axis=1), var, rcond=None)
        b /= scale
        if b < 0:  # no growth with the output: a floor only
            a, b = float(var.mean()), 0.0
        elif a < 0:  # proportional only
            a, b = 0.0, float(np.dot(m2, var) / max(np.dot(m2, m2), 1e-300))
        return float(np.sqrt(a)), float(np.sqrt(b))


def measure_times(backend: SafeArray, x: np.ndarray, baseline: Baseline | None = None, run=None,
                  table: str | None = None, extra: dict | None = None, progress: Progress = no_progress,
                  label: str = "VMM", chunk: int = 512, store_x: bool = True, store_y: bool = True) -> np.ndarray:
    """Crossing times (s), ``(B, cols)``, of the VMMs of inputs ``x`` (B, rows), already
    checked and on the input grid, in chunks of ``chunk``. Each chunk goes to ``run``
    table ``table`` at once: ``x`` (if ``store_x``), ``t``, ``y`` (if ``store_y`` and a
    baseline is given) and the matching rows of each ``extra`` column."""
    n = len(x)
    out = np.empty((n, backend.geometry.cols))
    with progress(label, n) as bar:
        for a in range(0, n, chunk):
            xs = x[a:a + chunk]
            t = backend.vmm_x(xs)
            out[a:a + len(xs)] = t
            if run is not None and table is not None:
                cols = {"x": xs} if store_x else {}
                cols["t"] = t
                if store_y and baseline is not None:
                    cols["y"] = baseline.t0_s - t
                cols.update({k: np.asarray(v)[a:a + len(xs)] for k, v in (extra or {}).items()})
                run.add_points(table, **cols)
            bar.advance(len(xs))
    return out


def measure_baseline(backend: SafeArray, repeats: int = 256, run=None, progress: Progress = no_progress,
                     chunk: int = 512, table: str = "baseline") -> Baseline:
    """``repeats`` (>= 2) zero-input VMMs: the per-column mean ``t0_s`` and spread (s)
    that outputs are read from. Table ``table`` (``t``)."""
    repeats = check_int("baseline repeats", repeats, 2)
    zeros = np.zeros((repeats, backend.geometry.rows))
    t = measure_times(backend, zeros, None, run, table, None, progress, "baseline", chunk,
                      store_x=False, store_y=False)
    return Baseline.from_times(t)


def measure_vmm(backend: SafeArray, x, baseline: Baseline, run=None, table: str | None = None,
                extra: dict | None = None, progress: Progress = no_progress, label: str = "VMM",
                chunk: int = 512) -> VmmData:
    """VMMs of ``x`` (B, rows) in [0, 1] (put on the input grid); stored in ``table``."""
    x = quantize_inputs(check_inputs("x", x, backend.geometry.rows), backend.settings.input_bits)
    chunk = check_int("chunk", chunk, 1)
    t = measure_times(backend, x, baseline, run, table, extra, progress, label, chunk)
    return VmmData(x, t, baseline.t0_s - t)


def measure_repeats(backend: SafeArray, x1, repeats: int, baseline: Baseline, run=None, table: str | None = None,
                    progress: Progress = no_progress, label: str = "repeated VMMs") -> RepeatData:
    """The patterns ``x1`` (B, rows) measured ``repeats`` (>= 2) times, interleaved (all
    patterns, then again); stored in ``table`` with columns ``pattern`` and ``repeat``."""
    repeats = check_int("repeats", repeats, 2)
    B = len(x1)
    pattern, repeat = np.tile(np.arange(B), repeats), np.repeat(np.arange(repeats), B)
    d = measure_vmm(backend, np.tile(x1, (repeats, 1)), baseline, run, table,
                    {"pattern": pattern, "repeat": repeat}, progress, label)
    return RepeatData.from_points(d.x, d.t_s, baseline.t0_s, repeat, pattern)
