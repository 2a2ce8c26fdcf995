"""The tile physics of the analog layers: many 16-row tiles of time-domain arrays in one
batched computation (scaled units: nA, us, fC, :mod:`labkit.model.units`).

**Tile physics** (training; one batched computation for all tiles of a layer, no Python
loop over tiles or samples). Every tile has its own array model parameters
(:class:`TileParams`: drain coefficient per column, crosstalk charge per cell, offset and
readout gain per column), from a chip's calibration (:meth:`TileParams.from_model`) or
sampled from a spread (:class:`ChipSpread`). The equations are those of
:class:`labkit.model.ArrayModel` (docs/physics.md, section 3), removed charge per column::

    Z0 = sum_i I0_i d_i          (cell currents from the weights)
    Kt = sum_{i pulsed} k_i      (crosstalk charge of the falling edges)
    X  = sum_{i, l pulsed} I0_i k_l relu(d_i - d_l)     (edge-order term, see below)
    q  = Kt + ln(1 + e' (Z0 - e' X)) / e',   e' = eta / C   (bit-line droop)

then ``t = t0 - g q`` + readout noise (training only), floored to the TDC LSB, clipped to
the TDC range. The droop log term and the readout are the functions of
:mod:`labkit.model.equations` that the array model uses too (here in TDC counts).
``X`` (current that flows after another row's edge has already stepped
the bit line, so it sees that step through the droop) is the first-order term of the
closed-form slot integral of ArrayModel in ``e' K`` (``e' K`` < 0.05 on these chips);
its pairwise ``relu(d_i - d_l)`` kernel is approximated by the separable fit
``d_i 0.9 (p_l - x_l)`` (least squares over uniform, activation-like and saturating
inputs, constrained to be exact for equal pulses), and ``sum_l k_l x_l`` in it by
``mean_l(k_l) sum_l x_l``, so the term costs no extra matrix product. The whole term
is below one TDC LSB for typical inputs (a few LSB at full scale); tests/test_analog.py
checks the layer against ArrayModel's exact slot integration (about 0.2 LSB rms). Gradients: straight-through for the input
clock, the TDC and the clip; exact for the droop; the edge-order term is a forward-only
correction (its gradient is second order).

Noise: Gaussian readout noise per column (training mode only) of rms
``sqrt(noise_std_s^2 + (noise_relative * output)^2)`` (a floor and a part that grows
with the column's time shift), drawn
from a pre-generated Gaussian bank at random offsets (``torch.randn`` costs more than the
rest of the tile physics on a CPU): one offset per call in torch, one per column and
block of 128 samples in C. Units inside: nA, us, fC (= nA us).

Speed: on the CPU (float32) the whole tile computation runs in C
(:mod:`labkit.model.tiles_native`, ``analog_tiles.c``, built at first use): products,
readout and row-tile sums on blocks of samples held in the cache, the backward pass
likewise, convolution patches copied by runs, where a timed race at first use
(:func:`race_paths`) found it faster than the torch code here; that is the fallback
(other devices and dtypes, no compiler, ``LABKIT_NATIVE=0``) and the reference the
tests hold the kernels to. A layer on its model tiles runs whole in C
(:class:`FusedLayer`: patches read in place from the input map, the second-order widths
per block, digital gains, bias and ReLU), the composition of :class:`TileBmm` and the
torch epilogue being its definition.
"""

from __future__ import annotations

import math

import torch

from labkit.model import native, tiles_native
from labkit.model.equations import droop_charge, read_times

__all__ = ["TileBmm", "FusedLayer", "PulseInputs", "tile_readout", "gaussian", "NATIVE", "EDGE_A", "EDGE_B", "race_paths"]

EDGE_A, EDGE_B = 0.9, -0.9  # relu(u - v) p_v ~ u (A p_v + B v): exact for equal pulses

# ----------------------------------------------------------------------------- noise bank

_BANK: dict[tuple, torch.Tensor] = {}


def gaussian(numel: int, dtype, device) -> torch.Tensor:
    """``numel`` standard normal values: a slice at a random offset of a cached bank."""
    key = (dtype, str(device))
    bank = _BANK.get(key)
    if bank is None or bank.numel() < 2 * numel:
        bank = torch.randn(max(2 * numel, 1 << 20), dtype=dtype, device=device)
        _BANK[key] = bank
    start = int(torch.randint(0, bank.numel() - numel + 1, ()))
    return bank[start:start + numel]


# ----------------------------------------------------------------------------- tile physics


_WORK: dict[tuple, torch.Tensor] = {}


def _work(key, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A scratch tensor reused across calls (large temporaries: allocating fresh pages for
    them costs more than the arithmetic on a CPU). Never saved for backward."""
    buf = _WORK.get(key)
    n = math.prod(shape)
    if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
        buf = torch.empty(n, dtype=like.dtype, device=like.device)
        _WORK[key] = buf
    return buf[:n].view(shape)


def tile_readout(z, kt, ku, e, t0c, gc, opts):
    """Droop, crosstalk, readout noise, TDC and clip of every column of every row tile,
    and the digital sum of the signed outputs over the row tiles; returns ``(y, m)`` with
    ``m = dq/dZ0`` (for the backward pass; None without droop).

    Tensors are 4-D with the row tiles on dim 1 and the columns (plus then minus) on dim
    ``col``; parameters broadcast against them. ``z``: removed charge without droop or
    crosstalk, ``Z0 = sum_i I0_i d_i`` (fC; used as scratch); ``kt``: crosstalk of the
    pulsed rows (fC); ``ku``: ``(sum_l x_l, mean_l k_l)``, whose product approximates
    ``sum_l k_l x_l`` in the edge-order term (a sub-LSB correction: its row-to-row
    crosstalk spread is second order there).
    ``e``: eta/C (1/fC); ``t0c``: offsets (TDC counts); ``gc``: readout gain (counts per
    fC). ``y``: the row-tile sum of ``q_read(plus) - q_read(minus)`` (fC), dim 1 removed.
    """
    droop, quantize, noise, cmax, col = opts
    normals = gaussian(z.numel(), z.dtype, z.device).view_as(z) if max(noise) > 0 else None
    m = None
    q = z
    if droop:
        if ku is not None:  # 1 - e' (A Kt + B Ku)
            sx, kbar = ku
            one = torch.ones((), dtype=z.dtype, device=z.device)
            m = torch.addcmul(one, kt, -EDGE_A * e).addcmul_(sx, (-EDGE_B * e) * kbar)
            z.mul_(m)
        q, y = droop_charge(z, e, out=_work("w", z.shape, z))  # ln(1 + e' Z) / e'
        w = y.add_(1.0)
        m = torch.reciprocal(w) if m is None else m.div_(w)  # dq/dZ0
    if kt is not None:
        q.add_(kt)
    c = torch.addcmul(t0c, q, gc, value=-1.0, out=q)  # TDC counts t0 - g q
    c, _ = read_times(c, 1.0, cmax, quantize, "ste", normals, noise, t0c)
    c = torch.addcmul(t0c / gc, c, -1.0 / gc, out=c)  # charge read back (fC)
    s = c.sum(1)
    half = s.shape[col - 1] // 2
    return s.narrow(col - 1, 0, half) - s.narrow(col - 1, half, half), m


#: the C kernels (labkit.model.tiles_native) where they apply; "fused": whole layers in them
#: (FusedLayer) where the layers can (off: the same kernels for the tiles alone)
NATIVE = {"on": True, "fused": True}
_NOISE_BANK = 1 << 16  # normal values the C kernel's noise windows come from (256 kB: stays in L2)


class TileBmm(torch.autograd.Function):
    """Row tiles as batched matrix products: xt (rt, R, N), the inputs in [0, 1] with
    each row's samples contiguous; i0t (rt, R, 2n) currents times T (fC per unit input),
    kx (rt, R, 2n) crosstalk (fC); parameters (rt, 1, 2n). Returns (N, n): the row-tile
    sum of the signed outputs (fC). The products are (rt, 2n, N), so each column's
    samples are contiguous for the readout."""

    @staticmethod
    def forward(ctx, xt, i0t, kx, e, t0c, gc, opts):
        crosstalk, edge = opts[-2:]
        opts = opts[:-2]
        droop, quantize, noise, cmax, _ = opts
        rt, R, N = xt.shape
        n2 = i0t.shape[-1]
        ctx.native = NATIVE["on"] and tiles_native.applies(xt, i0t, kx, e, t0c, gc)
        if ctx.native:
            bank = gaussian(_NOISE_BANK, xt.dtype, xt.device) if max(noise) > 0 else None
            y, m = tiles_native.forward(xt, i0t, kx, e, t0c, gc, kx.mean(1), bank, noise, cmax, droop,
                                         quantize, crosstalk, edge, EDGE_A, EDGE_B, any(ctx.needs_input_grad[:2]))
            ctx.save_for_backward(xt, i0t, m)
            return y.t()
        shape = (1, rt, n2, N)
        z = torch.bmm(i0t.transpose(1, 2), xt, out=_work("z", shape, xt)[0])
        kt = ku = None
        if crosstalk:
            p = torch.sign(xt, out=_work("p", xt.shape, xt))
            kt = torch.bmm(kx.transpose(1, 2), p, out=_work("kt", shape, xt)[0]).unsqueeze(0)
            if edge and droop:
                ku = (xt.sum(1).view(1, rt, 1, N), kx.mean(1).view(1, rt, n2, 1))
        col = lambda v: v.transpose(1, 2).unsqueeze(0)  # (rt, 1, 2n) -> (1, rt, 2n, 1)
        y, m = tile_readout(z.unsqueeze(0), kt, ku, col(e), col(t0c), col(gc), opts)
        ctx.save_for_backward(xt, i0t, m)
        return y[0].t()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        xt, i0t, m = ctx.saved_tensors
        if ctx.native:
            gx, gi = tiles_native.backward(xt, i0t, m, gy.t(), *ctx.needs_input_grad[:2])
            return gx, gi, None, None, None, None, None
        rt = xt.shape[0]
        g = torch.cat([gy, -gy], dim=-1).t().unsqueeze(0)  # (1, 2n, N)
        if m is not None:
            gz = torch.mul(m[0], g, out=_work("gz", m.shape[1:], m))
        else:
            gz = g.expand(rt, -1, -1)
        gx = gi = None
        if ctx.needs_input_grad[0]:
            gx = torch.bmm(i0t, gz)  # (rt, R, N)
        if ctx.needs_input_grad[1]:
            gi = torch.bmm(gz, xt.transpose(1, 2)).transpose(1, 2)  # (rt, R, 2n)
        return gx, gi, None, None, None, None, None


class PulseInputs(torch.autograd.Function):
    """:class:`labkit.model.kernels.InputQuantize` of scaled activations ``v`` in one C
    pass each way (``levels`` a power of two or 0), and the least ``v`` (a 0-dim tensor
    without gradient: negative means the layer splits its inputs instead)."""

    @staticmethod
    def forward(ctx, v, levels):
        x, least = tiles_native.quantize(v, levels)
        ctx.save_for_backward(v)
        least = torch.tensor(least)
        ctx.mark_non_differentiable(least)
        return x, least

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _):
        (v,) = ctx.saved_tensors
        return tiles_native.quantize_backward(g, v), None


class FusedLayer(torch.autograd.Function):
    """A whole layer's tile physics and digital epilogue in the C kernels, for the layers
    where those apply: ``[relu](y scale + bias)`` laid out (B, n, hw), with y (n, B hw)
    the row-tile sums of :class:`TileBmm` (same inputs and parameters), ``scale`` (n,)
    the digital gain per output (no gradient), ``bias`` (n,) or None. ``x``: rows (rt,
    R, N) of which the first ``rows`` hold inputs, or with ``patches``
    (:class:`~labkit.model.tiles_native.Patches`) a convolution's input map, read in
    place. ``widths``: (loss, beta, row currents) of the second-order effective widths
    (:class:`labkit.model.second_order.Widths`, straight-through), or None. TileBmm
    (after Widths) followed by the torch epilogue is the definition
    (tests/test_analog_fused.py holds the two together)."""

    @staticmethod
    def forward(ctx, x, i0t, kx, e, t0c, gc, bias, opts, scale, relu, hw, rows, patches, widths=None):
        crosstalk, edge = opts[-2:]
        droop, quantize, noise, cmax, _ = opts[:-2]
        bank = gaussian(_NOISE_BANK, x.dtype, x.device) if max(noise) > 0 else None
        keep = any(ctx.needs_input_grad[:2])
        y, m, *xe = tiles_native.forward(x, i0t, kx, e, t0c, gc, kx.mean(1), bank, noise, cmax, droop, quantize,
                                         crosstalk, edge, EDGE_A, EDGE_B, keep, rows, patches, widths)
        out = tiles_native.epilogue(y, scale, bias, relu, hw)
        ctx.xe = xe[0] if xe else None
        ctx.save_for_backward(x, i0t, m, out, scale)
        ctx.relu, ctx.rows, ctx.patches = relu, rows, patches
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, i0t, m, out, scale = ctx.saved_tensors
        need_x, need_i, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[6]
        gy, gb = tiles_native.epilogue_backward(g, out, scale, ctx.relu, need_b)
        gx = gi = None
        if need_x or need_i:
            gx, gi = tiles_native.backward(x, i0t, m, gy, need_x, need_i, ctx.rows, ctx.patches, ctx.xe)
        return gx, gi, None, None, None, None, gb, None, None, None, None, None, None, None


def race_paths(rt: int = 4, rows: int = 16, n2: int = 16, samples: int = 4096) -> tuple[float, float]:
    """Seconds per forward + backward of :class:`TileBmm` with the C kernels and with the
    torch path, timed alternately on a representative layer (``rt`` row tiles of
    ``rows`` x ``n2`` columns, ``samples`` samples, full physics and training noise)."""
    g = torch.Generator().manual_seed(0)
    xt = torch.rand(rt, rows, samples, generator=g) * (torch.rand(rt, rows, samples, generator=g) > 0.4)
    i0t = 5.0 + 40.0 * torch.rand(rt, rows, n2, generator=g)
    kx = 0.5 * torch.randn(rt, rows, n2, generator=g)
    par = lambda lo, span: lo + span * torch.rand(rt, 1, n2, generator=g)  # noqa: E731
    args = (xt, i0t, kx, par(1e-3, 1e-3), par(900.0, 20.0), par(1.0, 0.1),
            (True, True, (0.5, 0.02), 1023.0, 2, True, True))
    gy = torch.randn(samples, n2 // 2, generator=g)

    def step(on: bool):
        def run():
            ctx = native.RaceCtx((True, True) + (False,) * 5)
            with tiles_native.forcing(on):
                TileBmm.forward(ctx, *args)
                TileBmm.backward(ctx, gy)
        return run

    return native.timed_race(step(True), step(False))


def branch_charges(w: torch.Tensor, i_min_na: float, i_scale_na: float, t_us: float) -> torch.Tensor:
    """Cell currents times T (fC per unit input) of normalized weights ``w`` (..., R, n)
    in [-1, 1]: (..., R, 2n), the plus branches then the minus branches, with the offset
    scheme ``I = I_min + max(+-w, 0) I_scale`` (:class:`labkit.program.mapping.WeightWindow`)."""
    both = torch.cat([w.clamp_min(0.0), (-w).clamp_min(0.0)], dim=-1)
    return (i_min_na + both * i_scale_na) * t_us
