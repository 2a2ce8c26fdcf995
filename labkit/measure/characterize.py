"""Backend-agnostic characterization of a 16x16 array (only the ArrayBackend contract).

Every routine takes a :class:`~labkit.backend.SafeArray`, returns numpy results (small
dataclasses), and, when given an open store :class:`~labkit.store.Run`, writes its
points to the run *as it goes* (in chunks), so an interrupted run keeps what was
measured. Optional ``progress(label, total)`` returns a context manager with
``advance(n)`` (``Console.progress`` fits).

Output convention: ``y = t(x=0) - t(x)`` in seconds, from a baseline of repeated
zero-input VMMs (:func:`measure_baseline`); a larger charge gives a larger ``y``.
Multiply by the reference current for charge. Inputs ``x`` in [0, 1] are put on the
input clock grid (``1 / 2**input_bits``) before they are applied, so the stored ``x`` is
the applied ``x``. Volts reported here are *nominal*: derived from the datasheet's
bit-line capacitance and reference current (labkit knows nothing better).

Point tables written to a run (columns; shapes per point):

===================  ============================================================
``baseline``         ``t`` (cols,) s: zero-input VMMs
``idvg``             ``cell`` (2,), ``gate_v``, ``current_a``
``vmm_random``       ``x`` (rows,), ``t`` (cols,) s, ``y`` (cols,) s
``vmm_onehot``       ``x``, ``t``, ``y``, ``row``
``vmm_repeat``       ``x``, ``t``, ``y``, ``pattern``, ``repeat``
``vmm_activations``  ``x``, ``t``, ``y``
``crosstalk``        ``x``, ``t``, ``probe_row`` (-1: reference), ``width_s``, ``repeat``
``droop``            ``x``, ``t``, ``y``, ``level``
``temperature``      ``set_k``, ``measured_k``, ``cell_current_a`` (rows, cols)
``retention``        ``elapsed_s``, ``cell_current_a`` (rows, cols)
===================  ============================================================

and arrays ``cell_current_a``, ``crosstalk_step_s``, ``crosstalk_v``, ``droop_y_s`` ...
:func:`load_dataset` reads a VMM table of a stored run back (e.g. for calibration).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from labkit.backend import GateSweep, SafeArray, TemperatureControl, VirtualClock
from labkit.backend.checks import all_in_range, finite
from labkit.errors import SafetyError, UsageError
from labkit.measure.metrics import effective_bits, noise_floor_ser, to_db
from labkit.units import si

# ----------------------------------------------------------------------------- helpers


class _NullBar:
    def advance(self, n: int = 1, status: str = "") -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def no_progress(label: str, total: int) -> _NullBar:
    """A progress factory that shows nothing."""
    return _NullBar()


Progress = Callable[[str, int], object]


def _grid(backend: SafeArray) -> int:
    """Input clock steps per integration window (x is a multiple of 1/steps)."""
    return 2 ** int(backend.settings.input_bits)


def quantize_inputs(x, input_bits: int) -> np.ndarray:
    """``x`` rounded to the input pulse-width grid ``k / 2**input_bits``, clipped to [0, 1]."""
    steps = 2 ** int(input_bits)
    return np.clip(np.round(np.asarray(x, dtype=float) * steps) / steps, 0.0, 1.0)


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not integer or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}={value!r}; expected an integer {rng}")
    return int(value)


def _check_inputs(name: str, x, rows: int) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 2 or a.shape[1] != rows or a.shape[0] == 0:
        raise ValueError(f"{name} has shape {a.shape}; expected (B >= 1, {rows})")
    if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
        raise ValueError(f"{name} must be finite and in [0, 1], got range [{np.nanmin(a):g}, {np.nanmax(a):g}]")
    return a


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0xC4A2])


def _nominal_volts(t_s, backend: SafeArray):
    """Output time (s) as nominal bit-line volts: ``t * I_ref / C`` from the datasheet."""
    sheet = backend.datasheet
    return np.asarray(t_s) * sheet.reference_current_a / sheet.bitline_capacitance_f


@dataclass
class Baseline:
    """Zero-input crossing times: mean ``t0_s`` and spread ``std_s`` per column (s)."""

    t0_s: np.ndarray
    std_s: np.ndarray
    n: int


def measure_baseline(backend: SafeArray, repeats: int = 256, run=None, progress: Progress = no_progress,
                     chunk: int = 512) -> Baseline:
    """``repeats`` zero-input VMMs; table ``baseline`` (``t``)."""
    repeats = _check_int("baseline repeats", repeats, 2)
    zeros = np.zeros((repeats, backend.geometry.rows))
    t = _measure(backend, zeros, None, run, "baseline", {}, progress, "baseline", chunk, store_x=False, store_y=False)
    return Baseline(t.mean(axis=0), t.std(axis=0, ddof=1), repeats)


def _measure(backend: SafeArray, x: np.ndarray, baseline: Baseline | None, run, table: str | None,
             extra: dict, progress: Progress, label: str, chunk: int, store_x: bool = True,
             store_y: bool = True) -> np.ndarray:
    """VMMs of ``x`` in chunks; each chunk goes to ``run`` table ``table`` at once. Returns t (s)."""
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
                cols.update({k: np.asarray(v)[a:a + len(xs)] for k, v in extra.items()})
                run.add_points(table, **cols)
            bar.advance(len(xs))
    return out


# ----------------------------------------------------------------------------- cell currents


def cell_current_map(backend: SafeArray, read_voltage_v=None, averages: int = 1, run=None,
                     name: str = "cell_current_a") -> np.ndarray:
    """Read current (A) of every cell, ``(rows, cols)``, averaged over ``averages`` reads.

    ``read_voltage_v`` (V, optional) applies a read voltage for this map only."""
    averages = _check_int("averages", averages, 1)
    with _operating_point(backend, read_voltage_v):
        maps = [backend.read_currents() for _ in range(averages)]
    i = np.mean(maps, axis=0)
    if run is not None and name:
        run.put_array(name, i)
    return i


@contextlib.contextmanager
def _operating_point(backend: SafeArray, read_voltage_v):
    if read_voltage_v is None:
        yield
        return
    old = backend.settings
    backend.configure(read_voltage_v=read_voltage_v)
    try:
        yield
    finally:
        backend.configure(old)


# ----------------------------------------------------------------------------- Id-Vg


def gate_voltages(start_v, stop_v, points: int, backend: SafeArray | None = None) -> np.ndarray:
    """``points`` gate voltages (V) from ``start_v`` to ``stop_v``, checked against the
    envelope's read-voltage range (the gate range a cell may see outside programming)."""
    a, b = float(si(start_v, "V", "start_v")), float(si(stop_v, "V", "stop_v"))
    points = _check_int("gate sweep points", points, 2, 10_000)
    if not (math.isfinite(a) and math.isfinite(b)) or not a < b:
        raise ValueError(f"gate sweep {a:g} V -> {b:g} V; expected finite start < stop")
    if backend is not None:
        lo, hi = backend.envelope.read_voltage_range_v
        if a < lo or b > hi:
            raise ValueError(f"gate sweep {a:g} V -> {b:g} V is outside the allowed [{lo:g}, {hi:g}] V")
    return np.linspace(a, b, points)


@dataclass
class IdVgCurves:
    """Drain current ``current_a`` (cells, points) of each cell over ``gate_v`` (V)."""

    cells: np.ndarray
    gate_v: np.ndarray
    current_a: np.ndarray
    path: str  # 'source-measure' (GateSweep) or 'array-read' (read voltage stepped)
    compliance_a: float

    def subthreshold_slope_mv_per_decade(self) -> np.ndarray:
        """Steepest slope (mV/decade) of each curve below compliance; nan where undefined."""
        out = np.full(len(self.cells), np.nan)
        for k, i in enumerate(self.current_a):
            ok = (i > 0) & (i < 0.9 * self.compliance_a)
            if ok.sum() >= 2:
                d = np.diff(np.log10(i[ok])) / np.diff(self.gate_v[ok])
                if np.max(d) > 0:
                    out[k] = 1e3 / np.max(d)
        return out


def id_vg_sweep(backend: SafeArray, cells, gate_v, compliance_a: float = 1e-6, run=None,
                progress: Progress = no_progress) -> IdVgCurves:
    """Id-Vg of chosen cells: through the source-measure path (GateSweep) where the
    backend has one, else by stepping the read voltage and reading the cells (the
    operating point is restored afterwards). Table ``idvg``."""
    cells = backend.cells(cells)
    if len(cells) == 0:
        raise ValueError("id_vg_sweep needs at least one cell, got none")
    g = np.asarray(si(gate_v, "V", "gate_v"), dtype=float)
    if g.ndim != 1 or len(g) < 2:
        raise ValueError(f"gate_v has shape {g.shape}; expected at least 2 gate voltages")
    finite("gate_v", g)
    if np.ptp(g) == 0:
        raise UsageError(f"gate voltages all {g[0]:g} V; expected distinct values")
    all_in_range("gate voltage", g, backend.envelope.read_voltage_range_v, "V")
    comp = float(si(compliance_a, "A", "compliance_a"))
    if not 0 < comp <= backend.envelope.max_compliance_a:
        raise SafetyError(f"compliance_a={comp:g} A is outside the allowed (0, {backend.envelope.max_compliance_a:g}] A")
    sweep = backend.capability(GateSweep)
    out = np.empty((len(cells), len(g)))
    with progress("Id-Vg", len(cells)) as bar:
        if sweep is not None:
            path = "source-measure"
            for k, (r, c) in enumerate(cells):
                out[k] = np.minimum(sweep.id_vg((int(r), int(c)), g, comp), comp)
                _store_idvg(run, cells[k:k + 1], g, out[k:k + 1])
                bar.advance(1)
        else:
            path = "array-read"
            old = backend.settings
            try:
                for p, v in enumerate(g):
                    backend.configure(read_voltage_v=float(v))
                    out[:, p] = np.minimum(backend.read_currents(cells), comp)
            finally:
                backend.configure(old)
            _store_idvg(run, cells, g, out)
            bar.advance(len(cells))
    return IdVgCurves(cells, g, out, path, comp)


def _store_idvg(run, cells, g, current) -> None:
    if run is None:
        return
    n, p = current.shape
    run.add_points("idvg", cell=np.repeat(cells, p, axis=0), gate_v=np.tile(g, n), current_a=current.ravel())


# ----------------------------------------------------------------------------- VMM datasets


def random_patterns(n: int, rows: int = 16, zero_fraction: float = 0.4, input_bits: int = 8,
                    seed: int = 0) -> np.ndarray:
    """``n`` random input vectors on the input grid: uniform in (0, 1], each input zero
    with probability ``zero_fraction`` (so edges and durations separate in a fit)."""
    n = _check_int("patterns", n, 1)
    if not 0.0 <= float(zero_fraction) <= 1.0:
        raise ValueError(f"zero_fraction={zero_fraction!r}; expected in [0, 1]")
    rng = _rng(seed)
    x = quantize_inputs(rng.random((n, rows)), input_bits)
    x[rng.random((n, rows)) < zero_fraction] = 0.0
    return x


def onehot_patterns(rows: int = 16, levels: Sequence[float] = (1.0,)) -> tuple[np.ndarray, np.ndarray]:
    """One row active at a time, at each level: ``x`` (rows*levels, rows) and its row index."""
    lv = np.asarray(levels, dtype=float).ravel()
    if lv.size == 0 or np.any(~np.isfinite(lv)) or lv.min() <= 0 or lv.max() > 1:
        raise ValueError(f"one-hot levels {lv.tolist()}; expected values in (0, 1]")
    row = np.tile(np.arange(rows), len(lv))
    x = np.zeros((len(row), rows))
    x[np.arange(len(row)), row] = np.repeat(lv, rows)
    return x, row


@dataclass
class VmmData:
    """Inputs ``x`` (B, rows), crossing times ``t_s`` and outputs ``y_s = t0 - t`` (B, cols)."""

    x: np.ndarray
    t_s: np.ndarray
    y_s: np.ndarray


def measure_vmm(backend: SafeArray, x, baseline: Baseline, run=None, table: str | None = None,
                extra: dict | None = None, progress: Progress = no_progress, label: str = "VMM",
                chunk: int = 512) -> VmmData:
    """VMMs of ``x`` (B, rows) in [0, 1] (put on the input grid); stored in ``table``."""
    x = quantize_inputs(_check_inputs("x", x, backend.geometry.rows), backend.settings.input_bits)
    chunk = _check_int("chunk", chunk, 1)
    t = _measure(backend, x, baseline, run, table, extra or {}, progress, label, chunk)
    return VmmData(x, t, baseline.t0_s - t)


def vmm_random(backend: SafeArray, baseline: Baseline, n: int = 4096, zero_fraction: float = 0.4,
               seed: int = 0, run=None, progress: Progress = no_progress) -> VmmData:
    """Random-pattern dataset (table ``vmm_random``)."""
    x = random_patterns(n, backend.geometry.rows, zero_fraction, backend.settings.input_bits, seed)
    return measure_vmm(backend, x, baseline, run, "vmm_random", progress=progress, label="random VMMs")


@dataclass
class OneHotData(VmmData):
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    def cell_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean output per (level, row, col): ``levels`` (L,), ``y`` (L, rows, cols) in s."""
        level = self.x[np.arange(len(self.row)), self.row]
        levels = np.unique(level)
        rows = self.x.shape[1]
        y = np.zeros((len(levels), rows, self.y_s.shape[1]))
        for k, lv in enumerate(levels):
            for r in range(rows):
                sel = (level == lv) & (self.row == r)
                y[k, r] = self.y_s[sel].mean(axis=0)
        return levels, y


def vmm_onehot(backend: SafeArray, baseline: Baseline, levels: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
               repeats: int = 8, run=None, progress: Progress = no_progress) -> OneHotData:
    """Every row alone at each level, ``repeats`` times (table ``vmm_onehot``)."""
    repeats = _check_int("one-hot repeats", repeats, 1)
    x1, row1 = onehot_patterns(backend.geometry.rows, levels)
    x, row = np.tile(x1, (repeats, 1)), np.tile(row1, repeats)
    d = measure_vmm(backend, x, baseline, run, "vmm_onehot", {"row": row}, progress, "one-hot VMMs")
    return OneHotData(d.x, d.t_s, d.y_s, row)


@dataclass
class RepeatData:
    """``repeats`` measurements of the same ``patterns``: ``y_s`` (R, B, cols) in s."""

    x: np.ndarray
    t_s: np.ndarray
    y_s: np.ndarray

    @property
    def noise_floor_ser(self) -> float:
        return noise_floor_ser(self.y_s)

    @property
    def noise_floor_ser_db(self) -> float:
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


def vmm_repeats(backend: SafeArray, baseline: Baseline, patterns: int = 128, repeats: int = 16,
                zero_fraction: float = 0.4, seed: int = 1, run=None, progress: Progress = no_progress) -> RepeatData:
    """The same random patterns measured ``repeats`` times, interleaved (all patterns,
    then again): the noise floor (table ``vmm_repeat``)."""
    repeats = _check_int("repeats", repeats, 2)
    x1 = random_patterns(patterns, backend.geometry.rows, zero_fraction, backend.settings.input_bits, seed)
    B = len(x1)
    x = np.tile(x1, (repeats, 1))
    extra = {"pattern": np.tile(np.arange(B), repeats), "repeat": np.repeat(np.arange(repeats), B)}
    d = measure_vmm(backend, x, baseline, run, "vmm_repeat", extra, progress, "repeated VMMs")
    cols = d.t_s.shape[1]
    return RepeatData(x1, d.t_s.reshape(repeats, B, cols), d.y_s.reshape(repeats, B, cols))


def network_activations(n: int = 1024, seed: int = 0) -> np.ndarray:
    """Real activations of a 16-input network layer: 4x4 low-resolution digit images
    (the inputs of the first layer of ``networks.mlp_lowres``; the same images as
    ``datasets.lowres_digits(size=4)``), ``(n, 16)`` in [0, 1], shuffled with ``seed``.

    Reads scikit-learn's bundled 8x8 digits file directly (no torch or scikit-learn
    import: seconds saved on every characterization) and 2x2 area-averages it."""
    n = _check_int("activation patterns", n, 1)
    x = _bundled_digits_4x4()
    if x is None:  # an unusual install: take the long way
        from labkit.train.datasets import lowres_digits

        split = lowres_digits(size=4, seed=seed)
        x = np.concatenate([split.train.tensors[0].numpy(), split.test.tensors[0].numpy()]).astype(float)
    idx = _rng(seed).permutation(len(x))
    return x[np.resize(idx, n)]


def _bundled_digits_4x4() -> np.ndarray | None:
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",")
    except (OSError, ValueError):
        return None
    if data.ndim != 2 or data.shape[1] != 65:
        return None
    img = data[:, :64].reshape(-1, 4, 2, 4, 2) / 16.0
    return np.clip(img.mean(axis=(2, 4)).reshape(-1, 16), 0.0, 1.0)


def vmm_activations(backend: SafeArray, baseline: Baseline, activations, run=None,
                    progress: Progress = no_progress) -> VmmData:
    """VMMs of real network activations ``(B, rows)`` in [0, 1] (table ``vmm_activations``)."""
    return measure_vmm(backend, activations, baseline, run, "vmm_activations", progress=progress,
                       label="activation VMMs")


# ----------------------------------------------------------------------------- crosstalk


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
        return float(np.mean(np.abs(self.volts)))

    @property
    def max_v(self) -> float:
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
    steps = _grid(backend)
    k = np.asarray(widths_clocks)
    if (k.ndim != 1 or len(k) < 2 or not np.issubdtype(k.dtype, np.integer) or k.min() < 1
            or k.max() > steps or len(np.unique(k)) != len(k)):
        raise ValueError(f"widths_clocks={list(np.atleast_1d(k))}; expected >= 2 distinct integers in [1, {steps}]")
    repeats = _check_int("crosstalk repeats", repeats, 2)
    bg = np.zeros(rows) if background is None else quantize_inputs(
        _check_inputs("background", np.atleast_2d(background), rows)[0], backend.settings.input_bits)
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
    t = _measure(backend, x, None, run, "crosstalk", extra, progress, "crosstalk", chunk, store_y=False)
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


# ----------------------------------------------------------------------------- droop / linearity


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
    levels = _check_int("droop levels", levels, 4, 4096)
    repeats = _check_int("droop repeats", repeats, 1)
    if not 0 < float(fit_upto) < 1:
        raise ValueError(f"fit_upto={fit_upto!r}; expected in (0, 1)")
    if not 0 <= float(saturation_margin) < 1:
        raise ValueError(f"saturation_margin={saturation_margin!r}; expected in [0, 1)")
    R, C = backend.geometry.rows, backend.geometry.cols
    active = np.arange(R) if rows is None else np.unique(backend.cells([[r, 0] for r in rows])[:, 0])
    if len(active) == 0:
        raise ValueError("droop_sweep needs at least one active row")
    xl = np.unique(quantize_inputs(np.arange(1, levels + 1) / levels, backend.settings.input_bits))
    xl = xl[xl > 0]
    x1 = np.zeros((len(xl), R))
    x1[:, active] = xl[:, None]
    x = np.tile(x1, (repeats, 1))
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


# ----------------------------------------------------------------------------- temperature


@dataclass
class TemperatureSweep:
    """Current maps ``currents_a`` (K, rows, cols) at set temperatures (K).

    ``log_slope_per_k`` (rows, cols): d ln(I) / dT (1/K), a straight-line fit."""

    set_k: np.ndarray
    measured_k: np.ndarray
    currents_a: np.ndarray
    log_slope_per_k: np.ndarray


def temperature_sweep(backend: SafeArray, temperatures_k: Sequence[float], averages: int = 2,
                      tolerance_k: float = 0.5, settle_timeout_s: float = 600.0, poll_s: float = 1.0,
                      run=None, progress: Progress = no_progress) -> TemperatureSweep:
    """Current map at each temperature (needs a TemperatureControl; the starting
    temperature is restored afterwards). Waits until the chip reads within
    ``tolerance_k`` of each set point (at most ``settle_timeout_s``). Table ``temperature``."""
    ctl = backend.capability(TemperatureControl)
    if ctl is None:
        raise ValueError(f"backend {backend.identity.backend!r} has no temperature controller")
    temps = np.asarray([float(si(t, "K", "temperature")) for t in np.atleast_1d(temperatures_k)])
    if len(temps) < 2 or not np.all(np.isfinite(temps)) or temps.min() <= 0:
        raise ValueError(f"temperatures {temps.tolist()} K; expected >= 2 finite temperatures > 0 K")
    start = backend.temperature_k()
    measured, maps = [], []
    try:
        with progress("temperature sweep", len(temps)) as bar:
            for tk in temps:
                ctl.set_temperature_k(float(tk))
                now = _settle(backend, float(tk), tolerance_k, settle_timeout_s, poll_s)
                i = cell_current_map(backend, averages=averages, name="")
                measured.append(now)
                maps.append(i)
                if run is not None:
                    run.add_points("temperature", set_k=[tk], measured_k=[now], cell_current_a=i[None])
                bar.advance(1)
    finally:
        if start is not None:
            with contextlib.suppress(Exception):
                ctl.set_temperature_k(float(start))
    cur = np.array(maps)
    logs = np.log(np.maximum(cur, 1e-15)).reshape(len(temps), -1)
    slope = np.polyfit(temps, logs, 1)[0].reshape(cur.shape[1:])
    return TemperatureSweep(temps, np.array(measured, dtype=float), cur, slope)


def _settle(backend: SafeArray, target: float, tol: float, timeout: float, poll: float) -> float:
    t_end = time.monotonic() + timeout
    while True:
        now = backend.temperature_k()
        if now is None or abs(now - target) <= tol:
            return math.nan if now is None else float(now)
        if time.monotonic() > t_end:
            raise TimeoutError(f"chip temperature {now:.2f} K did not reach {target:.2f} K within {timeout:g} s")
        time.sleep(poll)


# ----------------------------------------------------------------------------- retention


@dataclass
class Retention:
    """Current maps ``currents_a`` (K, rows, cols) at ``elapsed_s`` after the first map.

    ``relative_change`` (rows, cols): last / first - 1. ``per_decade`` (rows, cols): the
    change of ln(I) per decade of elapsed time, fit over the points with elapsed >= 1 s
    (nan with fewer than two such points). ``virtual``: time came from a VirtualClock."""

    elapsed_s: np.ndarray
    currents_a: np.ndarray
    relative_change: np.ndarray
    per_decade: np.ndarray
    virtual: bool


def retention_check(backend: SafeArray, checkpoints_s: Sequence[float] = (0, 10, 100, 1e3, 1e4, 1e5),
                    averages: int = 4, max_real_wait_s: float = 60.0, run=None,
                    progress: Progress = no_progress) -> Retention:
    """Current maps at increasing elapsed times (s): the backend's VirtualClock is
    advanced where it has one; otherwise real time passes (refused above
    ``max_real_wait_s``). Table ``retention``."""
    cp = np.asarray([float(si(c, "s", "checkpoint")) for c in np.atleast_1d(checkpoints_s)])
    if len(cp) < 2 or not np.all(np.isfinite(cp)) or cp[0] < 0 or np.any(np.diff(cp) <= 0):
        raise ValueError(f"retention checkpoints {cp.tolist()} s; expected >= 2 increasing times >= 0 s")
    clock = backend.capability(VirtualClock)
    if clock is None and cp[-1] - cp[0] > max_real_wait_s:
        raise ValueError(f"retention check over {cp[-1] - cp[0]:g} s of real time exceeds "
                         f"max_real_wait_s={max_real_wait_s:g} s (backend has no virtual clock)")
    maps, elapsed = [], []
    origin = time.monotonic()
    with progress("retention", len(cp)) as bar:
        for k, c in enumerate(cp):
            if k > 0:
                step = c - cp[k - 1]
                if clock is not None:
                    clock.advance_time_s(float(step))
                else:
                    time.sleep(max(0.0, origin + (c - cp[0]) - time.monotonic()))
            i = cell_current_map(backend, averages=averages, name="")
            maps.append(i)
            elapsed.append(c - cp[0] if clock is not None else time.monotonic() - origin)
            if run is not None:
                run.add_points("retention", elapsed_s=[elapsed[-1]], cell_current_a=i[None])
            bar.advance(1)
    cur, el = np.array(maps), np.array(elapsed)
    rel = cur[-1] / cur[0] - 1.0
    ok = el >= 1.0
    if ok.sum() >= 2:
        logs = np.log(np.maximum(cur[ok], 1e-15)).reshape(ok.sum(), -1)
        per = np.polyfit(np.log10(el[ok]), logs, 1)[0].reshape(cur.shape[1:])
    else:
        per = np.full(cur.shape[1:], np.nan)
    return Retention(el, cur, rel, per, clock is not None)


# ----------------------------------------------------------------------------- the standard suite


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes of the standard characterization (``quick()``: same code, smaller sets)."""

    seed: int = 0
    baseline_repeats: int = 512
    current_averages: int = 4
    idvg_cells: tuple[tuple[int, int], ...] = ((0, 0), (0, 15), (7, 8), (15, 0), (15, 15))
    idvg_start_v: float = 1.0
    idvg_stop_v: float = 2.2
    idvg_points: int = 25
    idvg_compliance_a: float = 2e-6
    random_patterns: int = 4096
    zero_fraction: float = 0.4
    onehot_levels: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    onehot_repeats: int = 8
    repeat_patterns: int = 128
    repeats: int = 16
    activation_patterns: int = 1024
    crosstalk_widths: tuple[int, ...] = (1, 2, 3, 4)
    crosstalk_repeats: int = 128
    droop_levels: int = 16
    droop_repeats: int = 32
    temperature_offsets_k: tuple[float, ...] = (-10.0, 0.0, 10.0, 20.0, 30.0)
    retention_checkpoints_s: tuple[float, ...] = (0.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    temperature: bool = True  # where the backend has a temperature controller
    retention: bool = True  # where the backend has a virtual clock

    @classmethod
    def quick(cls, **changes) -> "SuiteConfig":
        """Small datasets (seconds on the emulator), for tests and a first look."""
        small = dict(baseline_repeats=64, current_averages=1, idvg_cells=((0, 0), (7, 8), (15, 15)),
                     idvg_points=9, random_patterns=512, onehot_levels=(0.5, 1.0), onehot_repeats=2,
                     repeat_patterns=32, repeats=8, activation_patterns=128, crosstalk_repeats=32,
                     droop_levels=12, droop_repeats=8, temperature_offsets_k=(-10.0, 0.0, 20.0),
                     retention_checkpoints_s=(0.0, 100.0, 1e4))
        return cls(**{**small, **changes})

    def validate(self, backend: SafeArray | None = None) -> "SuiteConfig":
        """Check every size and range (ValueError naming the bad one) before measuring."""
        for name in ("baseline_repeats", "current_averages", "random_patterns", "onehot_repeats",
                     "repeat_patterns", "activation_patterns"):
            _check_int(name, getattr(self, name), 1)
        for name in ("repeats", "crosstalk_repeats"):
            _check_int(name, getattr(self, name), 2)
        _check_int("droop_levels", self.droop_levels, 4, 4096)
        _check_int("droop_repeats", self.droop_repeats, 1)
        gate_voltages(self.idvg_start_v, self.idvg_stop_v, self.idvg_points, backend)
        if not 0 < self.idvg_compliance_a <= (backend.envelope.max_compliance_a if backend else math.inf):
            raise ValueError(f"compliance {self.idvg_compliance_a:g} A; expected > 0 and within the envelope")
        if not 0.0 <= self.zero_fraction <= 1.0:
            raise ValueError(f"zero_fraction={self.zero_fraction!r}; expected in [0, 1]")
        onehot_patterns(16, self.onehot_levels)
        k = np.asarray(self.crosstalk_widths)
        if len(k) < 2 or not np.issubdtype(k.dtype, np.integer) or k.min() < 1 or len(set(k.tolist())) != len(k):
            raise ValueError(f"crosstalk_widths={list(self.crosstalk_widths)}; expected >= 2 distinct clocks >= 1")
        if self.temperature and len(self.temperature_offsets_k) < 2:
            raise ValueError("temperature_offsets_k needs >= 2 offsets")
        cp = np.asarray(self.retention_checkpoints_s, dtype=float)
        if self.retention and (len(cp) < 2 or cp[0] < 0 or np.any(np.diff(cp) <= 0)):
            raise ValueError(f"retention checkpoints {cp.tolist()} s; expected >= 2 increasing times >= 0 s")
        if backend is not None:
            for r, c in self.idvg_cells:
                backend.cells([[r, c]])
        return self

    def steps(self, backend: SafeArray) -> list[str]:
        """Names of the steps this config runs on ``backend``."""
        names = ["baseline", "currents", "idvg", "random", "onehot", "repeats", "activations",
                 "crosstalk", "droop"]
        if self.temperature and backend.capability(TemperatureControl) is not None:
            names.append("temperature")
        if self.retention and backend.capability(VirtualClock) is not None:
            names.append("retention")
        return names


@dataclass
class Characterization:
    """Everything the standard suite measured (see :func:`run_standard`)."""

    backend: str
    chip_id: str
    rows: int
    cols: int
    config: SuiteConfig
    baseline: Baseline
    cell_current_a: np.ndarray
    idvg: IdVgCurves
    random: VmmData
    onehot: OneHotData
    repeats: RepeatData
    activations: VmmData
    crosstalk: CrosstalkMap
    droop: DroopSweep
    temperature: TemperatureSweep | None = None
    retention: Retention | None = None
    duration_s: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The headline figures (JSON-able; SI units; ``inf`` SER when there is no noise)."""
        i = self.cell_current_a
        nf = self.repeats.noise_floor_ser
        pat = self.crosstalk.pattern()
        out = {
            "noise_floor_ser": nf,
            "noise_floor_ser_db": to_db(nf),
            "noise_floor_bits": effective_bits(nf),
            "output_noise_s": float(np.mean(self.repeats.noise_std_s)),
            "baseline_t0_s": float(np.mean(self.baseline.t0_s)),
            "cell_current_median_a": float(np.median(i)),
            "cell_current_min_a": float(i.min()),
            "cell_current_max_a": float(i.max()),
            "cell_current_spread": float(i.std() / i.mean()),
            "crosstalk_mean_v": self.crosstalk.mean_v,
            "crosstalk_max_v": self.crosstalk.max_v,
            "crosstalk_fraction_of_full_scale": self.crosstalk.fraction_of_full_scale,
            "crosstalk_pattern": pat["description"],
            "crosstalk_layout": pat,
            "droop_fraction": self.droop.droop_fraction,
            "droop_fraction_max": float(np.nanmax(self.droop.droop_fraction_col))
            if np.any(np.isfinite(self.droop.droop_fraction_col)) else math.nan,
            "nonlinearity_max": float(np.max(self.droop.nonlinearity)),
            "idvg_path": self.idvg.path,
            "idvg_slope_mv_per_decade": float(np.nanmedian(self.idvg.subthreshold_slope_mv_per_decade()))
            if np.any(np.isfinite(self.idvg.subthreshold_slope_mv_per_decade())) else math.nan,
            "datasets": {"vmm_random": len(self.random.x), "vmm_onehot": len(self.onehot.x),
                         "vmm_repeat": int(np.prod(self.repeats.y_s.shape[:2])),
                         "vmm_activations": len(self.activations.x)},
            "skipped": list(self.skipped),
            "duration_s": self.duration_s,
        }
        if self.temperature is not None:
            out["current_temp_coeff_per_k"] = float(np.median(self.temperature.log_slope_per_k))
        if self.retention is not None:
            out["retention_change"] = float(np.median(self.retention.relative_change))
            out["retention_per_decade"] = float(np.nanmedian(self.retention.per_decade)) \
                if np.any(np.isfinite(self.retention.per_decade)) else math.nan
        return out


def run_standard(backend: SafeArray, config: SuiteConfig = SuiteConfig(), run=None,
                 progress: Progress = no_progress, activations=None) -> Characterization:
    """The standard characterization suite, in this order: zero-input baseline, cell
    current map, Id-Vg of ``config.idvg_cells``, random / one-hot / repeated / network-
    activation VMM datasets, crosstalk map, droop sweep, then (where the backend can)
    a temperature sweep around the starting temperature and a retention check last
    (it ages the chip). Every step writes to ``run`` as it goes; the summary is put
    into the run's result at the end. ``activations`` (B, rows) overrides the default
    digit-image activations."""
    config.validate(backend)
    t_start = time.perf_counter()
    rows, cols = backend.geometry.rows, backend.geometry.cols
    seed = config.seed
    base = measure_baseline(backend, config.baseline_repeats, run, progress)
    currents = cell_current_map(backend, averages=config.current_averages, run=run)
    g = gate_voltages(config.idvg_start_v, config.idvg_stop_v, config.idvg_points, backend)
    idvg = id_vg_sweep(backend, [list(c) for c in config.idvg_cells], g, config.idvg_compliance_a, run, progress)
    rnd = vmm_random(backend, base, config.random_patterns, config.zero_fraction, seed, run, progress)
    oh = vmm_onehot(backend, base, config.onehot_levels, config.onehot_repeats, run, progress)
    rep = vmm_repeats(backend, base, config.repeat_patterns, config.repeats, config.zero_fraction, seed + 1,
                      run, progress)
    acts = network_activations(config.activation_patterns, seed) if activations is None else activations
    act = vmm_activations(backend, base, acts, run, progress)
    xt = crosstalk_map(backend, config.crosstalk_widths, config.crosstalk_repeats, run=run, progress=progress)
    dr = droop_sweep(backend, base, config.droop_levels, config.droop_repeats, run=run, progress=progress)
    result = Characterization(backend.identity.backend, backend.identity.chip_id, rows, cols, config, base,
                              currents, idvg, rnd, oh, rep, act, xt, dr)
    if config.temperature and backend.capability(TemperatureControl) is not None and backend.temperature_k():
        t0 = float(backend.temperature_k())
        result.temperature = temperature_sweep(backend, [t0 + d for d in config.temperature_offsets_k],
                                               run=run, progress=progress)
    elif config.temperature:
        result.skipped.append("temperature (no temperature controller)")
    if config.retention and backend.capability(VirtualClock) is not None:
        result.retention = retention_check(backend, config.retention_checkpoints_s, run=run, progress=progress)
    elif config.retention:
        result.skipped.append("retention (no virtual clock; run retention_check over real time)")
    result.duration_s = time.perf_counter() - t_start
    if run is not None:
        run.put_result(result.summary())
    return result


def load_dataset(run, table: str = "vmm_random") -> VmmData | RepeatData:
    """A VMM dataset of a stored run (``RunStore.load(id)``) as measured: ``VmmData``,
    or ``RepeatData`` (repeat, pattern, cols) for ``vmm_repeat``. ``y`` is recomputed
    from the run's ``baseline`` table, so it equals what was stored."""
    pts = run.points(table)
    if not {"x", "t"} <= set(pts):
        raise ValueError(f"table {table!r} of run {run.id} is not a VMM dataset (columns {sorted(pts)})")
    t0 = run.points("baseline")["t"].mean(axis=0)
    x, t = pts["x"], pts["t"]
    if table != "vmm_repeat":
        return VmmData(x, t, t0 - t)
    reps, pats = int(pts["repeat"].max()) + 1, int(pts["pattern"].max()) + 1
    n = reps * pats
    if len(x) < n:  # an interrupted run: keep whole repeats only
        reps = len(x) // pats
        n = reps * pats
    if reps < 1:
        raise ValueError(f"run {run.id} holds no complete repeat of its {pats} patterns")
    cols = t.shape[1]
    return RepeatData(x[:pats], t[:n].reshape(reps, pats, cols), (t0 - t[:n]).reshape(reps, pats, cols))
