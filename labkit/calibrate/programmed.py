"""Calibration on programmed states: measure the chip where it will be used, and fit the
chip's own parameters so they predict any programmed state from its read currents.

A calibration at the currents a chip ships with lets the fit fold state-dependent
physics into the cell currents (bit-line coupling into the currents, source-line IR drop
into a larger drain coefficient, lost pulse width into crosstalk charge), which then
does not transfer to the currents of a programmed network (docs/physics.md, section
3.2). Here the chip is programmed to ``states`` distinct weight-like current maps in the
deployment window (random signed weights, offset scheme, as a network tile), and at
each the cells' read currents, a zero-input baseline, random and activation-like VMMs,
one-hot reads and repeated activations are measured (store tables ``state<k>_...``).

The chip fit (:func:`fit_chip`) then holds every cell current at its *read* value (what
a deployment knows of a programmed tile) and fits what belongs to the chip, shared by
all states: drain coefficient and readout gain per column, crosstalk charge per cell,
offset per column, and the second-order terms (:mod:`labkit.model.second_order`). Units
SI unless a name says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from labkit.backend import SafeArray
from labkit.calibrate.fits import _lbfgs, _torch_threads
from labkit.measure import (Baseline, OneHotData, RepeatData, VmmData, activation_like_patterns, measure_baseline,
                            measure_repeats, measure_vmm, no_progress, quantize_inputs, random_patterns, vmm_onehot)
from labkit.model import ArrayModel
from labkit.model.units import FC, US
from labkit.program import ProgramConfig, WeightWindow, map_weights, program_array

__all__ = ["ProgrammedState", "state_targets", "measure_programmed_states", "fit_chip", "CHIP_TERMS"]

#: The parameters :func:`fit_chip` fits (shared by all states); the currents stay at the reads.
CHIP_TERMS = ("eta", "k_xt", "t0", "gain", "mix", "wloss", "beta", "bow")


@dataclass
class ProgrammedState:
    """What was measured at one programmed state (times s, currents A)."""

    targets_a: np.ndarray  # (rows, cols) programmed targets
    read_currents_a: np.ndarray  # (rows, cols) mean of the verify-grade reads
    baseline: Baseline
    fit: VmmData  # random patterns, to fit
    activations: VmmData  # activation-like patterns, held out
    onehot: OneHotData  # one row at a time (the naive extraction of this state)
    activation_repeats: RepeatData  # repeated activation-like patterns: this state's noise floor


def state_targets(backend, seed: int, headroom: float = 0.9) -> np.ndarray:
    """Weight-like target currents (A) in the deployment window: uniform signed weights
    on every column pair, offset scheme (one branch at ``I_min``), like a network tile."""
    g, st = backend.geometry, backend.settings
    window = WeightWindow.from_datasheet(backend.datasheet, st.integration_time_s, g.rows, headroom)
    w = np.random.default_rng([seed, 0x57A7E]).uniform(-1.0, 1.0, size=(g.rows, len(g.pairs)))
    return map_weights(w, window, g)


def measure_programmed_states(backend: SafeArray, config, run=None, progress=no_progress,
                              program: ProgramConfig | None = None) -> list[ProgrammedState]:
    """Program ``config.programmed_states`` states and measure each (pattern seeds
    ``config.seed + 10 + k``): this reprograms the chip."""
    out = []
    rows, bits = backend.geometry.rows, backend.settings.input_bits
    for k in range(config.programmed_states):
        s = config.seed + 10 + 7 * k
        targets = state_targets(backend, s)
        program_array(backend, targets, config=program or ProgramConfig())
        reads = np.mean([backend.read_currents() for _ in range(4)], axis=0)
        tag = f"state{k}_"
        base = measure_baseline(backend, config.baseline_repeats, run, progress, table=tag + "baseline")
        fit = measure_vmm(backend, random_patterns(config.fit_patterns, rows, config.zero_fraction, bits, s), base,
                          run, tag + "vmm_fit", progress=progress, label=f"state {k}: fit VMMs")
        acts = activation_like_patterns(config.activation_patterns, rows, config.activation_zero_fraction, bits, s + 1)
        held = measure_vmm(backend, acts, base, run, tag + "vmm_activations", progress=progress,
                           label=f"state {k}: activation VMMs")
        onehot = vmm_onehot(backend, base, config.onehot_levels, config.onehot_repeats, run, progress,
                            table=tag + "vmm_onehot")
        act1 = activation_like_patterns(config.repeat_patterns, rows, config.activation_zero_fraction, bits, s + 2)
        rep = measure_repeats(backend, act1, config.repeats, base, run, tag + "vmm_activation_repeat", progress,
                              f"state {k}: repeated activations")
        if run is not None:
            run.put_array(tag + "read_currents_a", reads)
            run.put_array(tag + "targets_a", targets)
        out.append(ProgrammedState(targets, reads, base, fit, held, onehot, rep))
    return out


def _chip_scales(model: ArrayModel, x: torch.Tensor, y_s: np.ndarray, lsb_s: float, base: dict) -> dict:
    """Per fitted parameter the change that moves the outputs by about one LSB (internal
    units), shaped to tie it across the states (leading dim 1)."""
    lsb = lsb_s / US
    g = float(np.mean(model.gain_s_per_c())) * (FC / US)  # us/fC
    q_rms = float(np.sqrt(np.mean(y_s**2))) / US / g  # fC
    i0 = model.log_i0.detach().exp().mean(0)  # (R, C) nA
    xm = x.mean(dim=tuple(range(x.dim() - 1)))  # (R,) mean input
    on = (x > 0).to(x.dtype).mean(dim=tuple(range(x.dim() - 1))).clamp_min(1e-3)
    i_tot = float((i0.sum(-1) * xm).sum())
    out = {k: v.clone()[:1] for k, v in base.items() if k in ("eta", "k_xt", "t0")}
    out["gain"] = torch.full_like(model.gain[:1], lsb / (g * q_rms) * float(model.gain.detach().mean()))
    out["mix"] = torch.full_like(model.mix[:1], lsb / (g * q_rms))
    out["wloss"] = (lsb / (g * i0.mean(-1) * on)).clamp(max=0.05).unsqueeze(0).to(x.dtype)
    out["beta"] = torch.full_like(model.beta[:1], lsb / (g * q_rms * max(i_tot, 1e-3)))
    out["bow"] = torch.ones_like(model.bow[:1])
    return out


def fit_chip(start: ArrayModel, states: list[ProgrammedState], iterations: int = 200, start_scales: dict | None = None,
             dtype: torch.dtype = torch.float32, threads: int | None = 1) -> tuple[ArrayModel, float, float]:
    """Fit the chip's parameters (:data:`CHIP_TERMS`, shared) to every state's random VMMs
    and one-hot reads, with each state's cell currents fixed at its reads. ``start``: a
    single-array model of the chip (the shipped-state fit) to start from; ``start_scales``
    its fit's preconditioner (:func:`labkit.calibrate.fits._scales`).

    Returns a tiled model (one tile per state, quantize off, no clip), the loss before and
    after (LSB^2)."""
    with _torch_threads(threads):
        st = start.settings
        n = len(states)
        x = np.stack([np.concatenate([s.fit.x, s.onehot.x]) for s in states], axis=1)  # (B, n, R)
        t = np.stack([np.concatenate([s.fit.t_s, s.onehot.t_s]) for s in states], axis=1)
        keep = (t > 0.0) & (t < st.tdc_full_scale_s)
        d = start.to_dict()
        rep = lambda a: np.broadcast_to(a, (n,) + np.shape(a)).copy()  # noqa: E731
        model = ArrayModel(start.datasheet, st, start.geometry, n_tiles=n, quantize=False, clip=None, dtype=dtype,
                           second_order=True, currents_a=np.stack([s.read_currents_a for s in states]),
                           eta_per_v=rep(d["eta_per_v"]), crosstalk_c=rep(d["crosstalk_c"]),
                           offset_s=rep(d["offset_s"]), gain_s_per_c=rep(d["gain_s_per_c"]))
        xt = torch.tensor(quantize_inputs(x, st.input_bits), dtype=dtype)
        base = {k: v.unsqueeze(0) for k, v in (start_scales or {}).items()}
        if not base:
            base = {"eta": torch.full_like(model.eta[:1], 0.05), "t0": torch.full_like(model.t0[:1], st.tdc_lsb_s / US),
                    "k_xt": torch.full_like(model.k_xt[:1], 0.5)}
        y = np.stack([s.baseline.t0_s for s in states], axis=0)[None] - t
        scales = _chip_scales(model, xt, y, st.tdc_lsb_s, base)
        scales = {k: v.to(dtype) for k, v in scales.items()}
        l0, l1, _, _ = _lbfgs(model, xt, torch.tensor(t, dtype=dtype), torch.tensor(keep, dtype=dtype),
                              st.tdc_lsb_s, scales, iterations)
        model.set_si(offset_s=model.offset_s() + 0.5 * st.tdc_lsb_s)  # mean of floored times -> physical
        return model, l0, l1


def state_model(chip: ArrayModel, currents_a: np.ndarray, **switches) -> ArrayModel:
    """One array: the chip's fitted parameters (first state of ``chip``) with ``currents_a``."""
    d = chip.to_dict()
    one = {k: (v[0] if isinstance(v, np.ndarray) and v.ndim >= 1 and k in _TILED else v) for k, v in d.items()}
    one["n_tiles"] = np.array(0)
    one["currents_a"] = np.asarray(currents_a, dtype=float)
    return ArrayModel.from_dict(one, **switches)


_TILED = ("currents_a", "eta_per_v", "crosstalk_c", "offset_s", "gain_s_per_c", "mix", "width_loss_s",
          "source_per_a", "tdc_bow_lsb")
