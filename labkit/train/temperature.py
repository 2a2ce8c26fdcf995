"""Temperature-aware training: the chip's temperature as an augmentation of the forward pass.

Under read-voltage compensation (:mod:`labkit.deploy.temperature`) a tile programmed at
``T0`` and read at ``T`` keeps each column's total current, but its ln-current
differences scale by ``T0 / T`` (the subthreshold slope ``n k T / q``): ``I' = c_j I^k``
with ``k = T0 / T`` and ``c_j`` holding column j's sum. :func:`temperature_augmentation`
applies that to every analog layer's cell currents in training mode, one temperature
drawn uniformly from ``range_k`` (K) per forward pass, so the network learns weights
whose function survives it. Inference (eval mode) is untouched.

It wraps each layer's cell-current method (``_currents_t``: charges per unit input,
(row tiles, rows, 2 x outputs)) for the duration of the ``with`` block only.
"""

from __future__ import annotations

import contextlib

import torch

from labkit.errors import UsageError

__all__ = ["compress", "temperature_augmentation"]


def compress(charges: torch.Tensor, k: float) -> torch.Tensor:
    """Charges (..., rows, cols) > 0 with ratios raised to ``k``, each column's sum kept."""
    m = charges.mean(dim=-2, keepdim=True).detach()
    u = (charges / m).clamp_min(1e-6) ** k
    return u * (charges.sum(dim=-2, keepdim=True) / u.sum(dim=-2, keepdim=True))


@contextlib.contextmanager
def temperature_augmentation(model: torch.nn.Module, range_k=(283.15, 333.15), programmed_k: float = 300.15,
                             seed: int = 0):
    """Within the block, analog layers of ``model`` in training mode see their cells at a
    random temperature of ``range_k`` (K) after read-voltage compensation from ``programmed_k`` (K)."""
    from labkit.nn import analog_layers

    lo, hi = (float(v) for v in range_k)
    if not (0 < lo < hi) or not programmed_k > 0:
        raise UsageError(f"temperature range {range_k!r} K from {programmed_k!r} K; expected 0 < low < high")
    gen = torch.Generator().manual_seed(int(seed))
    layers = [m for _, m in analog_layers(model)]
    for m in layers:
        if not callable(getattr(m, "_currents_t", None)):
            raise UsageError(f"{type(m).__name__} has no cell-current method to augment")
    originals = []
    for m in layers:
        orig = m._currents_t

        def augmented(m=m, orig=orig):
            i0t = orig()
            if not m.training:
                return i0t
            kelvin = lo + (hi - lo) * float(torch.rand((), generator=gen))
            return compress(i0t, float(programmed_k) / kelvin)
        originals.append(m)
        m._currents_t = augmented
    try:
        yield model
    finally:
        for m in originals:
            del m._currents_t
