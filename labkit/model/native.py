"""Build, verify and load the C kernels that ship as sources with labkit (one mechanism
for every kernel: ``slots.c`` and ``crossing.c`` of the array model, one library,
``analog_tiles.c`` of the tile physics).

A kernel library is built from one C source or several (``src``: a path, or a sequence
of paths compiled into one library, named after the first) with the system C compiler
(``cc -O3 -march=native``) at first use into a per-user cache (``$LABKIT_CACHE`` or
``~/.cache/labkit``, under ``native/``), keyed by every file that goes into it (the
sources and, followed recursively, each local header they ``#include "..."`` from next
to them: :func:`build_inputs`), the flags and the CPU's feature flags, and loaded
through ctypes. ``fast_math`` compiles with ``-ffast-math`` (vectorized ``logf``) but
links without it, so the library does not switch the process to flush-to-zero.

Verified builds: every cache entry ``NAME-KEY.so`` has a record ``NAME-KEY.json`` with
the SHA-256 of each of its sources and local headers, the flags, the CPU key and the
SHA-256 of the library; an entry is loaded only when its record matches the shipped
files (a changed header rebuilds as a changed source does) and flags and the
library's bytes match the record, otherwise it is rebuilt. The cache directory and the
one holding it must be owned by the user and not writable by group or others; if not,
the cache is not used (a warning names it) and the kernel is built in a private
temporary directory. A loaded
library that lacks a declared symbol is rebuilt (in a private directory) instead of
failing. No compiler, a failed build, a platform other than Linux, or
``LABKIT_NATIVE=0``: :func:`load` returns None and the caller runs its torch path
(same equations).

Measured choice: a compiled kernel is not assumed to be faster than the torch path of
the same equations (on an AVX2 CPU a kernel tuned for AVX-512 was 2x slower, the Speed
issue). :func:`choose` runs a short timed race of both paths on a representative shape
at first use (about 0.1 s) and caches the verdict next to the library as
``NAME-KEY.choice.json``, bound to the library's SHA-256, the CPU key and the probe's
name, with a digest over the record; a record that does not match, or that is not owned
by the user, is not trusted and the race runs again. ``LABKIT_NATIVE=1`` forces the
kernels, ``LABKIT_NATIVE=0`` the torch path; unset, the measurement decides.

``LABKIT_MARCH`` (default ``native``) sets the ``-march`` target, e.g. ``x86-64-v3`` to
build and measure the AVX2 code of the kernels on an AVX-512 machine (a separate cache
entry: the flags are part of the key).
"""

from __future__ import annotations

import contextlib
import functools
import ctypes
import hashlib
import importlib
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

__all__ = ["load", "cache_dir", "entry_path", "trusted_dir", "build_record", "build_inputs", "sources",
           "is_verified", "Signatures", "Source", "choose", "choice_path", "timed_race", "forced", "RaceCtx", "Choice"]

#: ``{symbol: (argtypes, restype)}`` of a kernel library.
Signatures = Mapping[str, tuple[Sequence, object]]
#: the C source of a library, or its sources (compiled into one library named after the first)
Source = str | os.PathLike | Sequence[str | os.PathLike]

_LOADED: dict[tuple[str, bool], ctypes.CDLL | None] = {}
_PATHS: dict[tuple[str, bool], Path] = {}  # the library file each loaded kernel came from
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
    march = os.environ.get("LABKIT_MARCH", "native")
    if not march.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"LABKIT_MARCH={march!r}; expected a -march target such as native or x86-64-v3")
    return ["-O3", f"-march={march}", "-fPIC", "-fno-math-errno"] + (["-ffast-math"] if fast_math else [])


def sources(src: Source) -> tuple[Path, ...]:
    """The C sources of a library: ``src`` itself, or each path of a sequence."""
    if isinstance(src, (str, os.PathLike)):
        return (Path(src),)
    return tuple(Path(s) for s in src)


def _key(src: Source) -> str:
    """The name of a library's sources (memoized: it is looked up on every kernel call)."""
    try:
        return _keys(src)
    except TypeError:  # (an unhashable sequence of paths)
        return "+".join(str(p) for p in sources(src))


@functools.lru_cache(maxsize=256)
def _keys(src: Source) -> str:
    return "+".join(str(p) for p in sources(src))


_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.M)


def build_inputs(src: Source) -> list[Path]:
    """Every file that goes into the library of ``src``: its sources and each local header
    they include, followed recursively (``#include "name"`` found next to the including
    file, where the compiler looks first; one not there comes from the system, like
    ``<math.h>``, and is not followed)."""
    seen: dict[Path, None] = {}
    todo = list(sources(src))
    while todo:
        f = todo.pop(0)
        if f in seen:
            continue
        seen[f] = None
        for name in _INCLUDE.findall(f.read_bytes()):
            h = Path(os.path.normpath(f.parent / name.decode()))
            if h.is_file():
                todo.append(h)
    return list(seen)


def build_record(src: Source, fast_math: bool) -> dict:
    """What a cache entry of ``src`` must have been built from: the SHA-256 of every file
    that goes into it (:func:`build_inputs`, named relative to the first source's
    directory), the flags and the CPU."""
    files = build_inputs(src)
    base = files[0].parent
    return {"sources_sha256": {Path(os.path.relpath(f, base)).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                               for f in files},
            "flags": _flags(fast_math), "cpu_sha256": hashlib.sha256(_cpu_id()).hexdigest()}


def entry_path(src: Source, fast_math: bool = False, directory: Path | None = None) -> Path:
    """The cache entry (library path) of ``src`` built with these flags on this CPU."""
    rec = build_record(src, fast_math)
    key = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]
    return (directory or cache_dir()) / f"{sources(src)[0].stem}-{key}.so"


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


def _compile(src: Source, fast_math: bool, out: Path) -> None:
    """Build ``src`` (each source to an object, linked into one library) into ``out`` and
    write its record (both atomically). The record is taken before compiling: a file
    changed meanwhile leaves a record that no longer matches, so the entry is rebuilt."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler")
    flags = _flags(fast_math)
    record = build_record(src, fast_math)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        so, meta = Path(tmp) / "k.so", Path(tmp) / "k.json"
        objs = [str(Path(tmp) / f"k{i}.o") for i in range(len(sources(src)))]
        cmds = [[cc, *flags, "-c", str(s), "-o", o] for s, o in zip(sources(src), objs)]
        for cmd in (*cmds, [cc, "-shared", *objs, "-o", str(so), "-lm"]):
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        os.chmod(so, 0o755)
        meta.write_text(json.dumps({**record, "library_sha256": _sha256_file(so)}))
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


def _build(src: Source, fast_math: bool, signatures: Signatures) -> ctypes.CDLL | None:
    if os.environ.get("LABKIT_NATIVE") == "0" or not sys.platform.startswith("linux"):
        return None
    out = entry_path(src, fast_math, _usable_cache())
    if not is_verified(out, build_record(src, fast_math)):
        _compile(src, fast_math, out)
    lib = ctypes.CDLL(str(out))
    if _declare(lib, signatures):
        _PATHS[(_key(src), fast_math)] = out
        return lib
    # a verified entry without a declared symbol: rebuild where no earlier load shadows it
    fresh = Path(tempfile.mkdtemp(dir=_private_dir())) / out.name
    _compile(src, fast_math, fresh)
    lib = ctypes.CDLL(str(fresh))
    if not _declare(lib, signatures):
        raise OSError(f"{sources(src)[0].name} does not define the symbols {sorted(signatures)}")
    if out.parent != _private_dir():  # and mend the cache entry for the next process
        for suffix in (".json", ".so"):
            tmp = out.with_name(f".{out.name}.{os.getpid()}{suffix}")
            shutil.copyfile(fresh.with_suffix(suffix), tmp)
            os.replace(tmp, out.with_suffix(suffix))
    _PATHS[(_key(src), fast_math)] = fresh
    return lib


def load(src: Source, fast_math: bool = False, signatures: Signatures | None = None) -> ctypes.CDLL | None:
    """The compiled library of ``src`` (a source, or the sources of one library) with
    ``signatures`` declared (built once per process, cached on disk after verification),
    or None where it cannot be built."""
    key = (_key(src), fast_math)
    if key not in _LOADED:
        try:
            _LOADED[key] = _build(src, fast_math, signatures or {})
        except (OSError, subprocess.SubprocessError):
            _LOADED[key] = None
    return _LOADED[key]


# ----------------------------------------------------------------------------- measured choice

_CHOSEN: dict[tuple, bool] = {}


def forced() -> bool | None:
    """``LABKIT_NATIVE``: "1" True (kernels forced), "0" False (torch forced), else None."""
    return {"1": True, "0": False}.get(os.environ.get("LABKIT_NATIVE", ""))


def timed_race(a: Callable[[], object], b: Callable[[], object], rounds: int = 5, reps: int = 2) -> tuple[float, float]:
    """Best seconds per call of ``a`` and ``b``, timed alternately (after one warm call
    each), so that a busy machine slows both alike."""
    a(), b()
    best = [math.inf, math.inf]
    for _ in range(rounds):
        for i, f in enumerate((a, b)):
            t = time.perf_counter()
            for _ in range(reps):
                f()
            best[i] = min(best[i], (time.perf_counter() - t) / reps)
    return best[0], best[1]


class RaceCtx:
    """Stands in for autograd's ``ctx`` so that a race calls an autograd Function's
    ``forward`` and ``backward`` directly (no graph: first use may come inside one)."""

    def __init__(self, needs_input_grad: tuple[bool, ...]):
        self.needs_input_grad = needs_input_grad

    def save_for_backward(self, *tensors) -> None:
        self.saved_tensors = tensors


def choice_path(src: Source, fast_math: bool = False) -> Path | None:
    """The choice record of the loaded library of ``src`` (None if none is loaded)."""
    lib = _PATHS.get((_key(src), fast_math))
    return None if lib is None else lib.with_name(lib.stem + ".choice.json")


def _digest(rec: dict) -> str:
    body = {k: v for k, v in rec.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _read_choice(path: Path, want: dict) -> bool | None:
    """The cached verdict if the record is trusted (owned, not writable by others,
    matching ``want`` and its digest), else None."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        if st.st_size > 4096:
            return None
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(rec, dict) and all(rec.get(k) == v for k, v in want.items())
            and rec.get("record_sha256") == _digest(rec) and isinstance(rec.get("native"), bool)):
        return None
    return rec["native"]


def choose(src: Source, fast_math: bool, probe: str, race: Callable[[], tuple[float, float]]) -> bool:
    """True if the compiled kernel of ``src`` is to be used: forced by ``LABKIT_NATIVE``,
    else the cached verdict of ``race`` (``(native_s, torch_s)``, run once per library
    and CPU; the kernel wins ties). False if the kernel is not loaded."""
    key = (_key(src), fast_math, probe)
    if key in _CHOSEN:
        return _CHOSEN[key]
    if load(src, fast_math) is None:
        return False
    force = forced()
    if force is not None:
        return force
    path = choice_path(src, fast_math)
    lib = _PATHS[(_key(src), fast_math)]
    want = {"probe": probe, "library_sha256": _sha256_file(lib), "cpu_sha256": hashlib.sha256(_cpu_id()).hexdigest()}
    verdict = _read_choice(path, want)
    if verdict is None:
        t_native, t_torch = race()
        verdict = t_native <= t_torch
        rec = {**want, "native_s": t_native, "torch_s": t_torch, "native": verdict}
        rec["record_sha256"] = _digest(rec)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(rec))
            os.replace(tmp, path)  # atomic: concurrent processes agree on one record
        except OSError:
            pass
    _CHOSEN[key] = verdict
    return verdict


class Choice:
    """The measured choice of one kernel: ``choice()`` is True if the kernel is to run
    (inside :meth:`forcing`: the path under test; else :func:`choose`). ``load`` returns
    the library (None: torch path); ``race`` names ``"module:function"`` returning
    ``(native_s, torch_s)``, imported at first use (the torch path's module imports the
    kernel's binding, not the other way round)."""

    def __init__(self, src: Source, fast_math: bool, probe: str, load: Callable[[], object], race: str):
        self.src, self.fast_math, self.probe, self.load, self.race = src, fast_math, probe, load, race
        self._force: list[bool] = []

    def _run_race(self) -> tuple[float, float]:
        module, _, name = self.race.partition(":")
        return getattr(importlib.import_module(module), name)()

    def __call__(self) -> bool:
        if self._force:
            return self._force[-1]
        return self.load() is not None and choose(self.src, self.fast_math, self.probe, self._run_race)

    @contextlib.contextmanager
    def forcing(self, on: bool):
        """Run the kernel (True) or the torch path (False) inside the block."""
        self._force.append(on)
        try:
            yield
        finally:
            self._force.pop()
