"""The machine a benchmark figure was measured on: CPU model, vector extensions, caches.

Figures from different CPUs differ (the Speed issue: 3.9x on one CPU was 16.6x on
another), so every benchmark row names its machine.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx_vnni", "neon", "asimd", "sve")


def _cpuinfo() -> dict[str, str]:
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in info:
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def caches() -> dict[str, str]:
    """Cache sizes of CPU 0 by level and type, e.g. ``{"L1d": "48K", "L2": "2048K"}``."""
    out = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((d / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        out[f"L{level}{suffix}"] = size
    return out


@functools.lru_cache(maxsize=None)
def describe() -> str:
    """One line: model, vector extensions, caches, cores."""
    info = _cpuinfo()
    model = info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    vec = " ".join(f for f in VECTOR_FLAGS if f in flags) or "none listed"
    cache = " ".join(f"{k} {v}" for k, v in caches().items() if not k.endswith("i"))
    return f"{model}; {vec}; {cache}; {os.cpu_count()} cores"


@functools.lru_cache(maxsize=None)
def short() -> str:
    """A compact tag for a table column: widest vector extension and L2 size."""
    flags = set((_cpuinfo().get("flags") or "").split())
    widest = next((f for f in ("avx512f", "avx2", "avx", "sse4_2", "asimd") if f in flags), "scalar")
    return f"{widest} L2 {caches().get('L2', '?')}"
