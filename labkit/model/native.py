"""Optional compiled adaptive-slot kernel (``slots.c``), loaded through ctypes.

The C source ships with the package and is compiled with the system C compiler (``cc``,
``-O3``) at first use into a per-user cache (``$LABKIT_CACHE`` or
``~/.cache/labkit``), keyed by the source hash. It serves CPU float32/float64 tensors;
everything else, a missing compiler, or ``LABKIT_NATIVE=0`` falls back to the pure-torch
path in :mod:`labkit.model.kernels` (same equations, same results to rounding).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

_SRC = Path(__file__).with_name("slots.c")
_lib = None
_tried = False


def _cache_dir() -> Path:
    root = os.environ.get("LABKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "labkit")
    return Path(root) / "native"


def _cpu_id() -> bytes:
    """Machine and CPU feature flags (the build uses ``-march=native``)."""
    ident = os.uname().machine
    try:
        with open("/proc/cpuinfo") as f:
            ident += "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        pass
    return ident.encode()


def _build() -> ctypes.CDLL | None:
    if os.environ.get("LABKIT_NATIVE", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    src = _SRC.read_bytes()
    flags = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno"]
    key = hashlib.sha256(src + " ".join(flags).encode() + _cpu_id()).hexdigest()[:16]
    out = _cache_dir() / f"slots-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            subprocess.run([cc, *flags, "-o", tmp, str(_SRC)], check=True, capture_output=True, timeout=120)
            os.replace(tmp, out)  # atomic: concurrent builders agree
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(out))
    i64, p = ctypes.c_int64, ctypes.c_void_p
    for suf in ("f32", "f64"):
        getattr(lib, f"slots_fwd_{suf}").argtypes = [i64] * 4 + [p] * 5
        getattr(lib, f"slots_bwd_{suf}").argtypes = [i64] * 4 + [p] * 8
        getattr(lib, f"slots_fwd_{suf}").restype = ctypes.c_int
        getattr(lib, f"slots_bwd_{suf}").restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot be built (then the torch path runs)."""
    global _lib, _tried
    if not _tried:
        _tried = True
        try:
            _lib = _build()
        except (OSError, subprocess.SubprocessError, AttributeError):
            _lib = None
    return _lib


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
    return library() is not None


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
