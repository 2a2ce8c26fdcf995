"""Batched, differentiable kernels of the array model (scaled units: nA, us, fC).

Shapes: ``n`` tiles, ``B`` samples, ``R`` rows, ``C`` columns, ``K = R`` adaptive time
slots. Widths ``d`` (n, B, R) in us, currents ``i0`` and crosstalk ``kxt`` (n, R, C) in
nA and fC, droop ``e = eta / C`` (n, 1, C) in 1/fC. Everything is one batched
computation over tiles and samples; the charge (:class:`ChargeFn`) and the whole
first-order crossing (:class:`Crossing`: input quantization, charge, readout) are single
autograd nodes with hand-written backward passes. On CPU (float32/float64, rows and
columns multiples of 8 / 4), where the measured race picks it, the adaptive-slot part of
:class:`ChargeFn` runs in the compiled C kernel ``slots.c`` (:mod:`.slots_native`: one
pass per sample, no (B, K, R) masks, exact same closed form), and :class:`Crossing` as
one C call each way (``cross_fwd`` / ``cross_bwd`` in ``crossing.c``: the same operations
as the torch composition, which stays the definition); elsewhere, or without a C compiler, or with
``LABKIT_NATIVE=0``, in the torch code below.

The closed form over the slots (slot k ends at the k-th smallest width ``s_k``)::

    S_k = sum_{i: d_i >= s_k} I0_i                        slot currents (mask @ I0)
    E_k = prod_{pulsed i: d_i < s_k} exp(-e k_i)          droop of earlier crosstalk
    Z   = sum_k (s_k - s_{k-1}) S_k E_k
    q   = K_tot + ln(1 + e Z) / e,   K_tot = sum_{pulsed i} k_i
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from labkit.model import native, slots_native
from labkit.model.equations import droop_charge, droop_grad, read_times

# ---------------------------------------------------------------- straight-through pieces


class StraightThrough(torch.autograd.Function):
    """``fn(x)`` forward, identity gradient (one graph node for quantize + clip)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, g):
        return g, None


class InputQuantize(torch.autograd.Function):
    """Clamp to [0, 1] and round to ``levels`` steps (``levels=0``: no rounding);
    gradient straight through inside [0, 1], zero outside."""

    @staticmethod
    def forward(ctx, x, levels):
        y = x.clamp(0.0, 1.0)
        ctx.save_for_backward(x, y)
        if not levels:
            return y
        r = torch.round(y * levels)
        # a power-of-two step count: multiplying by 1/levels is exact (and cheaper than /)
        return r.mul_(1.0 / levels) if levels & (levels - 1) == 0 else r.div_(levels)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        # g * (x == y) without a bool mask (a bool mask times a float tensor runs 2-7x slower
        # on a CPU): -(g * (sign|x - y| - 1)) is g inside [0, 1] and 0 outside
        return g.mul((x - y).abs_().sign_().sub_(1.0)).neg_(), None


class Readout(torch.autograd.Function):
    """Comparator crossing times ``t = t0 - gain / iref * q`` (us) with optional Gaussian
    noise (std ``noise_us``), TDC floor to ``lsb`` and clip to [0, tfs], one graph node
    (:func:`labkit.model.equations.read_times`).

    q (n, B, C) fC; t0 and gain (n, 1, C) (gain relative to ``1 / iref``, iref in nA).
    Quantization is straight-through; clip ``"ste"`` passes the gradient, ``"hard"``
    zeroes it where clipped, ``None`` does not clip.
    """

    @staticmethod
    def forward(ctx, q, t0, gain, iref, lsb, tfs, quantize, clip, noise_us):
        g = gain / iref
        t = t0 - g * q
        normals = torch.randn_like(t) if noise_us > 0 else None
        t, keep = read_times(t, lsb, tfs, quantize, clip, normals, (noise_us, 0.0))
        ctx.save_for_backward(q, g, keep)
        ctx.iref = iref
        return t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gt):
        q, g, keep = ctx.saved_tensors
        if keep is not None:
            gt = gt * keep
        need_q, need_t0, need_gain = ctx.needs_input_grad[:3]
        g_q = -g * gt if need_q else None
        g_t0 = gt.sum(-2, keepdim=True) if need_t0 else None
        g_gain = -(gt * q).sum(-2, keepdim=True) / ctx.iref if need_gain else None
        return g_q, g_t0, g_gain, None, None, None, None, None, None


# ---------------------------------------------------------------- droop compression


class LogCompress(torch.autograd.Function):
    """Droop compression ``ln(1 + e z) / e``; z (n, B, C), e (n, 1, C)."""

    @staticmethod
    def forward(ctx, z, e):
        q, y = droop_charge(z, e)
        ctx.save_for_backward(z, y)
        return q

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        z, y = ctx.saved_tensors
        return droop_grad(g, z, y, ctx.needs_input_grad[1])


# ---------------------------------------------------------------- adaptive slots


def slot_masks(d: torch.Tensor):
    """Sorted widths and thermometer masks of the adaptive slots.

    Returns ``s`` (n, B, K) sorted widths, ``idx`` their rows, ``dt`` (n, B, K) slot
    lengths (ties give empty slots) and the float mask ``active`` (n, B*K, R):
    row i on during slot k (``d_i >= s_k``). No gradient.
    """
    n, B, R = d.shape
    s, idx = torch.sort(d, dim=-1)
    dt = torch.diff(s, dim=-1, prepend=torch.zeros_like(s[..., :1]))
    a = torch.empty(n, B * R, R, dtype=d.dtype, device=d.device)
    torch.ge(d.unsqueeze(-2), s.unsqueeze(-1), out=a.view(n, B, R, R))
    return s, idx, dt, a


def fallen_mask(d: torch.Tensor, pulsed: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Float mask (n, B*K, R): pulsed row i fell before slot k (``d_i < s_k``)."""
    n, B, R = d.shape
    f = torch.empty(n, B * R, R, dtype=d.dtype, device=d.device)
    d_fall = torch.where(pulsed, d, torch.full_like(d, math.inf))
    torch.lt(d_fall.unsqueeze(-2), s.unsqueeze(-1), out=f.view(n, B, R, R))
    return f


def _droop_factors(s, idx, kxt, e):
    """``E_k`` (n, B, K, C): cumulative product of ``exp(-e k_i)`` over the pulsed rows
    that fell before slot k (one gather of a small table and one cumprod)."""
    n, B, R = s.shape
    C = kxt.shape[-1]
    rho = torch.cat([torch.ones_like(e), torch.exp(-e * kxt)], dim=1)  # (n, R+1, C); row 0: none
    enter = F.pad((idx[..., :-1] + 1) * (s[..., :-1] > 0), (1, 0))  # the row entering slot k
    if n > 1:
        enter = enter + (torch.arange(n, device=s.device) * (R + 1)).view(n, 1, 1)
    ex = rho.view(n * (R + 1), C).index_select(0, enter.reshape(-1)).view(n, B, R, C)
    for k in range(1, R):  # in-place cumulative product over the slots (cheaper than cumprod)
        ex[:, :, k].mul_(ex[:, :, k - 1])
    return ex


class ChargeFn(torch.autograd.Function):
    """Removed charge q(T) (n, B, C) in fC of the column-eta model, one graph node.

    ``forward(x, pulsed, log_i0, kxt, eta, t_us, c_ff, droop, timing)``: x (n, B, R) in
    [0, 1], pulsed (n, B, R) bool (rows with an edge; None: ``x > 0``), log_i0 (n, R, C) ln(nA), kxt
    (n, R, C) fC or None (no crosstalk), eta (n, 1, C) 1/V, T in us, C in fF, droop
    on/off, ``timing``: crosstalk steps at their edge times (adaptive slots) or, if
    False, all after the integration (no slots: ``q = K_tot + ln(1 + e I0^T d) / e``).
    """

    @staticmethod
    def forward(ctx, x, pulsed, log_i0, kxt, eta, t_us, c_ff, droop, timing=True):
        n, B, R = x.shape
        C = log_i0.shape[-1]
        i0 = torch.exp(log_i0)
        d = x * t_us
        pf = torch.sign(x) if pulsed is None else pulsed.to(x.dtype)  # x >= 0: sign is the pulsed mask
        e = eta / c_ff if droop else None
        slots = droop and kxt is not None and timing
        saved = [x, pf, i0, kxt, e]
        compiled = slots and slots_native.usable(d, i0, kxt, e)
        if compiled:  # the same closed form in one pass per sample (slots.c)
            rho = torch.exp(-e * kxt)
            z, idx = slots_native.slots_forward(d, i0, rho)
            saved += [d, rho, idx]
        elif slots:
            s, idx, dt, a = slot_masks(d)
            w = torch.bmm(a, i0).view(n, B, R, C)  # slot currents S
            ex = _droop_factors(s, idx, kxt, e)
            w.mul_(ex)  # W = S E
            z = (w * dt.unsqueeze(-1)).sum(-2)
            saved += [idx, dt, a, w, ex]
        else:
            z = torch.bmm(d, i0)
        if droop:
            q, y = droop_charge(z, e)
            saved += [z, y]
        else:
            q = z
        if kxt is not None:
            q = q + torch.bmm(pf, kxt)
        ctx.save_for_backward(*saved)
        ctx.cfg = (t_us, c_ff, droop, slots, kxt is not None, compiled)
        return q

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gq):
        t_us, c_ff, droop, slots, xt, compiled = ctx.cfg
        saved = list(ctx.saved_tensors)
        x, pf, i0, kxt, e = saved[:5]
        n, B, R = x.shape
        C = i0.shape[-1]
        need_x, _, need_i0, need_k, need_eta = ctx.needs_input_grad[:5]
        gq = gq.contiguous()
        g_x = g_i0 = g_k = g_e = None
        if droop:
            z, y = saved[-2:]
            g_z, g_e = droop_grad(gq, z, y, need_eta)
        else:
            g_z = gq
        if xt and need_k:
            g_k = torch.bmm(pf.transpose(1, 2), gq)  # the K_tot term
        if not slots:  # z = d @ I0
            if need_x:
                g_x = torch.bmm(g_z, i0.transpose(1, 2)) * t_us
            if need_i0:
                g_i0 = torch.bmm((x * t_us).transpose(1, 2), g_z)
        elif compiled:
            d, rho, idx = saved[5:8]
            gd, g_i0, h = slots_native.slots_backward(d, i0, rho, idx, g_z)
            if need_x:
                g_x = gd * t_us
            if need_k:
                g_k = g_k - e * h
            if need_eta:
                g_e = g_e - (kxt * h).sum(-2, keepdim=True)
        else:
            idx, dt, a, w, ex = saved[5:10]
            if need_x:
                g_dt = torch.bmm(w.view(n * B, R, C), g_z.view(n * B, C, 1)).view(n, B, R)
                g_s = g_dt - F.pad(g_dt[..., 1:], (0, 1))
                g_x = torch.zeros_like(g_s).scatter_(-1, idx, g_s) * t_us
            if need_i0 or need_k or need_eta:
                gw = (dt.unsqueeze(-1) * g_z.unsqueeze(-2)).view(n, B * R, C)  # dZ/dW
                rhs = torch.empty(n, B * R, 2 * C, dtype=w.dtype, device=w.device)
                torch.mul(gw, ex.view(n, B * R, C), out=rhs[..., :C])  # dZ/dS
                torch.mul(gw, w.view(n, B * R, C), out=rhs[..., C:])  # -dZ/d(e K_before)
                m = torch.bmm(a.transpose(1, 2), rhs)  # (n, R, 2C)
                g_i0 = m[..., :C]
                # fallen = pulsed and not active (zero-width rows only meet empty slots,
                # where gw = 0), and sum_k gw W = g_z Z: no second mask needed
                h = torch.bmm(pf.transpose(1, 2), g_z * z) - m[..., C:]  # dZ/d(-e k)
                if need_k:
                    g_k = g_k - e * h
                if need_eta:
                    g_e = g_e - (kxt * h).sum(-2, keepdim=True)
        g_log_i0 = g_i0 * i0 if need_i0 else None
        g_eta = g_e / c_ff if (need_eta and droop) else None
        return g_x, None, g_log_i0, g_k if need_k else None, g_eta, None, None, None, None


# ---------------------------------------------------------------- one graph node


class Crossing(torch.autograd.Function):
    """Crossing times (us) of the first-order column-eta model as one graph node: the
    forward and backward passes of :class:`InputQuantize`, :class:`ChargeFn` and
    :class:`Readout`, composed (no autograd graph, views or parameter reshapes between
    them: at a batch of 1024 on one 16x16 array those cost about as much as the physics).

    ``forward(x, log_i0, k_xt, eta, t0, gain, cfg)``: x (n, B, R) raw inputs (clamped to
    [0, 1] here), or any shape (..., R) when n = 1; parameters as stored by
    :class:`labkit.model.ArrayModel`; ``cfg`` = (n, R, C, input levels, T us, C fF, I_ref
    nA, lsb us, t_fs us, quantize, clip, noise us, droop, crosstalk, edge timing).
    Returns the shape of x with C last, in us.

    Where the compiled kernels serve the tensors (:func:`slots_native.usable`, chosen by
    the measured race) the node is one C call each way (``cross_fwd`` / ``cross_bwd`` in
    ``crossing.c``: the same operations in the same order, the droop's log from a polynomial
    in float32); elsewhere it is the composition of the torch functions, which is the
    definition (tests/test_model_native.py holds the C path to it).
    """

    @staticmethod
    def forward(ctx, x, log_i0, k_xt, eta, t0, gain, cfg):
        n, R, C, levels, t_us, c_ff, iref, lsb, tfs, quantize, clip, noise, droop, crosstalk, timing = cfg
        ctx.cfg = cfg
        ctx.shapes = (log_i0.shape, k_xt.shape, eta.shape, t0.shape, gain.shape)
        if slots_native.usable(x, log_i0, k_xt, eta, t0, gain):
            x, log_i0, k_xt, eta, t0, gain = (v.contiguous() for v in (x, log_i0, k_xt, eta, t0, gain))
            par = slots_native.crossing_par(levels if quantize else 0, t_us, c_ff, iref, lsb, tfs, noise)
            flags = ((slots_native.SLOTS if (droop and crosstalk and timing) else 0)
                     | (slots_native.FLOOR if quantize else 0) | (slots_native.CLIP if clip is not None else 0))
            normals = torch.randn(n, x.numel() // (n * R), C, dtype=x.dtype) if noise > 0 else None
            k, e = k_xt if crosstalk else None, eta if droop else None
            t, buf = slots_native.crossing_forward(x, log_i0, k, e, t0, gain, normals, par, flags, clip == "hard",
                                                   n, R, C)
            ctx.save_for_backward(x, k_xt, eta, gain)
            ctx.fused = (buf, par, flags)
            return t
        need = ctx.needs_input_grad
        xs = x.reshape(n, -1, R)
        cq = native.RaceCtx((need[0], False))
        xq = InputQuantize.forward(cq, xs, levels if quantize else 0)
        kx = k_xt.reshape(n, R, C) if crosstalk else None
        cc = native.RaceCtx((need[0], False, need[1], need[2] and crosstalk, need[3]) + (False,) * 4)
        q = ChargeFn.forward(cc, xq, None, log_i0.reshape(n, R, C), kx, eta.reshape(n, 1, C), t_us, c_ff, droop,
                             timing)
        cr = native.RaceCtx((True, need[4], need[5]) + (False,) * 6)
        t = Readout.forward(cr, q, t0.reshape(n, 1, C), gain.reshape(n, 1, C), iref, lsb, tfs, quantize, clip, noise)
        ctx.fused = None
        ctx.parts = (cq, cc, cr, x.shape)
        return t.reshape(x.shape[:-1] + (C,))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gt):
        n, R, C, *_, clip, _noise, droop, crosstalk, _timing = ctx.cfg
        need = ctx.needs_input_grad
        if ctx.fused is not None:
            x, k_xt, eta, gain = ctx.saved_tensors
            buf, par, flags = ctx.fused
            g_x, g_li, g_k, g_eta, g_t0, g_gain = slots_native.crossing_backward(
                x, buf, k_xt if crosstalk else None, eta if droop else None, gain, gt.contiguous(), par, flags,
                clip == "hard", n, R, C, ctx.shapes)
        else:
            cq, cc, cr, x_shape = ctx.parts
            g_q, g_t0, g_gain = Readout.backward(cr, gt.reshape(n, -1, C))[:3]
            g_x, _, g_li, g_k, g_eta = ChargeFn.backward(cc, g_q)[:5]
            g_x = InputQuantize.backward(cq, g_x)[0].reshape(x_shape) if need[0] else None
            g_li, g_k, g_eta, g_t0, g_gain = (None if g is None else g.reshape(shape) for g, shape in
                                              zip((g_li, g_k, g_eta, g_t0, g_gain), ctx.shapes))
        grads = (g_li, g_k if crosstalk else None, g_eta if droop else None, g_t0, g_gain)
        return (g_x if need[0] else None, *(g if ok else None for g, ok in zip(grads, need[1:6])), None)


def race_paths(batch: int = 1024, rows: int = 16, cols: int = 16) -> tuple[float, float]:
    """Seconds per forward + backward of :class:`Crossing` with the C kernels and with
    the torch path, timed alternately: the default :class:`labkit.model.ArrayModel` (full
    physics: input and TDC quantization, droop, crosstalk at the edges, clip; float32)
    with chip-sized crosstalk, on ReLU-like inputs (many zeros)."""
    from labkit.backend import Geometry
    from labkit.model.array import ArrayModel  # (array imports this module)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, rows, generator=g) * (torch.rand(batch, rows, generator=g) > 0.4)
    m = ArrayModel(geometry=Geometry(rows=rows, cols=cols, pairs=tuple((2 * k, 2 * k + 1) for k in range(cols // 2))),
                   crosstalk_c=1e-15 * torch.rand(rows, cols, generator=g).numpy())
    log_i0, kxt, eta, t0, gain = (p.detach() for p in (m.log_i0, m.k_xt, m.eta, m.t0, m.gain))
    gt = torch.randn(batch, cols, generator=g)
    cfg = m._crossing_cfg()

    def step(on: bool):
        def run():
            ctx = native.RaceCtx((True,) * 6 + (False,))
            with slots_native.forcing(on):
                Crossing.forward(ctx, x, log_i0, kxt, eta, t0, gain, cfg)
                Crossing.backward(ctx, gt)
        return run

    return native.timed_race(step(True), step(False))


# ---------------------------------------------------------------- per-cell eta (RK4 per slot)

TAYLOR_ORDER = 4  # exp(-delta q) expanded to this order around the column mean


def per_cell_charge(x, pulsed, i0, kxt, ep, t_us, substeps: int) -> torch.Tensor:
    """Removed charge (n, B, C) in fC with a drain coefficient per cell (plain autograd).

    ``ep`` (n, R, C) is eta / C in 1/fC. Integrates ``w = expm1(e q) / e`` (e the column
    mean of ``ep``): ``dw/dt = sum_i a_i I0_ij exp(-(ep_ij - e_j) q)``, nearly constant
    per slot, with RK4 substeps; the per-cell deviation enters through a Taylor series
    whose moments are one matrix product per tile. Crosstalk steps at the slot ends.
    """
    n, B, R = x.shape
    C = i0.shape[-1]
    d = x * t_us
    with torch.no_grad():
        s, idx, _, a = slot_masks(d)
    s = torch.gather(d, -1, idx)  # differentiable sorted widths
    dt = torch.diff(s, dim=-1, prepend=torch.zeros_like(s[..., :1]))
    e = ep.mean(-2, keepdim=True)
    e = torch.where(e.abs() < 1e-12, torch.full_like(e, 1e-12), e)
    delta = ep - e
    mom = torch.cat([i0 * delta**m / math.factorial(m) for m in range(TAYLOR_ORDER + 1)], dim=-1)
    S = torch.bmm(a, mom).view(n, B, R, TAYLOR_ORDER + 1, C)
    if kxt is not None:
        with torch.no_grad():
            f = fallen_mask(d, pulsed, s)
        k_before = torch.bmm(f, kxt).view(n, B, R, C)
        k_tot = torch.bmm(pulsed.to(x.dtype), kxt)
        steps = torch.cat([k_before[:, :, 1:], k_tot.unsqueeze(2)], dim=2) - k_before

    inv_e = 1.0 / e

    def q_of(w):
        return torch.log1p(e * w) * inv_e

    def rate(w, Sk):  # Horner in -q over the Taylor moments
        q = q_of(w)
        acc = Sk[..., TAYLOR_ORDER, :]
        for m in range(TAYLOR_ORDER - 1, -1, -1):
            acc = torch.addcmul(Sk[..., m, :], q, acc, value=-1.0)
        return acc

    w = torch.zeros(n, B, C, dtype=x.dtype, device=x.device)
    for k in range(R):
        Sk = S[:, :, k]
        h = (dt[:, :, k] / substeps).unsqueeze(-1)
        h2, h6 = 0.5 * h, h / 6.0
        for _ in range(substeps):
            k1 = rate(w, Sk)
            k2 = rate(torch.addcmul(w, h2, k1), Sk)
            k3 = rate(torch.addcmul(w, h2, k2), Sk)
            k4 = rate(torch.addcmul(w, h, k3), Sk)
            w = torch.addcmul(w, h6, k1 + k4 + 2.0 * (k2 + k3))
        if kxt is not None:
            w = torch.expm1(e * (q_of(w) + steps[:, :, k])) * inv_e
    return q_of(w)


# ---------------------------------------------------------------- slow reference


@torch.no_grad()
def fine_step_charge(x, pulsed, i0, kxt, ep, t_us, steps: int) -> torch.Tensor:
    """Reference integration of the same equations (float64, exact per-cell exponentials):
    explicit RK4 on a uniform grid of ``steps`` intervals over T with every falling edge
    inserted, crosstalk steps applied at the edges. ``ep`` (n, R, C) eta / C in 1/fC
    (zeros: no droop), ``kxt`` (n, R, C) or zeros. Returns q (n, B, C) in fC."""
    x, i0, kxt, ep = (v.double() for v in (x, i0, kxt, ep))
    n, B, R = x.shape
    d = x * t_us
    grid = torch.linspace(0.0, t_us, steps + 1, dtype=torch.float64, device=x.device)
    times, _ = torch.sort(torch.cat([grid.expand(n, B, -1), d], dim=-1), dim=-1)
    q = torch.zeros(n, B, i0.shape[-1], dtype=torch.float64, device=x.device)

    def rate(q, on):
        cur = i0.unsqueeze(1) * torch.exp(-ep.unsqueeze(1) * q.unsqueeze(-2))  # (n, B, R, C)
        return (on.unsqueeze(-1) * cur).sum(-2)

    for j in range(times.shape[-1] - 1):
        t_a, t_b = times[..., j], times[..., j + 1]
        h = (t_b - t_a).unsqueeze(-1)
        on = (d > (0.5 * (t_a + t_b)).unsqueeze(-1)).double()
        k1 = rate(q, on)
        k2 = rate(q + 0.5 * h * k1, on)
        k3 = rate(q + 0.5 * h * k2, on)
        k4 = rate(q + h * k3, on)
        q = q + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        falls = pulsed & (d > t_a.unsqueeze(-1)) & (d <= t_b.unsqueeze(-1))
        q = q + torch.bmm(falls.double(), kxt)
    return q
