"""The SER report: how well each extraction predicts held-out patterns, against the noise floor.

The report holds each method's SER (ratio and dB) on held-out random patterns and on
held-out activation-like patterns (sparse, ReLU-skewed), and the noise floor of each
pattern family from repeated measurements: the best any model can do.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from labkit.calibrate.calibration_set import CalibrationSet
from labkit.calibrate.residuals import column_noise, repeat_variance, residual_structure
from labkit.measure.metrics import noise_floor_ser, ser, to_db

__all__ = ["ser_report", "programmed_report"]


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


def programmed_report(state, model, shipped: Mapping, held_out: bool) -> dict:
    """The headline on a programmed state (a
    :class:`~labkit.calibrate.programmed.ProgrammedState`): SER of the naive (its one-hot
    reads), linear (its random VMMs) and model (``model``: the chip's parameters at the
    state's read currents) extractions on its activation-like VMMs, its noise floor, and
    the model's residual structure. ``shipped``: the report at the shipped currents
    (kept under ``shipped``). ``held_out``: the model was fitted without this state."""
    from labkit.calibrate.fits import fit_linear, fit_naive, predict_mean_s

    t0 = state.baseline.t0_s
    acts, onehot = state.activations, state.onehot
    predictors = {"naive": fit_naive(state).predict_s, "linear": fit_linear(state).predict_s,
                  "model": lambda x: predict_mean_s(model, x)}
    ser_db = {k: to_db(ser(acts.y_s, t0 - np.asarray(p(acts.x)))) for k, p in predictors.items()}
    floor = to_db(noise_floor_ser(state.activation_repeats.y_s))
    floor_s, rel = column_noise(state.activation_repeats.y_s)
    sets = {"activation-like": (acts.x, acts.y_s, t0 - predict_mean_s(model, acts.x))}
    if held_out:  # its one-hot reads were not fitted either (random VMMs: no repeats to judge them by)
        sets["one-hot reads"] = (onehot.x, onehot.y_s, t0 - predict_mean_s(model, onehot.x),
                                 repeat_variance(onehot.x, onehot.y_s))
    keep = ("ser_db", "ser_activations_db", "noise_floor_ser_db", "noise_floor_activations_ser_db", "gap_to_floor_db")
    return {
        "shipped": {k: shipped.get(k) for k in keep},
        "ser_db": ser_db,
        "noise_floor_ser_db": floor,
        "gap_to_floor_db": {k: floor - v for k, v in ser_db.items()},
        "gain_over_naive_db": {k: v - ser_db["naive"] for k, v in ser_db.items()},
        "programmed": {"held_out_state": held_out, "inputs": "activation-like",
                       "residuals": residual_structure(sets, floor_s, rel)},
    }
