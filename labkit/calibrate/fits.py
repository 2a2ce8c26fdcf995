"""The three extractions of a measured :class:`~labkit.calibrate.calibration_set.CalibrationSet`.

Each predicts crossing times with the output convention ``y = t(x=0) - t(x)`` (s, from
the measured zero-input baseline), docs/physics.md, section 3:

* **naive** (:func:`fit_naive`): one-hot reads (every row alone, at a few levels,
  repeated) and the ideal model ``y = W x``: each weight is the least-squares line
  through the origin of that cell's one-hot outputs over the levels; the offset is the
  measured baseline.
* **linear** (:func:`fit_linear`): least squares of ``t = b - x W`` over the random fit patterns.
* **model** (:func:`fit_model`): the full :class:`~labkit.model.ArrayModel` (cell
  currents, drain coefficient per column, crosstalk charge per cell, offset per column;
  the gain is fixed at the nominal ``1/I_ref`` because it trades off exactly against
  the currents), fitted in the time domain to the random fit patterns and the one-hot
  reads by full-batch L-BFGS (all columns at once: the loss separates over columns).
  The start comes from the naive data: a line per cell through the one-hot levels
  gives the cell current (slope) and the crosstalk of its falling edge (intercept). A
  fit whose loss turns non-finite raises :class:`~labkit.errors.FitDivergedError`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch.func import functional_call

from labkit.calibrate.calibration_set import CalibrationSet
from labkit.calibrate.file import LinearFit
from labkit.errors import FitDivergedError
from labkit.measure import OneHotData, quantize_inputs
from labkit.model import ArrayModel
from labkit.model.units import FC, US
from labkit.validate import check_int

__all__ = ["ETA_START_PER_V", "fit_naive", "fit_linear", "FitInfo", "fit_model", "predict_mean_s"]

ETA_START_PER_V = 0.5  # drain coefficient the model fit starts from (docs/physics.md: 0.3-2 /V)


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
        g = torch.as_tensor(model.gain_s_per_c() * (FC / US), dtype=x.dtype)  # us/fC
        lsb_us = lsb_s / US
        i0_fc_per_us = model.log_i0.detach().exp()  # nA = fC/us
        x_rms = x.pow(2).mean(0).sqrt().clamp_min(1e-3)  # (rows,)
        on = (x > 0).to(x.dtype).mean(0).clamp_min(1e-3)  # (rows,)
        cell_us = g * i0_fc_per_us * model.T_us * x_rms[:, None]  # output per unit log current
        q_ms = torch.as_tensor(np.mean(y_s**2, axis=0), dtype=x.dtype) / US**2 / g**2  # fC^2
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
    # u has the scale's shape: a scale with a leading dim of 1 ties a tiled parameter across tiles
    u = {k: torch.zeros_like(scales[k], dtype=base[k].dtype, requires_grad=True) for k in scales}
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
            raise FitDivergedError("the model fit diverged (non-finite loss); check the measured data")
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
    check_int("iterations", iterations, 1)
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
    x = torch.tensor(quantize_inputs(x_np, st.input_bits), dtype=dtype)
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
    xq = quantize_inputs(x, model.settings.input_bits)
    try:
        model.quantize, model.clip = False, None
        model.eval()
        p = next(model.parameters())
        t = model(torch.as_tensor(xq, dtype=p.dtype, device=p.device)).double().cpu().numpy()
    finally:
        model.quantize, model.clip = saved[0], saved[1]
        model.train(saved[2])
    return t - 0.5 * model.settings.tdc_lsb_s
