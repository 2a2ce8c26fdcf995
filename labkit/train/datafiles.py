"""Reading data set files without trusting them: IDX arrays (MNIST) and CIFAR-10 python
batch files, with every size bounded before it is allocated.

- :func:`read_idx`: an IDX file (plain or gzip), at most :data:`MAX_IDX_BYTES` after a
  bounded decompression; its declared dimensions must match its data exactly.
- :func:`load_cifar_batch`: one CIFAR batch of at most :data:`MAX_CIFAR_BATCH_BYTES`,
  unpickled by an allow-list unpickler that can build dicts, lists, bytes, numbers and
  plain numeric numpy arrays and nothing else; objects a pickle references many times
  are converted once (a small file cannot expand). :func:`cifar_arrays` checks a batch.

A file that is not what it should be raises :class:`DatasetFormatError` (one line
naming the file); a missing data set :class:`DatasetNotFoundError`.
"""

from __future__ import annotations

import io
import pickle
import re
import zlib
from pathlib import Path

import numpy as np

from labkit.errors import UsageError
from labkit.files import FileFormatError, read_bytes

__all__ = ["DatasetNotFoundError", "DatasetFormatError", "read_idx", "load_cifar_batch", "cifar_arrays",
           "MAX_IDX_BYTES", "MAX_CIFAR_BATCH_BYTES"]


class DatasetNotFoundError(FileNotFoundError, UsageError):
    """A data set's files are not where they were looked for (the message says where)."""


class DatasetFormatError(FileFormatError):
    """A data file exists but is not in the expected format (or is unsafe to load)."""



_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


MAX_IDX_BYTES = 256 * 2**20  # one IDX file, after decompression (MNIST's largest: 47 MB)
MAX_CIFAR_BATCH_BYTES = 64 * 2**20  # one CIFAR batch file (the real ones: 31 MB)


def _gunzip_bounded(path: Path, raw: bytes, limit: int) -> bytes:
    """gzip data decompressed, refused once it would exceed ``limit`` bytes."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise DatasetFormatError(f"{path}: corrupt gzip data ({exc})") from None
    if len(out) > limit:
        raise DatasetFormatError(f"{path}: decompresses to over {limit} bytes; expected at most {limit}")
    if not d.eof:
        raise DatasetFormatError(f"{path}: corrupt gzip data (truncated)")
    return out


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (plain or gzip-compressed, told apart by content).

    IDX: two zero bytes, a type code (0x08 uint8 ... 0x0E float64), the number of
    dimensions, one big-endian uint32 per dimension, then the data, big-endian, C order.
    """
    path = Path(path)
    try:
        raw = read_bytes(path, "IDX file", MAX_IDX_BYTES)
    except FileFormatError as exc:
        raise DatasetFormatError(str(exc)) from None
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip_bounded(path, raw, MAX_IDX_BYTES)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DatasetFormatError(
            f"{path}: not an IDX file (header {raw[:4].hex() or 'empty'}; expected "
            "00 00, a type code 08/09/0b/0c/0d/0e and a dimension count)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DatasetFormatError(f"{path}: IDX header truncated")
    if ndim > 4:
        raise DatasetFormatError(f"{path}: IDX header declares {ndim} dimensions; expected at most 4")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - head != expected:
        raise DatasetFormatError(
            f"{path}: IDX dims {dims} need {expected} data bytes, file has {len(raw) - head}")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))



class _NdarrayToken:
    """Stands in for ``numpy.ndarray`` in a pickle: only :func:`_reconstruct` accepts it."""

    __slots__ = ()

    def __setstate__(self, state):
        raise DatasetFormatError("pickled state for numpy.ndarray itself refused")


class _Guarded:
    """An allowed global: calls ``fn`` and cannot be altered by a pickle's BUILD opcode."""

    __slots__ = ("_fn",)

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args):
        return self._fn(*args)

    def __setstate__(self, state):
        raise DatasetFormatError("pickled state for an allowed function refused")


_NDARRAY = _NdarrayToken()


class _DtypeStub:
    """A numeric dtype from a pickle, checked before numpy ever sees its state."""

    def __init__(self, spec, align=False, copy=False):
        if isinstance(spec, bytes):
            spec = spec.decode("ascii", "replace")
        if not isinstance(spec, str) or not re.fullmatch(r"[biuf]\d{1,2}|b1|\?", spec):
            raise DatasetFormatError(f"pickled dtype {spec!r} refused: only plain numbers allowed")
        self.dtype = np.dtype(spec)
        self.endian = "|"

    def __setstate__(self, state):
        # numpy's dtype state: (version, endian, subarray, names, fields, elsize, align, flags)
        if not isinstance(state, tuple) or len(state) < 2:
            raise DatasetFormatError("pickled dtype state refused: not numpy's tuple")
        endian = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if endian not in ("<", ">", "|", "=") or any(s is not None for s in state[2:5]):
            raise DatasetFormatError("pickled dtype state refused: not a plain numeric dtype")
        self.endian = endian

    def resolve(self) -> np.dtype:
        return self.dtype.newbyteorder(self.endian) if self.endian in "<>" else self.dtype


class _ArrayStub:
    """An ndarray from a pickle, built by :func:`np.frombuffer` from checked state only."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        # numpy's ndarray state: ([version,] shape, dtype, is_fortran, raw bytes)
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise DatasetFormatError("pickled array state refused: not numpy's tuple")
        shape, dtype, fortran, raw = state[-4:]
        if (not isinstance(dtype, _DtypeStub) or not isinstance(raw, (bytes, bytearray))
                or not isinstance(shape, tuple)
                or not all(isinstance(d, int) and d >= 0 for d in shape)):
            raise DatasetFormatError("pickled array refused: not a plain numeric array")
        dt = dtype.resolve()
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise DatasetFormatError(f"pickled array of shape {shape} has {len(raw)} bytes")
        arr = np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order="F" if fortran else "C")
        self.array = arr.astype(dt.newbyteorder("="))


def _reconstruct(subtype, shape, typecode):
    """Safe stand-in for ``numpy.core.multiarray._reconstruct``: plain ndarrays only."""
    if subtype is not _NDARRAY:
        raise DatasetFormatError("pickled array refused: not a plain numpy.ndarray")
    return _ArrayStub()


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """Safe stand-in for ``_codecs.encode``, which Python 3 uses for bytes at protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise DatasetFormatError(f"pickled _codecs.encode({encoding!r}) refused")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _Guarded(_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Guarded(_reconstruct),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Guarded(_DtypeStub),
    ("_codecs", "encode"): _Guarded(_latin1_encode),
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are the stand-ins of ``_ALLOWED_GLOBALS``.

    Why this is safe: a pickle can only run code through the callables it names as
    globals (GLOBAL/STACK_GLOBAL/INST/OBJ/EXT opcodes, all resolved by ``find_class``;
    REDUCE/NEWOBJ/BUILD only call what is already on the stack). Here every global
    resolves to one of four small stand-ins of this module that check their arguments
    and build bytes or plain numeric arrays (numpy itself only ever sees a checked
    numeric dtype and a bytes buffer, in ``np.frombuffer``); anything else
    (``os.system``, ``builtins.eval``, numpy's object arrays, ...) is refused before
    it is looked up. The stand-ins refuse BUILD, so a pickle cannot alter them for the
    next load. Persistent ids are refused by the base class.
    """

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetFormatError(
                f"refused to load {module}.{name} from a pickle: CIFAR batch files hold "
                "only dicts, lists, bytes, numbers and numeric numpy arrays") from None


def _materialize(obj, depth: int = 0, memo: dict | None = None):
    """Replace the stubs left by :class:`_BatchUnpickler` with the arrays they built.

    A pickle can reference one object many times (its memo); each is converted once and
    shared, so a small file cannot expand into a huge tree here."""
    memo = {} if memo is None else memo
    if depth > 20:
        raise DatasetFormatError("pickled data nested too deeply")
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise DatasetFormatError("pickled array has no data")
        return obj.array
    if isinstance(obj, (_DtypeStub, _NdarrayToken)):
        raise DatasetFormatError("pickled dtype outside an array refused")
    if isinstance(obj, dict):
        out = {}
        memo[id(obj)] = out
        for k, v in obj.items():
            if not isinstance(k, (str, bytes, int)):
                raise DatasetFormatError(f"pickled dict key of type {type(k).__name__} refused")
            out[k.decode("latin1") if isinstance(k, bytes) else k] = _materialize(v, depth + 1, memo)
        return out
    if isinstance(obj, (list, tuple)):
        out = type(obj)(_materialize(v, depth + 1, memo) for v in obj)
        memo[id(obj)] = out
        return out
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise DatasetFormatError(f"pickled object of type {type(obj).__name__} refused")


def load_cifar_batch(source) -> dict:
    """One CIFAR "python version" batch file as a dict with ``str`` keys.

    ``source``: a path or a binary file object. Keys as in the distribution: ``data``
    (uint8 ``(N, 3072)``, channel-major R, G, B of 32x32), ``labels`` (list of int),
    ``batch_label``, ``filenames``. Loaded with an allow-list unpickler (see
    :class:`_BatchUnpickler`): a file that names anything else raises
    :class:`DatasetFormatError` and runs nothing.
    """
    name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "CIFAR batch")
    if isinstance(source, (str, Path)):
        try:
            source = io.BytesIO(read_bytes(source, "CIFAR batch file", MAX_CIFAR_BATCH_BYTES))
        except FileFormatError as exc:
            raise DatasetFormatError(str(exc)) from None
    try:
        obj = _BatchUnpickler(source, encoding="bytes").load()
    except DatasetFormatError as exc:
        raise DatasetFormatError(f"{name}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
            IndexError, KeyError, MemoryError, UnicodeError, RecursionError, OverflowError) as exc:
        raise DatasetFormatError(f"{name}: not a CIFAR python batch file "
                                 f"({' '.join(str(exc).split())[:200]})") from None
    try:
        batch = _materialize(obj)
    except DatasetFormatError as exc:
        raise DatasetFormatError(f"{name}: {exc}") from None
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{name}: expected a dict, found {type(batch).__name__}")
    return batch


def cifar_arrays(batch: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` float32 in [0, 1] and labels ``(N,)`` int64 of one batch
    (as :func:`load_cifar_batch` returns it), checked: uint8 ``data`` (N, 3072) and a flat
    list of N labels in 0..9; ``name`` names the batch in errors."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 \
            or data.dtype != np.uint8 or not isinstance(labels, (list, tuple)) or len(labels) != len(data):
        raise DatasetFormatError(
            f"{name}: expected 'data' uint8 (N, 3072) and a list of N 'labels'; found "
            f"{getattr(data, 'shape', type(data).__name__)} {getattr(data, 'dtype', '')} and "
            f"{len(labels) if isinstance(labels, (list, tuple)) else type(labels).__name__} labels")
    if not all(type(v) is int for v in labels):  # a flat list: nothing nested to expand
        raise DatasetFormatError(f"{name}: labels: expected whole numbers 0..9")
    y = np.asarray(labels, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DatasetFormatError(f"{name}: labels outside 0..9")
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, y
