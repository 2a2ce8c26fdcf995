"""The SER report: how well each extraction predicts held-out patterns, against the noise floor.

The report holds each method's SER (ratio and dB) on held-out random patterns and on
held-out activation-like patterns (sparse, ReLU-skewed), and the noise floor of each
pattern family from repeated measurements: the best any model can do.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from labkit.calibrate.calibration_set import CalibrationSet
from labkit.measure.metrics import noise_floor_ser, ser, to_db

__all__ = ["ser_report"]


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
