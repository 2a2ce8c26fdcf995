"""Optional compiled kernels of the array model, loaded through ctypes: the
adaptive-slot walk of :class:`labkit.model.kernels.ChargeFn` (``slots.c``:
:func:`slots_forward`, :func:`slots_backward`) and the fused first-order crossing of
:class:`labkit.model.kernels.Crossing` (``crossing.c``: :func:`crossing_forward`,
:func:`crossing_backward`: one C call each way, with buffers laid out in one allocation).
Both sources share the slot walk of ``slot_walk.h`` and build into one library.

The C sources ship with the package and are built, verified and loaded at first use by
:mod:`labkit.model.native` (system C compiler, per-user cache). It serves CPU float32/float64 tensors;
everything else, a missing compiler, or ``LABKIT_NATIVE=0`` falls back to the pure-torch
path in :mod:`labkit.model.kernels` (same equations, same results to rounding). Where
both can run, a timed race at first use picks the faster (:func:`chosen`; the race times
the fused crossing of the default model, forward and backward).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from labkit.model import native

#: the sources of the one library (named after slots.c); native.build_record also covers
#: the local headers they include (slot_walk.h, crossing_math.h)
SOURCE = (Path(__file__).with_name("slots.c"), Path(__file__).with_name("crossing.c"))
_I, _P = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {
    **{name: ([_I] * 4 + [_P] * n_ptr, ctypes.c_int)
       for suf in ("f32", "f64") for name, n_ptr in ((f"slots_fwd_{suf}", 5), (f"slots_bwd_{suf}", 8))},
    # the fused crossing: (n, B, R, C, inputs..., par, flags, outputs...)
    **{f"cross_fwd_{suf}": ([_I] * 4 + [_P] * 8 + [_I] + [_P] * 8, ctypes.c_int) for suf in ("f32", "f64")},
    **{f"cross_bwd_{suf}": ([_I] * 4 + [_P] * 13 + [_I] + [_P] * 9, ctypes.c_int) for suf in ("f32", "f64")},
}


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot be built (then the torch path runs)."""
    return native.load(SOURCE, signatures=SIGNATURES)


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def usable(d: torch.Tensor, i0: torch.Tensor, *others: torch.Tensor) -> bool:
    """True if the compiled kernel can serve these tensors: CPU, one dtype (float32 or
    float64), rows and columns multiples of the vector lanes (8 float / 4 double),
    at most 1024 columns."""
    dt = d.dtype
    if dt not in _SUFFIX or not d.is_cpu:  # (is_cpu: no device object per call)
        return False
    for t in (i0, *others):
        if t.dtype != dt or not t.is_cpu:
            return False
    lanes = 32 // d.element_size()
    R, C = i0.shape[-2:]
    if R % lanes or C % lanes or C > 1024 or d.shape[-1] != R:
        return False
    return library() is not None and chosen()


PROBE = "slots-v2"  # names the race (v2: the fused crossing); a new probe discards the cached verdicts
#: True if the kernels are to run: forced (``LABKIT_NATIVE``), or faster than the torch path
#: in the race at first use (``kernels.race_paths``: the fused crossing of one array,
#: forward and backward); ``chosen.forcing(on)`` while racing.
chosen = native.Choice(SOURCE, False, PROBE, lambda: library(), "labkit.model.kernels:race_paths")
forcing = chosen.forcing


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def slots_forward(d, i0, rho):
    """``Z`` (n, B, C) and the sort order ``idx`` (n, B, R) int64; d (n, B, R) us,
    i0 and rho = exp(-e k) (n, R, C)."""
    d, i0, rho = d.contiguous(), i0.contiguous(), rho.contiguous()
    n, B, R = d.shape
    C = i0.shape[-1]
    z = torch.empty(n, B, C, dtype=d.dtype)
    idx = torch.empty(n, B, R, dtype=torch.int64)
    rc = getattr(library(), f"slots_fwd_{_SUFFIX[d.dtype]}")(n, B, R, C, _ptr(d), _ptr(i0), _ptr(rho), _ptr(z), _ptr(idx))
    if rc:
        raise RuntimeError(f"slots_fwd failed (code {rc})")
    return z, idx


def slots_backward(d, i0, rho, idx, gz):
    """``(g_d, g_i0, P)``: g_d (n, B, R) = dZ/dd . gz; g_i0 (n, R, C) = dZ/dI0 summed over
    the batch; P (n, R, C) with dZ/dk = -e P and dZ/de = -sum_i k P (see slots.c)."""
    d, i0, rho, idx, gz = (t.contiguous() for t in (d, i0, rho, idx, gz))
    n, B, R = d.shape
    C = i0.shape[-1]
    gd = torch.empty(n, B, R, dtype=d.dtype)
    gi0 = torch.zeros(n, R, C, dtype=d.dtype)
    P = torch.zeros(n, R, C, dtype=d.dtype)
    rc = getattr(library(), f"slots_bwd_{_SUFFIX[d.dtype]}")(
        n, B, R, C, _ptr(d), _ptr(i0), _ptr(rho), _ptr(idx), _ptr(gz), _ptr(gd), _ptr(gi0), _ptr(P))
    if rc:
        raise RuntimeError(f"slots_bwd failed (code {rc})")
    return gd, gi0, P


#: flags of cross_fwd / cross_bwd (crossing.c)
SLOTS, FLOOR, CLIP = 1, 2, 4

_FUSED: dict[torch.dtype, tuple] = {}  # dtype -> (cross_fwd, cross_bwd) of the loaded library


def _fused(dtype):
    fns = _FUSED.get(dtype)
    if fns is None:
        lib = library()
        fns = _FUSED[dtype] = (getattr(lib, f"cross_fwd_{_SUFFIX[dtype]}"), getattr(lib, f"cross_bwd_{_SUFFIX[dtype]}"))
    return fns


_LAYOUTS: dict[tuple, tuple] = {}


def _layout(n, B, R, C, es):
    """Byte offsets in the forward's buffer (d, i0, rho, z, q, idx, keep) and in the
    backward's scratch (gz, P, gq), each array 64-byte aligned, and the two sizes."""
    key = (n, B, R, C, es)
    lay = _LAYOUTS.get(key)
    if lay is None:
        def offsets(sizes):
            offs, at = [], 0
            for nb in sizes:
                offs.append(at)
                at += (nb + 63) // 64 * 64
            return offs, at
        fwd = offsets((n * B * R * es, n * R * C * es, n * R * C * es, n * B * C * es, n * B * C * es, n * B * R * 8,
                       n * B * C))
        bwd = offsets((n * B * C * es, n * R * C * es, n * B * C * es))
        lay = _LAYOUTS[key] = (fwd, bwd)
        if len(_LAYOUTS) > 64:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
    return lay


def crossing_forward(x, log_i0, k, eta, t0, gain, normals, par, flags, hard, n, R, C):
    """The fused crossing (crossing.c ``cross_fwd``): x raw inputs with the memory layout
    (n, B, R), contiguous; log_i0 and k (n, R, C) (k None: no crosstalk), eta, t0, gain
    (n, C) (eta None: no droop), in memory, contiguous; normals (n, B, C) or None;
    ``par`` (:func:`crossing_par`); ``hard``: keep the unclipped mask. Returns t (us; the
    shape of x with C last) and the buffer the backward reads."""
    B = x.numel() // (n * R)
    (o_d, o_i0, o_rho, o_z, o_q, o_idx, o_keep), size = _layout(n, B, R, C, x.element_size())[0]
    buf = torch.empty(size, dtype=torch.uint8)
    t = torch.empty(x.shape[:-1] + (C,), dtype=x.dtype)
    base = buf.data_ptr()
    rc = _fused(x.dtype)[0](
        n, B, R, C, x.data_ptr(), log_i0.data_ptr(), None if k is None else k.data_ptr(),
        None if eta is None else eta.data_ptr(), t0.data_ptr(), gain.data_ptr(),
        None if normals is None else normals.data_ptr(), par, flags, base + o_d, base + o_i0, base + o_rho,
        base + o_z, base + o_q, t.data_ptr(), base + o_idx, base + o_keep if hard else None)
    if rc:
        raise RuntimeError(f"cross_fwd failed (code {rc})")
    return t, buf


def crossing_backward(x, buf, k, eta, gain, gt, par, flags, hard, n, R, C, shapes):
    """Gradients of :func:`crossing_forward` (crossing.c ``cross_bwd``) for ``gt`` (the
    shape of t, contiguous): g_x (the shape of x), and g_log_i0, g_k (None without k),
    g_eta (None without droop), g_t0, g_gain in ``shapes``, the parameters' shapes
    ((n, R, C) and (n, C) in memory)."""
    B = x.numel() // (n * R)
    fwd, bwd = _layout(n, B, R, C, x.element_size())
    (o_d, o_i0, o_rho, o_z, o_q, o_idx, o_keep), _ = fwd
    (o_gz, o_P, o_gq), size = bwd
    scratch = torch.empty(size, dtype=torch.uint8)
    dt = x.dtype
    gx = torch.empty(x.shape, dtype=dt)
    s_li, s_k, s_eta, s_t0, s_gain = shapes
    gli = torch.empty(s_li, dtype=dt)
    gk = torch.empty(s_k, dtype=dt) if k is not None else None
    geta = torch.empty(s_eta, dtype=dt) if eta is not None else None
    gt0, ggain = torch.empty(s_t0, dtype=dt), torch.empty(s_gain, dtype=dt)
    base, sb = buf.data_ptr(), scratch.data_ptr()
    rc = _fused(dt)[1](
        n, B, R, C, x.data_ptr(), base + o_d, base + o_i0, base + o_rho, None if k is None else k.data_ptr(),
        None if eta is None else eta.data_ptr(), gain.data_ptr(), base + o_z, base + o_q, base + o_idx,
        base + o_keep if hard else None, gt.data_ptr(), par, flags, sb + o_gz, gx.data_ptr(), gli.data_ptr(),
        None if gk is None else gk.data_ptr(), None if geta is None else geta.data_ptr(), gt0.data_ptr(),
        ggain.data_ptr(), sb + o_P, sb + o_gq)
    if rc:
        raise RuntimeError(f"cross_bwd failed (code {rc})")
    return gx, gli, gk, geta, gt0, ggain


def crossing_par(levels, t_us, c_ff, iref, lsb, tfs, noise):
    """The parameter block of the fused crossing (cached: the operating point is fixed)."""
    key = (levels, t_us, c_ff, iref, lsb, tfs, noise)
    par = _PARS.get(key)
    if par is None:
        pow2 = 1.0 if levels and levels & (levels - 1) == 0 else 0.0
        par = _PARS[key] = (ctypes.c_double * 8)(float(levels), pow2, t_us, c_ff, iref, lsb, tfs, noise)
        if len(_PARS) > 64:
            _PARS.pop(next(iter(_PARS)))
    return par


_PARS: dict[tuple, ctypes.Array] = {}
