"""Calibration: measure a chip, fit its hardware-aware model, report how well it predicts.

Three extractions of the same measured data (PHYSICS.md section 5), compared on the
same held-out patterns with the same output convention ``y = t(x=0) - t(x)`` (s, from
the measured zero-input baseline), so their SERs compare fairly:

* **naive**: one-hot reads (every row alone, at a few levels, repeated) and the ideal
  model ``y = W x``: each weight is the least-squares line through the origin of that
  cell's one-hot outputs over the levels; the offset is the measured baseline.
* **linear**: least squares of ``t = b - x W`` over the random fit patterns.
* **model**: the full :class:`~labkit.model.ArrayModel` (cell currents, drain
  coefficient per column, crosstalk charge per cell, offset per column; the gain is
  fixed at the nominal ``1/I_ref`` because it trades off exactly against the currents),
  fitted in the time domain to the random fit patterns and the one-hot reads by
  full-batch L-BFGS (all columns at once: the loss separates over columns). The start
  comes from the naive data: a line per cell through the one-hot levels gives the cell
  current (slope) and the crosstalk of its falling edge (intercept).

The SER report holds each method's SER (ratio and dB) on held-out random patterns and
on held-out activation-like patterns (sparse, ReLU-skewed), and the noise floor of
each pattern family from repeated measurements: the best any model can do.

Everything measured goes through :mod:`labkit.measure.characterize` into one run of the run
store (tables ``baseline``, ``vmm_fit``, ``vmm_onehot``, ``vmm_holdout``,
``vmm_activations``, ``vmm_repeat``, ``vmm_activation_repeat``), so a calibration can be
refitted later from the store (:func:`load_calibration_set`) and records the run ids it
came from. Units: SI (seconds, amperes, coulombs) unless a name says otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Mapping

import numpy as np
import torch
from torch.func import functional_call

from labkit.measure import characterize as ch
from labkit.backend import Datasheet, Geometry, SafeArray, VmmSettings
from labkit.calibrate.file import (Calibration, CalibrationMismatch, LinearFit, load_calibration, load_calibrations,
                               read_calibration, save_calibration)
from labkit.measure.characterize import Baseline, OneHotData, RepeatData, VmmData, no_progress
from labkit.measure.metrics import noise_floor_ser, ser, to_db
from labkit.model import ArrayModel

__all__ = [
    "CalibrationConfig", "CalibrationSet", "Calibration", "LinearFit", "FitInfo",
    "activation_like_patterns", "measure_calibration_set", "load_calibration_set",
    "fit_naive", "fit_linear", "fit_model", "predict_mean_s", "ser_report", "fit_calibration",
    "calibrate", "load_calibration", "load_calibrations", "read_calibration", "save_calibration",
    "CalibrationMismatch",
]

METHODS = ("naive", "linear", "model")
ETA_START_PER_V = 0.5  # drain coefficient the model fit starts from (PHYSICS.md: 0.3-2 /V)


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CalibrationConfig:
    """Dataset sizes and fit settings (``quick()``: same code, smaller sets)."""

    seed: int = 0
    baseline_repeats: int = 256
    fit_patterns: int = 3072
    holdout_patterns: int = 1024
    zero_fraction: float = 0.4  # of random patterns (0.3-0.5 separates edges from durations)
    onehot_levels: tuple[float, ...] = (0.5, 1.0)
    onehot_repeats: int = 16
    activation_patterns: int = 1024
    activation_zero_fraction: float = 0.5
    repeat_patterns: int = 128
    repeats: int = 16
    fit_iterations: int = 200  # L-BFGS iterations (at most; it stops earlier when converged)
    eta_per_cell: bool = False  # refine with a drain coefficient per cell (slower)

    @classmethod
    def quick(cls, **changes) -> "CalibrationConfig":
        """Small datasets (a few seconds on the emulator), for tests and a first look."""
        small = dict(baseline_repeats=128, fit_patterns=1536, holdout_patterns=512, onehot_repeats=8,
                     activation_patterns=512, repeat_patterns=64, repeats=8, fit_iterations=150)
        return cls(**{**small, **changes})

    def validate(self) -> "CalibrationConfig":
        """Check every size and range (ValueError naming the bad one) before measuring."""
        ch._check_int("seed", self.seed, 0)
        for name in ("fit_patterns", "holdout_patterns", "activation_patterns", "repeat_patterns",
                     "onehot_repeats", "fit_iterations"):
            ch._check_int(name, getattr(self, name), 1)
        ch._check_int("baseline_repeats", self.baseline_repeats, 2)
        ch._check_int("repeats", self.repeats, 2)
        for name in ("zero_fraction", "activation_zero_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                raise ValueError(f"{name}={v!r}; expected a fraction in [0, 1)")
        ch.onehot_patterns(16, self.onehot_levels)
        return self


# ----------------------------------------------------------------------------- patterns


def activation_like_patterns(n: int, rows: int = 16, zero_fraction: float = 0.5, input_bits: int = 8,
                             seed: int = 0) -> np.ndarray:
    """``n`` activation-like input vectors on the input grid: ReLU outputs of Gaussian
    pre-activations (a ``zero_fraction`` of exact zeros, a half-normal skew toward small
    values), each vector with its own scale (log-normal around 0.3) and a shared
    component that correlates its inputs, clipped to [0, 1]."""
    n = ch._check_int("activation patterns", n, 1)
    if not 0.0 <= float(zero_fraction) < 1.0:
        raise ValueError(f"zero_fraction={zero_fraction!r}; expected in [0, 1)")
    rng = np.random.default_rng([int(seed), 0xAC7])
    shared = rng.standard_normal((n, 1))
    z = np.sqrt(0.8) * rng.standard_normal((n, rows)) + np.sqrt(0.2) * shared
    cut = NormalDist().inv_cdf(max(float(zero_fraction), 1e-9))
    scale = np.exp(np.log(0.3) + 0.5 * rng.standard_normal((n, 1)))
    x = np.clip(np.maximum(z - cut, 0.0) * scale, 0.0, 1.0)
    return ch.quantize_inputs(x, input_bits)


# ----------------------------------------------------------------------------- the measured set


@dataclass
class CalibrationSet:
    """The measured data a calibration is fitted and judged on (times in s)."""

    chip_id: str
    backend_uri: str
    geometry: Geometry
    datasheet: Datasheet
    settings: VmmSettings
    baseline: Baseline
    fit: VmmData  # random patterns, for fitting
    onehot: OneHotData  # one row at a time (naive extraction, model start)
    holdout: VmmData  # random patterns, held out
    activations: VmmData  # activation-like patterns, held out
    repeats: RepeatData  # repeated random patterns: noise floor
    activation_repeats: RepeatData | None = None  # repeated activation-like patterns
    run_ids: list[int] = field(default_factory=list)
    run_uids: list[str] = field(default_factory=list)
    store: str = ""
    duration_s: float = 0.0

    def sizes(self) -> dict[str, int]:
        out = {"baseline": int(self.baseline.n), "fit": len(self.fit.x), "onehot": len(self.onehot.x),
               "holdout": len(self.holdout.x), "activations": len(self.activations.x),
               "repeats": int(np.prod(self.repeats.y_s.shape[:2]))}
        if self.activation_repeats is not None:
            out["activation_repeats"] = int(np.prod(self.activation_repeats.y_s.shape[:2]))
        return out


def _repeat_set(backend: SafeArray, x1: np.ndarray, repeats: int, baseline: Baseline, run, table: str,
                progress) -> RepeatData:
    B = len(x1)
    extra = {"pattern": np.tile(np.arange(B), repeats), "repeat": np.repeat(np.arange(repeats), B)}
    d = ch.measure_vmm(backend, np.tile(x1, (repeats, 1)), baseline, run, table, extra, progress,
                       "repeated activations")
    cols = d.t_s.shape[1]
    return RepeatData(d.x[:B], d.t_s.reshape(repeats, B, cols), d.y_s.reshape(repeats, B, cols))


def measure_calibration_set(backend: SafeArray, config: CalibrationConfig = CalibrationConfig(), run=None,
                            progress=no_progress) -> CalibrationSet:
    """Measure everything a calibration needs through the characterization routines,
    writing each dataset to ``run`` (a store Run) as it goes. Pattern seeds: fit
    ``seed``, held-out ``seed+1``, repeats ``seed+2``, activations ``seed+3``."""
    config.validate()
    t_start = time.perf_counter()
    rows, bits = backend.geometry.rows, backend.settings.input_bits
    s, zf = config.seed, config.zero_fraction
    base = ch.measure_baseline(backend, config.baseline_repeats, run, progress)
    fit = ch.measure_vmm(backend, ch.random_patterns(config.fit_patterns, rows, zf, bits, s), base, run,
                         "vmm_fit", progress=progress, label="fit VMMs")
    onehot = ch.vmm_onehot(backend, base, config.onehot_levels, config.onehot_repeats, run, progress)
    holdout = ch.measure_vmm(backend, ch.random_patterns(config.holdout_patterns, rows, zf, bits, s + 1), base,
                             run, "vmm_holdout", progress=progress, label="held-out VMMs")
    acts = activation_like_patterns(config.activation_patterns, rows, config.activation_zero_fraction, bits, s + 3)
    activations = ch.vmm_activations(backend, base, acts, run, progress)
    repeats = ch.vmm_repeats(backend, base, config.repeat_patterns, config.repeats, zf, s + 2, run, progress)
    act1 = activation_like_patterns(config.repeat_patterns, rows, config.activation_zero_fraction, bits, s + 4)
    act_rep = _repeat_set(backend, act1, config.repeats, base, run, "vmm_activation_repeat", progress)
    ident = backend.identity
    return CalibrationSet(
        chip_id=ident.chip_id, backend_uri=ident.backend, geometry=backend.geometry,
        datasheet=backend.datasheet, settings=backend.settings, baseline=base, fit=fit, onehot=onehot,
        holdout=holdout, activations=activations, repeats=repeats, activation_repeats=act_rep,
        run_ids=[run.id] if run is not None else [], run_uids=[run.uid] if run is not None else [],
        store=str(run.store.path) if run is not None else "", duration_s=time.perf_counter() - t_start)


def _from_fields(cls, d: Mapping | None, what: str):
    if not d:
        return cls()
    names = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in d.items():
        if k in names:
            kw[k] = tuple(tuple(p) if isinstance(p, list) else p for p in v) if isinstance(v, list) else v
    try:
        return cls(**kw)
    except TypeError as exc:
        raise ValueError(f"stored {what} cannot be read back: {exc}") from None


def load_calibration_set(store, run_ref, holdout_fraction: float = 0.25) -> CalibrationSet:
    """The datasets of a stored run (a ``calibration`` run, or a ``characterize`` run:
    its ``vmm_random`` table is split into fit and held-out parts). ``store`` is an open
    :class:`~labkit.store.RunStore`; ``run_ref`` an id, uid or ``'latest'``."""
    r = store.load(run_ref)
    have = set(r.tables)
    need = {"baseline", "vmm_onehot", "vmm_repeat"}
    if not need <= have or not ({"vmm_fit", "vmm_random"} & have):
        raise ValueError(f"run {r.id} ({r.kind}) lacks calibration data: has tables {sorted(have)}; needs "
                         f"{sorted(need)} and vmm_fit or vmm_random")
    prov = r.provenance or {}
    geometry = _from_fields(Geometry, prov.get("geometry"), "geometry")
    datasheet = _from_fields(Datasheet, prov.get("datasheet"), "datasheet")
    settings = _from_fields(VmmSettings, r.settings or prov.get("settings"), "settings")
    tb = r.points("baseline")["t"]
    base = Baseline(tb.mean(axis=0), tb.std(axis=0, ddof=1), len(tb))

    def vmm(table: str) -> VmmData:
        return ch.load_dataset(r, table)

    def rep(table: str) -> RepeatData:
        p = r.points(table)
        R, B = int(p["repeat"].max()) + 1, int(p["pattern"].max()) + 1
        order = np.lexsort((p["pattern"], p["repeat"]))
        complete = [k for k in range(R) if np.sum(p["repeat"] == k) == B]
        R = len(complete) if complete == list(range(len(complete))) else 0
        if R < 2:
            raise ValueError(f"run {r.id} table {table} holds fewer than 2 complete repeats of its {B} patterns")
        order = order[: R * B]
        t = p["t"][order].reshape(R, B, -1)
        return RepeatData(p["x"][order][:B], t, base.t0_s - t)

    if "vmm_fit" in have:
        fit, holdout = vmm("vmm_fit"), vmm("vmm_holdout")
    else:
        allr = vmm("vmm_random")
        k = int(round(len(allr.x) * (1.0 - holdout_fraction)))
        if not 0 < k < len(allr.x):
            raise ValueError(f"run {r.id}: {len(allr.x)} random patterns cannot be split into fit and held-out")
        fit = VmmData(allr.x[:k], allr.t_s[:k], allr.y_s[:k])
        holdout = VmmData(allr.x[k:], allr.t_s[k:], allr.y_s[k:])
    oh = r.points("vmm_onehot")
    onehot = OneHotData(oh["x"], oh["t"], base.t0_s - oh["t"], oh["row"].astype(int))
    activations = vmm("vmm_activations") if "vmm_activations" in have else holdout
    return CalibrationSet(
        chip_id=r.chip_id, backend_uri=r.backend_uri, geometry=geometry, datasheet=datasheet, settings=settings,
        baseline=base, fit=fit, onehot=onehot, holdout=holdout, activations=activations,
        repeats=rep("vmm_repeat"),
        activation_repeats=rep("vmm_activation_repeat") if "vmm_activation_repeat" in have else None,
        run_ids=[r.id], run_uids=[r.uid], store=str(store.path), duration_s=r.duration_s or 0.0)


# ----------------------------------------------------------------------------- the three fits


def _onehot_lines(onehot: OneHotData) -> tuple[np.ndarray, np.ndarray]:
    """The one-hot levels (L,) and each cell's mean output ``y`` (L, rows, cols) in s."""
    levels, y = onehot.cell_outputs()
    return np.asarray(levels, dtype=float), y


def fit_naive(cs: CalibrationSet) -> LinearFit:
    """Ideal model from one-hot reads: ``W_ij`` is the line through the origin of cell
    (i, j)'s mean one-hot output over the levels; the offset is the measured baseline."""
    lv, y = _onehot_lines(cs.onehot)
    w = np.einsum("l,lrc->rc", lv, y) / float(np.sum(lv**2))
    return LinearFit(w, cs.baseline.t0_s.copy())


def fit_linear(cs: CalibrationSet) -> LinearFit:
    """Least squares of ``t = b - x W`` over the random fit patterns (every column)."""
    x, t = cs.fit.x, cs.fit.t_s
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(a, t, rcond=None)
    return LinearFit(-coef[:-1], coef[-1].copy())


@dataclass
class FitInfo:
    """How a model fit went: iterations, loss (mean squared residual in TDC LSB^2), time (s)."""

    iterations: int
    evaluations: int
    loss_start: float
    loss_end: float
    duration_s: float
    samples: int
    eta_per_cell: bool


def _model_start(cs: CalibrationSet) -> dict[str, np.ndarray]:
    """Model parameters from the one-hot reads: per cell a line ``y = a x + c`` over the
    levels; ``a / (g T)`` is the cell current, ``c / g`` its edge crosstalk charge
    (``g = 1/I_ref``, nominal); with one level the crosstalk starts at zero."""
    lv, y = _onehot_lines(cs.onehot)
    g = 1.0 / cs.datasheet.reference_current_a
    T = cs.settings.integration_time_s
    if len(lv) >= 2:
        design = np.stack([lv, np.ones_like(lv)], axis=1)
        coef = np.einsum("pl,lrc->prc", np.linalg.pinv(design), y)
        slope, intercept = coef[0], coef[1]
    else:
        slope, intercept = y[0] / lv[0], np.zeros_like(y[0])
    floor = 1e-3 * max(float(np.median(np.abs(slope))), 1e-15)
    currents = np.maximum(slope, floor) / (g * T)
    return {"currents_a": currents, "crosstalk_c": intercept / g, "offset_s": cs.baseline.t0_s.copy(),
            "eta_per_v": np.full(cs.geometry.cols, ETA_START_PER_V)}


def _scales(model: ArrayModel, x: torch.Tensor, y_s: np.ndarray, lsb_s: float) -> dict[str, torch.Tensor]:
    """Per parameter, the change that moves the outputs by about one TDC LSB (internal
    units): the fit runs on parameters divided by these, so every direction is about
    equally steep (a diagonal preconditioner for L-BFGS)."""
    with torch.no_grad():
        g = torch.as_tensor(model.gain_s_per_c() * 1e-9, dtype=x.dtype)  # us/fC
        lsb_us = lsb_s * 1e6
        i0_fc_per_us = model.log_i0.detach().exp()  # nA = fC/us
        x_rms = x.pow(2).mean(0).sqrt().clamp_min(1e-3)  # (rows,)
        on = (x > 0).to(x.dtype).mean(0).clamp_min(1e-3)  # (rows,)
        cell_us = g * i0_fc_per_us * model.T_us * x_rms[:, None]  # output per unit log current
        q_ms = torch.as_tensor(np.mean(y_s**2, axis=0), dtype=x.dtype) * 1e12 / g**2  # fC^2
        eta_us = g * q_ms / (2.0 * model.C_ff)  # output per unit eta (1/V)
        scales = {
            "log_i0": lsb_us / cell_us.clamp_min(1e-3 * float(cell_us.max())),
            "k_xt": (lsb_us / (g * on[:, None])).expand_as(model.k_xt).clone(),
            "t0": torch.full_like(model.t0, lsb_us),
            "eta": (lsb_us / eta_us.clamp_min(1e-12)).clamp(max=1.0),
        }
        if model.eta_per_cell:
            scales["eta"] = (2.0 * scales["eta"]).expand_as(model.eta).clone().clamp(max=1.0)
    return {k: v.to(getattr(model, k).dtype) for k, v in scales.items()}


def _lbfgs(model: ArrayModel, x: torch.Tensor, target_s: torch.Tensor, mask: torch.Tensor, lsb_s: float,
           scales: Mapping[str, torch.Tensor], iterations: int, tol: float = 1e-6) -> tuple[float, float, int, int]:
    """Full-batch L-BFGS of the mean squared residual (in LSB^2) over the parameters named
    in ``scales`` (the others stay fixed), in scaled coordinates; writes the result back."""
    base = {k: p.detach().clone() for k, p in model.named_parameters()}
    u = {k: torch.zeros_like(base[k], requires_grad=True) for k in scales}
    first = next(iter(u.values()))
    opt = torch.optim.LBFGS(list(u.values()), lr=1.0, max_iter=25, history_size=30, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")
    n = mask.sum().clamp_min(1.0)

    def current():
        return {**base, **{k: base[k] + scales[k] * u[k] for k in u}}

    def loss_fn():
        r = (functional_call(model, current(), (x,)) - target_s) / lsb_s * mask
        return (r * r).sum() / n

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.no_grad():
        start = float(loss_fn())
    done, last, now = 0, start, start
    while done < iterations:
        opt.param_groups[0]["max_iter"] = min(25, iterations - done)
        opt.step(closure)
        done = int(opt.state[first].get("n_iter", iterations))
        with torch.no_grad():
            now = float(loss_fn())
        if not math.isfinite(now):
            raise ValueError("the model fit diverged (non-finite loss); check the measured data")
        if last - now <= tol * max(abs(last), 1e-30):
            break
        last = now
    with torch.no_grad():
        for k, v in current().items():
            if k in u:
                getattr(model, k).copy_(v)
    state = opt.state[first]
    return start, now, int(state.get("n_iter", done)), int(state.get("func_evals", 0))


@contextlib.contextmanager
def _torch_threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fit_model(cs: CalibrationSet, iterations: int = 200, eta_per_cell: bool = False,
              include_onehot: bool = True, dtype: torch.dtype = torch.float32,
              threads: int | None = 1) -> tuple[ArrayModel, FitInfo]:
    """Fit the full hardware-aware model to the random fit patterns (and the one-hot
    reads) in the time domain. Returns the model (chip-like: ``quantize=True``, offsets
    physical, see :mod:`labkit.calibrate.file`) and how the fit went.

    ``threads``: torch threads during the fit (restored after; ``None`` leaves them).
    The tensors are small, so one thread is fastest (several threads only spin, and
    badly so on a busy machine). ``eta_per_cell`` refines with a drain coefficient per
    cell (RK4 slots: minutes, and no SER gain on the emulated chip)."""
    ch._check_int("iterations", iterations, 1)
    with _torch_threads(threads):
        return _fit_model(cs, iterations, eta_per_cell, include_onehot, dtype)


def _fit_model(cs, iterations, eta_per_cell, include_onehot, dtype):
    t_start = time.perf_counter()
    st = cs.settings
    tfs = st.tdc_full_scale_s
    xs, ts = [cs.fit.x], [cs.fit.t_s]
    if include_onehot:
        xs.append(cs.onehot.x)
        ts.append(cs.onehot.t_s)
    x_np, t_np = np.concatenate(xs), np.concatenate(ts)
    keep = (t_np > 0.0) & (t_np < tfs)  # times on the TDC rails carry no information
    x = torch.tensor(ch.quantize_inputs(x_np, st.input_bits), dtype=dtype)
    target = torch.tensor(t_np, dtype=dtype)
    mask = torch.tensor(keep, dtype=dtype)

    model = ArrayModel(cs.datasheet, st, cs.geometry, quantize=False, clip=None, dtype=dtype, **_model_start(cs))
    y_fit = cs.baseline.t0_s - t_np
    l0, l1, it, ev = _lbfgs(model, x, target, mask, st.tdc_lsb_s, _scales(model, x, y_fit, st.tdc_lsb_s),
                            iterations)
    if eta_per_cell:
        d = model.to_dict()
        d["eta_per_v"] = np.broadcast_to(d["eta_per_v"], (cs.geometry.rows, cs.geometry.cols)).copy()
        d["eta_per_cell"] = np.array(True)
        model = ArrayModel.from_dict(d, quantize=False, clip=None, dtype=dtype)
        _, l1, it2, ev2 = _lbfgs(model, x, target, mask, st.tdc_lsb_s, _scales(model, x, y_fit, st.tdc_lsb_s),
                                 iterations)
        it, ev = it + it2, ev + ev2
    # fitted offsets predict the *mean* of floored times; the physical offset is half an LSB later
    model.set_si(offset_s=model.offset_s() + 0.5 * st.tdc_lsb_s)
    model.quantize, model.clip = True, "ste"
    info = FitInfo(it, ev, l0, l1, time.perf_counter() - t_start, int(keep.all(axis=1).sum()), eta_per_cell)
    return model, info


@torch.no_grad()
def predict_mean_s(model: ArrayModel, x) -> np.ndarray:
    """Expected measured crossing times (s), ``(B, cols)``: the model without output
    quantization, half a TDC LSB earlier (the mean of a floored time); inputs on the
    input grid; no clip, no noise."""
    saved = (model.quantize, model.clip, model.training)
    xq = ch.quantize_inputs(x, model.settings.input_bits)
    try:
        model.quantize, model.clip = False, None
        model.eval()
        p = next(model.parameters())
        t = model(torch.as_tensor(xq, dtype=p.dtype, device=p.device)).double().cpu().numpy()
    finally:
        model.quantize, model.clip = saved[0], saved[1]
        model.train(saved[2])
    return t - 0.5 * model.settings.tdc_lsb_s


# ----------------------------------------------------------------------------- the SER report


def _ser_entry(r: float) -> dict:
    return {"ser": r, "ser_db": to_db(r)}


def ser_report(cs: CalibrationSet, predictors: Mapping[str, Callable[[np.ndarray], np.ndarray]]) -> dict:
    """SER of each predictor (``x -> crossing times (s)``) on the held-out random and
    activation-like patterns, with ``y`` from the measured baseline, and the noise floors.

    Keys: ``holdout`` and ``activations`` (method -> {ser, ser_db}), ``noise_floor``
    (family -> {ser, ser_db}), the headline ``ser_db`` (method -> dB on held-out random
    patterns), ``ser_activations_db``, ``noise_floor_ser_db``,
    ``noise_floor_activations_ser_db``, ``gap_to_floor_db`` (method -> floor minus SER)
    and ``gain_over_naive_db``."""
    t0 = cs.baseline.t0_s
    out: dict = {"holdout": {}, "activations": {}}
    for family, data in (("holdout", cs.holdout), ("activations", cs.activations)):
        for name, predict in predictors.items():
            y_pred = t0 - np.asarray(predict(data.x), dtype=float)
            out[family][name] = _ser_entry(ser(data.y_s, y_pred))
    floors = {"holdout": _ser_entry(noise_floor_ser(cs.repeats.y_s))}
    if cs.activation_repeats is not None:
        floors["activations"] = _ser_entry(noise_floor_ser(cs.activation_repeats.y_s))
    out["noise_floor"] = floors
    out["ser_db"] = {k: v["ser_db"] for k, v in out["holdout"].items()}
    out["ser_activations_db"] = {k: v["ser_db"] for k, v in out["activations"].items()}
    out["noise_floor_ser_db"] = floors["holdout"]["ser_db"]
    out["noise_floor_activations_ser_db"] = floors.get("activations", {}).get("ser_db")
    out["gap_to_floor_db"] = {k: out["noise_floor_ser_db"] - v for k, v in out["ser_db"].items()}
    if "naive" in out["ser_db"]:
        out["gain_over_naive_db"] = {k: v - out["ser_db"]["naive"] for k, v in out["ser_db"].items()}
    out["noise_std_s"] = float(np.mean(cs.repeats.noise_std_s))
    out["noise_floor_s"], out["noise_relative"] = cs.repeats.noise_model()
    out["sizes"] = cs.sizes()
    return out


# ----------------------------------------------------------------------------- end to end


def fit_calibration(cs: CalibrationSet, config: CalibrationConfig = CalibrationConfig()) -> Calibration:
    """The three extractions of a measured set and their SER report, as a Calibration."""
    t_start = time.perf_counter()
    naive, linear = fit_naive(cs), fit_linear(cs)
    model, info = fit_model(cs, config.fit_iterations, config.eta_per_cell)
    report = ser_report(cs, {"naive": naive.predict_s, "linear": linear.predict_s,
                             "model": lambda x: predict_mean_s(model, x)})
    report["fit"] = dataclasses.asdict(info)
    report["fit_duration_s"] = time.perf_counter() - t_start
    report["measure_duration_s"] = cs.duration_s
    report["config"] = dataclasses.asdict(config)
    return Calibration(chip_id=cs.chip_id, model=model.to_dict(), naive=naive, linear=linear, report=report,
                       backend_uri=cs.backend_uri, run_ids=list(cs.run_ids), run_uids=list(cs.run_uids),
                       store=cs.store)


def calibrate(backend: SafeArray, config: CalibrationConfig = CalibrationConfig(), run=None,
              progress=no_progress) -> Calibration:
    """Measure (into ``run``, if given) and fit; the SER report goes into the run's result."""
    config.validate()
    cs = measure_calibration_set(backend, config, run, progress)
    cal = fit_calibration(cs, config)
    cal.report["temperature_k"] = backend.temperature_k()
    # the cells' read currents at calibration time: with them a tile model moves each
    # column's ratio of fitted to read current into its readout gain (TileParams)
    cal.read_currents_a = np.mean([backend.read_currents() for _ in range(4)], axis=0)
    if run is not None:
        run.put_result({"calibration": cal.report})
        for key in ("currents_a", "eta_per_v", "crosstalk_c", "offset_s", "gain_s_per_c"):
            run.put_array(f"model_{key}", cal.model[key])
    return cal
