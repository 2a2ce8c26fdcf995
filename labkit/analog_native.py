"""Optional fused readout kernel of the analog layers, in C through ctypes.

:func:`labkit.analog._readout` does, per column of every row tile: droop, crosstalk,
readout noise, TDC floor and clip, the charge read back and the signed row-tile sums.
In torch that is about fifteen passes over a tensor as large as all the tiles' columns
for the whole batch (several times the network's activations); this kernel does it in
one pass, vectorized (same equations, float32). The tensors have the layout
``(A, row tiles, columns, samples)`` so that each column's samples are contiguous.

Built at first use with the system C compiler (``cc -O3 -march=native -ffast-math``,
linked without fast-math start-up code, so the process's floating-point mode is untouched)
and cached under ``$LABKIT_CACHE`` or ``~/.cache/labkit``; without a compiler, or with
``LABKIT_NATIVE=0``, the torch path runs (tests/test_analog.py checks they agree).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["readout", "available"]

SOURCE = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 1024

/* One column of one row tile over n contiguous samples: adds the signed charge read
   back (fC) to y and stores dq/dZ0 in m. No branch in the loop, so it vectorizes
   (logf through the vector math library). */
#define COLUMN(NAME, DROOP, QUANT)                                                                     \
static void NAME(long n, const float *restrict z, const float *restrict kt, const float *restrict sx, \
                 const float *restrict noise, float noise_c, float ee, float g, float t0, float kbe,  \
                 float ea, float cmax, float sg, float *restrict y, float *restrict m)               \
{                                                                                                      \
    float inv_e = 1.0f / ee, inv_g = 1.0f / g, aee = ea * ee;                                          \
    for (long j = 0; j < n; j++) {                                                                     \
        float k = kt[j], q;                                                                            \
        if (DROOP) {                                                                                   \
            float m1 = 1.0f - aee * k - kbe * sx[j];                                                   \
            float w = 1.0f + ee * z[j] * m1;                                                           \
            m[j] = m1 / w;                                                                             \
            q = logf(w) * inv_e + k;                                                                   \
        } else {                                                                                       \
            q = z[j] + k;                                                                              \
        }                                                                                              \
        float cnt = t0 - g * q + noise_c * noise[j];                                                   \
        if (QUANT) cnt = floorf(cnt);                                                                  \
        cnt = fminf(fmaxf(cnt, 0.0f), cmax);                                                           \
        y[j] += sg * (t0 - cnt) * inv_g;                                                               \
    }                                                                                                  \
}
COLUMN(col_dq, 1, 1)
COLUMN(col_d, 1, 0)
COLUMN(col_q, 0, 1)
COLUMN(col_, 0, 0)

/* z, kt, noise, m: (A, RT, N2, S) contiguous; sx: (A, RT, 1, S) or NULL; e, t0c, gc,
   kb: (RT, N2); y: (A, N2 / 2, S) = sum over row tiles of plus minus minus. Absent
   inputs read zeros. */
int readout_f32(long A, long RT, long N2, long S, const float *z, const float *kt, const float *sx,
                const float *noise, float noise_c, const float *e, const float *t0c, const float *gc,
                const float *kb, float ea, float eb, float cmax, int droop, int quant, float *y, float *m)
{
    long half = N2 / 2;
    long nb = S < BLOCK ? S : BLOCK;
    float *zeros = calloc(nb, sizeof(float)), *scratch = malloc(sizeof(float) * nb);
    if (!zeros || !scratch) { free(zeros); free(scratch); return 1; }
    memset(y, 0, sizeof(float) * A * half * S);
    /* blocks of samples, so the block's outputs y stay in cache across the row tiles */
    for (long a = 0; a < A; a++)
    for (long s0 = 0; s0 < S; s0 += BLOCK)
    for (long r = 0; r < RT; r++)
    for (long c = 0; c < N2; c++) {
        long n = S - s0 < BLOCK ? S - s0 : BLOCK;
        long off = ((a * RT + r) * N2 + c) * S + s0, pc = r * N2 + c;
        float kbe = sx ? eb * e[pc] * kb[pc] : 0.0f;
        const float *ktp = kt ? kt + off : zeros, *sxp = sx ? sx + (a * RT + r) * S + s0 : zeros;
        const float *np = noise ? noise + off : zeros;
        float *mp = m ? m + off : scratch, *yp = y + (a * half + (c < half ? c : c - half)) * S + s0;
        float sg = c < half ? 1.0f : -1.0f;
        if (droop && quant) col_dq(n, z + off, ktp, sxp, np, noise_c, e[pc], gc[pc], t0c[pc], kbe, ea, cmax, sg, yp, mp);
        else if (droop) col_d(n, z + off, ktp, sxp, np, noise_c, e[pc], gc[pc], t0c[pc], kbe, ea, cmax, sg, yp, mp);
        else if (quant) col_q(n, z + off, ktp, sxp, np, noise_c, e[pc], gc[pc], t0c[pc], kbe, ea, cmax, sg, yp, mp);
        else col_(n, z + off, ktp, sxp, np, noise_c, e[pc], gc[pc], t0c[pc], kbe, ea, cmax, sg, yp, mp);
    }
    free(zeros);
    free(scratch);
    return 0;
}
"""

_LIB: list = []


def _build():
    if os.environ.get("LABKIT_NATIVE", "1") == "0":
        return None
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    key = hashlib.sha256((SOURCE + "link2" + platform.machine() + platform.processor()).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("LABKIT_CACHE", Path.home() / ".cache" / "labkit"))
    out = cache / f"analog_readout-{key}.so"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = Path(tmp) / "readout.c"
            src.write_text(SOURCE)
            obj, so = Path(tmp) / "readout.o", Path(tmp) / "readout.so"
            # -ffast-math for the compile only (vector logf); linking without it keeps
            # crtfastmath (flush-to-zero for the whole process) out of the library
            steps = ([cc, "-O3", "-march=native", "-ffast-math", "-fPIC", "-c", str(src), "-o", str(obj)],
                     [cc, "-shared", str(obj), "-o", str(so), "-lm"])
            for cmd in steps:
                if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
                    return None
            os.replace(so, out)  # atomic: concurrent builders (torchrun ranks) are fine
    lib = ctypes.CDLL(str(out))
    p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
    lib.readout_f32.argtypes = [i64, i64, i64, i64, p, p, p, p, f32, p, p, p, p, f32, f32, f32, i32, i32, p, p]
    lib.readout_f32.restype = ctypes.c_int
    return lib


def _lib():
    if not _LIB:
        try:
            _LIB.append(_build())
        except (OSError, subprocess.SubprocessError):
            _LIB.append(None)
    return _LIB[0]


def available() -> bool:
    """True when the compiled kernel can be used on this machine."""
    return _lib() is not None


def _ptr(t) -> int | None:
    return None if t is None else t.data_ptr()


def _f32(t: torch.Tensor | None, shape) -> torch.Tensor | None:
    if t is None:
        return None
    t = t.reshape(shape) if t.numel() == torch.Size(shape).numel() else None
    return None if t is None else t.to(torch.float32).contiguous()


def readout(z, kt, ku, e, t0c, gc, noise, noise_counts, cmax, droop, quantize, col, edge_a, edge_b):
    """``(y, m)`` from the fused kernel, or None when it does not apply (no library, not
    float32 on the CPU, columns not on dim 2): the caller then runs the torch path."""
    lib = _lib()
    if lib is None or col != 2 or z.dtype != torch.float32 or z.device.type != "cpu" or z.dim() != 4:
        return None
    A, RT, N2, S = z.shape
    for t in (z, kt, noise):
        if t is not None and (t.shape != z.shape or not t.is_contiguous()):
            return None
    params = [_f32(v, (RT, N2)) for v in (e, t0c, gc)]
    sx = kb = None
    if ku is not None:
        sx, kb = _f32(ku[0], (A, RT, 1, S)), _f32(ku[1], (RT, N2))
    if any(p is None for p in params) or (ku is not None and (sx is None or kb is None)):
        return None
    y = torch.empty((A, N2 // 2, S), dtype=torch.float32)
    m = torch.empty_like(z) if droop else None
    err = lib.readout_f32(A, RT, N2, S, _ptr(z), _ptr(kt), _ptr(sx), _ptr(noise), float(noise_counts),
                          *(p.data_ptr() for p in params), _ptr(kb), float(edge_a), float(edge_b), float(cmax),
                          int(bool(droop)), int(bool(quantize)), _ptr(y), _ptr(m))
    return None if err else (y, m)
