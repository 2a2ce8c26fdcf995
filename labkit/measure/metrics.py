"""Signal-to-error ratio (SER) and the noise floor of VMM outputs.

Outputs ``y`` are measured from the zero-input baseline: ``y = t(x=0) - t(x)`` in
seconds (a larger dot product gives an earlier crossing, so ``y >= 0``), optionally
times the reference current (coulombs). The metrics below are ratios, so either unit works.

- ``SER = sum(y_meas**2) / sum((y_meas - y_pred)**2)`` (docs/physics.md, section 3).
- The *noise floor* is the SER of one measurement against the mean of repeated
  measurements of the same patterns: no model can beat it.
"""

from __future__ import annotations

import math

import numpy as np


def to_db(ratio: float) -> float:
    """A power ratio in dB (``inf`` stays ``inf``; ``0`` is ``-inf``)."""
    ratio = float(ratio)
    if ratio < 0 or math.isnan(ratio):
        raise ValueError(f"ratio={ratio}; expected a non-negative power ratio")
    if ratio == 0:
        return -math.inf
    return math.inf if math.isinf(ratio) else 10.0 * math.log10(ratio)


def ser(y_meas, y_pred) -> float:
    """``sum(y_meas**2) / sum((y_meas - y_pred)**2)``; ``inf`` when the prediction is exact."""
    m, p = np.asarray(y_meas, dtype=float), np.asarray(y_pred, dtype=float)
    if m.shape != p.shape:
        raise ValueError(f"y_meas has shape {m.shape} but y_pred has {p.shape}; expected equal shapes")
    if m.size == 0:
        raise ValueError("ser() needs at least one output, got empty arrays")
    err = float(np.sum((m - p) ** 2))
    sig = float(np.sum(m**2))
    return math.inf if err == 0 else sig / err


def ser_db(y_meas, y_pred) -> float:
    """:func:`ser` in dB."""
    return to_db(ser(y_meas, y_pred))


def noise_floor_ser(y_repeats, unbiased: bool = True) -> float:
    """SER of one measurement against the mean of ``R`` repeats of the same patterns.

    ``y_repeats`` has shape ``(R, B, ...)``: repeat, pattern, outputs. The error of one
    repeat against the mean of all R underestimates the noise by ``(R-1)/R`` (the mean
    contains that repeat); ``unbiased=True`` corrects for it, so the value estimates the
    SER of one measurement against the noise-free output. ``inf`` when all repeats agree
    (no noise). Needs ``R >= 2``.
    """
    y = np.asarray(y_repeats, dtype=float)
    if y.ndim < 2 or y.shape[0] < 2:
        raise ValueError(f"y_repeats has shape {y.shape}; expected (R >= 2 repeats, patterns, ...)")
    if np.all(y == y[:1]):  # identical repeats (exactly; a float mean would leave rounding)
        return math.inf
    mean = y.mean(axis=0, keepdims=True)
    err = float(np.sum((y - mean) ** 2))
    if unbiased:
        r = y.shape[0]
        err *= r / (r - 1)
    sig = float(np.sum(y**2))
    return math.inf if err == 0 else sig / err


def noise_floor_ser_db(y_repeats, unbiased: bool = True) -> float:
    """:func:`noise_floor_ser` in dB."""
    return to_db(noise_floor_ser(y_repeats, unbiased))


def effective_bits(ser_ratio: float) -> float:
    """Effective output bits of an SER, ``(SER_dB - 1.76) / 6.02`` (a full-scale sine rule)."""
    return (to_db(ser_ratio) - 1.76) / 6.02
