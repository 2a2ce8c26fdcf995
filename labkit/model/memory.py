"""Allocator setting for fast CPU training (process-wide; :func:`labkit.train.training.train` applies it).

The model's forward and backward allocate a few MB-sized intermediates per call. With
glibc's default dynamic thresholds those are handed back to the OS after every backward
and page-faulted in again on the next call, which can double the CPU time of a
training step. :func:`keep_freed_memory` tells glibc to keep freed memory in the heap
(the process's memory then stays at its high-water mark). CUDA is unaffected (its
caching allocator already reuses memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(trim_threshold_b: int = 1 << 30, mmap_threshold_b: int = 32 << 20) -> bool:
    """Raise glibc's trim and mmap thresholds (bytes); True if applied (Linux glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok_trim = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_b)) == 1
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_b)) == 1
    return ok_trim and ok_mmap
