"""The second-order integration in C (``integrate.c``), built, verified and loaded by
labkit's one native builder (:mod:`labkit.model.native`).

Same equations as the numpy loop of :meth:`simulator.chip.VirtualChip.integrate`, one
sample at a time (no (B, 17, 4, 16) temporaries). :func:`integrate` returns None where
the library cannot be built (no compiler, ``LABKIT_NATIVE=0``): the caller runs numpy.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from labkit.model import native

_SRC = Path(__file__).with_name("integrate.c")
_LIB: list = []


_P, _I32, _F64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
SIGNATURES = {"integrate_batch": ([_I32, _I32, _I32, _P, _P, _P, _F64, _I32, _P, _P, _F64, _F64, _I32, _P, _P, _P,
                                   _P, _F64, _F64], _I32)}


def _lib():
    if not _LIB:
        _LIB.append(native.load(_SRC, fast_math=True, signatures=SIGNATURES))
    return _LIB[0]


def available() -> bool:
    return _lib() is not None


def _ptr(a):
    return None if a is None else a.ctypes.data


def integrate(v, d, frac, T, n_sub, m, eta, v0, ut, droop, leak, minv_t, cap, step_v, src_r, src_a):
    """Final bit-line voltages (V), ``(B, cols)``, or None without the library. ``v`` is
    the initial state (copied); arrays as in ``integrate.c``."""
    lib = _lib()
    if lib is None:
        return None
    B, R = d.shape
    C = v.shape[1]
    f64 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    v = np.array(v, dtype=np.float64, order="C")
    d, frac, m, eta, leak, minv_t, cap, step_v = map(f64, (d, frac, m, eta, leak, minv_t, cap, step_v))
    rc = lib.integrate_batch(B, R, C, _ptr(v), _ptr(d), _ptr(frac), float(T), int(n_sub), _ptr(m), _ptr(eta),
                             float(v0), float(ut), int(bool(droop)), _ptr(leak), _ptr(minv_t), _ptr(cap),
                             _ptr(step_v), float(src_r), float(src_a))
    if rc != 0:
        return None
    return v
