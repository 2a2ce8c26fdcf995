"""The droop and readout equations of docs/physics.md (section 3): one definition, used
by the array model (:mod:`.kernels`) and the tile physics of the network layers
(:mod:`.tile_physics`); the C kernels inline them (``slots.c``: the slot walk alone for
:class:`.kernels.ChargeFn`; ``crossing.c``: droop and readout with it in the fused
crossing of :class:`.kernels.Crossing`; ``analog_tiles.c`` fuses the whole readout) and
tests/test_analog.py and tests/test_model_native.py hold them to these functions.

Units are the caller's, consistently: charge in fC (the model's internal units,
:mod:`.units`), droop ``e = eta / C`` in 1/fC, times in us (array model) or in TDC counts
(tile physics, ``lsb = 1``).

* Droop, closed form: ``q = K + ln(1 + e Z) / e`` (:func:`droop_charge` computes the
  log term; ``K``, the crosstalk charge, is added by the caller).
* Readout: ``t = t0 - g q + noise`` with noise rms ``sqrt(floor^2 + (rel g q)^2)``, TDC
  floor to the LSB, clip to ``[0, t_fs]`` (:func:`read_times`). Gradients are
  straight-through for the floor (and for the clip with ``clip="ste"``); the autograd
  functions that use these hold the backward passes.
"""

from __future__ import annotations

import math

import torch

__all__ = ["droop_charge", "droop_grad", "read_times", "Y_MIN"]

Y_MIN = -1.0 + 1e-6  # floor of e Z (the log's argument stays positive)


def droop_charge(z: torch.Tensor, e: torch.Tensor, out: torch.Tensor | None = None):
    """``(q, y)``: the droop-compressed charge ``q = ln(1 + e z) / e`` (fC; the limit
    ``z`` as ``e -> 0``) and ``y = e z`` floored at :data:`Y_MIN` (``dq/dz = 1/(1 + y)``).
    z (..., C) fC, e broadcasting against it (1/fC). ``out``: a buffer for ``y``."""
    y = torch.mul(e, z, out=out).clamp_min_(Y_MIN)
    q = torch.log1p(y).div_(y)  # log1p is accurate for small y: only y == 0 (0/0) needs care
    return q.nan_to_num_(nan=1.0).mul_(z), y


_CURV_SERIES_MAX = 0.1  # |y| below which the curvature term is summed as a series
_CURV_TERMS = 8  # sum_{n < 8} (-1)^n (n + 1) / (n + 2) y^n: remainder < 1e-8 at |y| = 0.1


_COEFFICIENTS: dict[str, list[torch.Tensor]] = {}


def _curv_coefficients(device) -> list[torch.Tensor]:
    """The series' coefficients as float32 scalars on ``device`` (made once: creating a
    tensor costs as much as a pass over a batch)."""
    key = str(device)
    if key not in _COEFFICIENTS:
        _COEFFICIENTS[key] = [torch.tensor((-1) ** n * (n + 1) / (n + 2), dtype=torch.float32, device=device)
                              for n in range(_CURV_TERMS)]
    return _COEFFICIENTS[key]


def _log1p_curv(y: torch.Tensor) -> torch.Tensor:
    """``(log1p(y) - y / (1 + y)) / y^2`` with the limit 1/2 at ``y = 0``. The
    difference cancels as ``y -> 0``: float64 inputs, and float32 ones where ``|y| >=
    0.1``, are evaluated in float64 (relative error ~2e-16 / y); float32 ones below by
    its series ``sum_n (-1)^n (n + 1) / (n + 2) y^n`` to ``y^7`` (remainder < 1e-8; the
    float64 log1p costs 10x more than the whole rest of the backward on a CPU)."""
    if y.dtype == torch.float32:
        lo, hi = float(y.amin()), float(y.amax())  # (bool masks cost more than two reductions)
        top = max(-lo, hi, 1e-30)
        # terms while |y|^n is above 1e-8 (at most _CURV_TERMS): fewer for a small droop
        terms = _CURV_TERMS if math.isnan(lo + hi) else min(
            _CURV_TERMS, max(2, math.ceil(math.log(1e-8) / math.log(min(top, _CURV_SERIES_MAX)))))
        c = _curv_coefficients(y.device)[:terms]
        phi = torch.full_like(y, float(c[-1]))
        with torch.no_grad():  # (used by once-differentiable backward passes)
            for ck in reversed(c[:-1]):  # Horner, one fused pass per term
                torch.addcmul(ck, phi, y, out=phi)
        if top >= _CURV_SERIES_MAX:
            big = y.abs() >= _CURV_SERIES_MAX
            v = y[big].double()
            phi[big] = ((torch.log1p(v) - v / (1.0 + v)) / (v * v)).to(y.dtype)
        return phi
    v = y.double()
    phi = (torch.log1p(v) - v / (1.0 + v)) / (v * v)
    return torch.nan_to_num(phi, nan=0.5).to(y.dtype)


def droop_grad(g: torch.Tensor, z: torch.Tensor, y: torch.Tensor, need_e: bool):
    """Gradients of :func:`droop_charge`: ``dq/dz`` applied to ``g``, and the
    batch-summed ``dq/de`` (n, 1, C) (stable for small ``e z``; None unless ``need_e``)."""
    g_z = g / (1.0 + y)
    g_e = -(g * z * z * _log1p_curv(y)).sum(-2, keepdim=True) if need_e else None
    return g_z, g_e


def read_times(t: torch.Tensor, lsb: float, t_fs: float, quantize: bool, clip: str | None,
               normals: torch.Tensor | None = None, noise: tuple[float, float] = (0.0, 0.0), t0=None):
    """``(t, keep)``: comparator times read by the TDC, in place on ``t``.

    ``t = t0 - g q`` (noise-free, as computed by the caller); ``normals`` (standard
    normal values shaped like ``t``) with ``noise = (floor, rel)`` add noise of rms
    ``sqrt(floor^2 + (rel (t0 - t))^2)`` (``rel`` needs ``t0``); ``quantize``: floor to
    multiples of ``lsb``; ``clip``: ``"ste"`` or ``"hard"`` clip to ``[0, t_fs]``, None
    none. ``keep``: the mask of unclipped times for ``"hard"`` (else None).
    """
    floor, rel = noise
    if normals is not None and (floor > 0 or rel > 0):
        if rel > 0:
            t.add_(normals * torch.sqrt(floor**2 + (rel * (t0 - t)) ** 2))
        else:
            t.add_(normals * floor)
    if quantize:
        if lsb == 1.0:
            t.floor_()
        else:
            t.div_(lsb).floor_().mul_(lsb)
    keep = None
    if clip is not None:
        if clip == "hard":
            keep = (t >= 0) & (t <= t_fs)
        t.clamp_(0.0, t_fs)
    return t, keep
