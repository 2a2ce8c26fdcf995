"""Optional compiled adaptive-slot kernel (``slots.c``), loaded through ctypes.

The C source ships with the package and is built, verified and loaded at first use by
:mod:`labkit.model.native` (system C compiler, per-user cache). It serves CPU float32/float64 tensors;
everything else, a missing compiler, or ``LABKIT_NATIVE=0`` falls back to the pure-torch
path in :mod:`labkit.model.kernels` (same equations, same results to rounding). Where
both can run, a timed race at first use picks the faster (:func:`chosen`).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from labkit.model import native

SOURCE = Path(__file__).with_name("slots.c")
SIGNATURES = {name: ([ctypes.c_int64] * 4 + [ctypes.c_void_p] * n_ptr, ctypes.c_int)
              for suf in ("f32", "f64") for name, n_ptr in ((f"slots_fwd_{suf}", 5), (f"slots_bwd_{suf}", 8))}


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot be built (then the torch path runs)."""
    return native.load(SOURCE, signatures=SIGNATURES)


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def usable(d: torch.Tensor, i0: torch.Tensor, *others: torch.Tensor) -> bool:
    """True if the compiled kernel can serve these tensors: CPU, one dtype (float32 or
    float64), rows and columns multiples of the vector lanes (8 float / 4 double),
    at most 1024 columns."""
    if d.device.type != "cpu" or d.dtype not in _SUFFIX:
        return False
    if any(t.device.type != "cpu" or t.dtype != d.dtype for t in (i0, *others)):
        return False
    lanes = 32 // d.element_size()
    R, C = i0.shape[-2:]
    if R % lanes or C % lanes or C > 1024 or d.shape[-1] != R:
        return False
    return library() is not None and chosen()


PROBE = "slots-v1"  # names the race: a new probe discards the cached verdicts
#: True if the kernel is to run: forced (``LABKIT_NATIVE``), or faster than the torch path
#: in the race at first use (``kernels.race_paths``); ``chosen.forcing(on)`` while racing.
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
