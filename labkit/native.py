"""Build and load the optional C kernels that ship as sources with labkit.

A kernel source (``labkit/model/slots.c``, ``labkit/analog_tiles.c``) is compiled with the
system C compiler (``cc -O3 -march=native``) at first use into a per-user cache
(``$LABKIT_CACHE`` or ``~/.cache/labkit``, under ``native/``), keyed by the source, the
flags and the CPU's feature flags, and loaded through ctypes. ``fast_math`` compiles with
``-ffast-math`` (vectorized ``logf``) but links without it, so the library does not switch
the whole process to flush-to-zero. No compiler, a failed build, a platform other than
Linux, or ``LABKIT_NATIVE=0``: :func:`load` returns None and the caller runs its torch
path (same equations).
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

__all__ = ["load", "cache_dir"]

_LOADED: dict[tuple[str, bool], ctypes.CDLL | None] = {}


def cache_dir() -> Path:
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


def _build(src: Path, fast_math: bool) -> ctypes.CDLL | None:
    if os.environ.get("LABKIT_NATIVE", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    flags = ["-O3", "-march=native", "-fPIC", "-fno-math-errno"] + (["-ffast-math"] if fast_math else [])
    text = src.read_bytes()
    key = hashlib.sha256(text + " ".join(flags).encode() + _cpu_id()).hexdigest()[:16]
    out = cache_dir() / f"{src.stem}-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            obj, so = Path(tmp) / "k.o", Path(tmp) / "k.so"
            for cmd in ([cc, *flags, "-c", str(src), "-o", str(obj)], [cc, "-shared", str(obj), "-o", str(so), "-lm"]):
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            os.replace(so, out)  # atomic: concurrent builders (torchrun ranks) agree
    return ctypes.CDLL(str(out))


def load(src: Path, fast_math: bool = False) -> ctypes.CDLL | None:
    """The compiled library of ``src`` (built once per process and cached on disk), or
    None where it cannot be built."""
    key = (str(src), fast_math)
    if key not in _LOADED:
        try:
            _LOADED[key] = _build(Path(src), fast_math)
        except (OSError, subprocess.SubprocessError):
            _LOADED[key] = None
    return _LOADED[key]

