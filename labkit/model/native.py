"""Build, verify and load the C kernels that ship as sources with labkit (one mechanism
for every kernel: ``slots.c`` of the array model, ``analog_tiles.c`` of the tile physics).

A kernel source is compiled with the system C compiler (``cc -O3 -march=native``) at
first use into a per-user cache (``$LABKIT_CACHE`` or ``~/.cache/labkit``, under
``native/``), keyed by the source, the flags and the CPU's feature flags, and loaded
through ctypes. ``fast_math`` compiles with ``-ffast-math`` (vectorized ``logf``) but
links without it, so the library does not switch the process to flush-to-zero.

Verified builds: every cache entry ``NAME-KEY.so`` has a record ``NAME-KEY.json`` with
the SHA-256 of the source, the flags, the CPU key and the SHA-256 of the library; an
entry is loaded only when its record matches the shipped source and flags and the
library's bytes match the record, otherwise it is rebuilt. The cache directory and the
one holding it must be owned by the user and not writable by group or others; if not,
the cache is not used (a warning names it) and the kernel is built in a private
temporary directory. A loaded
library that lacks a declared symbol is rebuilt (in a private directory) instead of
failing. No compiler, a failed build, a platform other than Linux, or
``LABKIT_NATIVE=0``: :func:`load` returns None and the caller runs its torch path
(same equations).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["load", "cache_dir", "entry_path", "trusted_dir", "build_record", "is_verified", "Signatures"]

#: ``{symbol: (argtypes, restype)}`` of a kernel library.
Signatures = Mapping[str, tuple[Sequence, object]]

_LOADED: dict[tuple[str, bool], ctypes.CDLL | None] = {}
_PRIVATE: list[Path] = []


def cache_dir() -> Path:
    """The kernel cache: ``$LABKIT_CACHE/native`` or ``~/.cache/labkit/native``."""
    root = os.environ.get("LABKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "labkit")
    return Path(root) / "native"


def trusted_dir(path: Path) -> bool:
    """True if ``path`` is a real directory owned by this user and not writable by group
    or others (so nobody else can plant or change a library in it)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _private_dir() -> Path:
    if not _PRIVATE:
        _PRIVATE.append(Path(tempfile.mkdtemp(prefix="labkit-native-")))  # mode 0700
    return _PRIVATE[0]


def _usable_cache() -> Path:
    """The cache directory if it can be trusted (created 0700 when missing), else a
    private temporary directory for this process."""
    d = cache_dir()
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return _private_dir()
    if trusted_dir(d) and trusted_dir(d.parent):  # nobody else can swap the directory either
        return d
    warnings.warn(f"labkit: kernel cache {d} is not owned by this user or is writable by others; "
                  "not using it (building in a private directory)", RuntimeWarning, stacklevel=3)
    return _private_dir()


def _cpu_id() -> bytes:
    """Machine and CPU feature flags (the build uses ``-march=native``)."""
    ident = os.uname().machine
    try:
        with open("/proc/cpuinfo") as f:
            ident += "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        pass
    return ident.encode()


def _flags(fast_math: bool) -> list[str]:
    return ["-O3", "-march=native", "-fPIC", "-fno-math-errno"] + (["-ffast-math"] if fast_math else [])


def build_record(src: Path, fast_math: bool) -> dict:
    """What a cache entry of ``src`` must have been built from."""
    return {"source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(), "flags": _flags(fast_math),
            "cpu_sha256": hashlib.sha256(_cpu_id()).hexdigest()}


def entry_path(src: Path, fast_math: bool = False, directory: Path | None = None) -> Path:
    """The cache entry (library path) of ``src`` built with these flags on this CPU."""
    rec = build_record(Path(src), fast_math)
    key = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]
    return (directory or cache_dir()) / f"{Path(src).stem}-{key}.so"


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_verified(out: Path, want: dict) -> bool:
    """True if ``out`` and its record exist, belong to this user, are not writable by
    others, and match ``want`` and the library's bytes."""
    meta = out.with_suffix(".json")
    try:
        for p in (out, meta):
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return False
        if meta.stat().st_size > 4096:
            return False
        rec = json.loads(meta.read_text())
        return (isinstance(rec, dict) and all(rec.get(k) == v for k, v in want.items())
                and rec.get("library_sha256") == _sha256_file(out))
    except (OSError, ValueError):
        return False


def _compile(src: Path, fast_math: bool, out: Path) -> None:
    """Build ``src`` into ``out`` and write its record (both atomically)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler")
    flags = _flags(fast_math)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        obj, so, meta = Path(tmp) / "k.o", Path(tmp) / "k.so", Path(tmp) / "k.json"
        for cmd in ([cc, *flags, "-c", str(src), "-o", str(obj)], [cc, "-shared", str(obj), "-o", str(so), "-lm"]):
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        os.chmod(so, 0o755)
        meta.write_text(json.dumps({**build_record(src, fast_math), "library_sha256": _sha256_file(so)}))
        os.replace(meta, out.with_suffix(".json"))
        os.replace(so, out)  # atomic: concurrent builders (torchrun ranks) agree


def _declare(lib: ctypes.CDLL, signatures: Signatures) -> bool:
    """Set argument and return types; False if a symbol is missing."""
    try:
        for name, (argtypes, restype) in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = list(argtypes), restype
    except AttributeError:
        return False
    return True


def _build(src: Path, fast_math: bool, signatures: Signatures) -> ctypes.CDLL | None:
    if os.environ.get("LABKIT_NATIVE", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    out = entry_path(src, fast_math, _usable_cache())
    if not is_verified(out, build_record(src, fast_math)):
        _compile(src, fast_math, out)
    lib = ctypes.CDLL(str(out))
    if _declare(lib, signatures):
        return lib
    # a verified entry without a declared symbol: rebuild where no earlier load shadows it
    fresh = Path(tempfile.mkdtemp(dir=_private_dir())) / out.name
    _compile(src, fast_math, fresh)
    lib = ctypes.CDLL(str(fresh))
    if not _declare(lib, signatures):
        raise OSError(f"{src.name} does not define the symbols {sorted(signatures)}")
    if out.parent != _private_dir():  # and mend the cache entry for the next process
        for suffix in (".json", ".so"):
            tmp = out.with_name(f".{out.name}.{os.getpid()}{suffix}")
            shutil.copyfile(fresh.with_suffix(suffix), tmp)
            os.replace(tmp, out.with_suffix(suffix))
    return lib


def load(src: Path, fast_math: bool = False, signatures: Signatures | None = None) -> ctypes.CDLL | None:
    """The compiled library of ``src`` with ``signatures`` declared (built once per
    process, cached on disk after verification), or None where it cannot be built."""
    key = (str(src), fast_math)
    if key not in _LOADED:
        try:
            _LOADED[key] = _build(Path(src), fast_math, signatures or {})
        except (OSError, subprocess.SubprocessError):
            _LOADED[key] = None
    return _LOADED[key]
