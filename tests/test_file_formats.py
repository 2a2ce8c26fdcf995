"""Hostile files, one corpus per format labkit reads (station YAML through
labkit.files.load_yaml, checkpoints, calibration npz, IDX and CIFAR data files): each
bad file is refused with one line naming the file, never a traceback, a hang or an
acceptance; a valid file still loads. Hypothesis mutates valid files byte by byte."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.calibrate.file import Calibration, LinearFit, read_calibration, save_calibration
from labkit.files import FileFormatError, load_json, load_yaml
from labkit.model import ArrayModel
from labkit.train import networks as N
from labkit.train.checkpoint import load_checkpoint, save_checkpoint
from labkit.train.datafiles import DatasetFormatError, cifar_arrays, load_cifar_batch, read_idx

HERE = Path(__file__).parent
FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def refused(fn, path, kinds=(ValueError, FileNotFoundError)) -> str:
    """Call ``fn(path)``; it must raise one of ``kinds`` with one line naming the file."""
    try:
        fn(path)
    except kinds as exc:
        msg = str(exc)
        assert "\n" not in msg and str(path) in msg, msg
        return msg
    raise AssertionError(f"{path} was accepted")


# --------------------------------------------------------------------------- YAML

YAML_BAD = {
    "dup_top": "name: a\nname: b\n",
    "dup_nested": "limits:\n  vmax: 5\n  vmax: 6\n",
    "dup_in_list": "chips:\n  - {id: 1, id: 2}\n",
    "deep": "a: " + "[" * 40 + "]" * 40 + "\n",
    "deep_block": "".join("  " * i + f"k{i}:\n" for i in range(40)) + "  " * 40 + "x: 1\n",
    "unclosed": "a: [1, 2\n",
    "tab_indent": "a:\n\tb: 1\n",
    "python_tag": "a: !!python/object/apply:os.system ['echo pwned']\n",
    "binary": "\x00\x01\x02 ~~ \xff",
    "two_docs": "a: 1\n---\nb: 2\n",
    "bad_alias": "a: *nothing\n",
    "unhashable_key": "? [1, 2]\n: x\n",
}


def _yaml_corpus(tmp: Path) -> list[Path]:
    paths = []
    for name, text in YAML_BAD.items():
        p = tmp / f"{name}.yaml"
        p.write_text(text, encoding="utf-8", errors="surrogateescape") if "\xff" not in text else \
            p.write_bytes(text.encode("latin1"))
        paths.append(p)
    big = tmp / "big.yaml"
    big.write_text("a: " + "x" * (5 * 2**20) + "\n")
    nonutf8 = tmp / "latin1.yaml"
    nonutf8.write_bytes(b"name: caf\xe9\n")
    paths += [big, nonutf8, tmp / "missing.yaml", tmp, Path("/dev/zero")]
    fifo = tmp / "fifo.yaml"
    os.mkfifo(fifo)
    paths.append(fifo)
    return paths


def test_yaml_corpus_refused_in_one_line(tmp_path):
    corpus = _yaml_corpus(tmp_path)
    for p in corpus:
        refused(lambda q: load_yaml(q, "station file"), p, (FileFormatError,))
    assert len(corpus) >= 17
    msg = refused(lambda q: load_yaml(q, "station file"), tmp_path / "dup_nested.yaml")
    assert "line 3" in msg and "duplicate key 'vmax'" in msg


def test_yaml_valid_files_still_load(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("station:\n  limits: {vmax: 5.0, vmin: -1}\n  chips: [a, b]\nx: &r [1]\ny: *r\n")
    assert load_yaml(p, "station file") == {"station": {"limits": {"vmax": 5.0, "vmin": -1},
                                                        "chips": ["a", "b"]}, "x": [1], "y": [1]}


@FAST
@given(st.text(max_size=200))
def test_yaml_fuzz_loads_or_refuses_in_one_line(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("y") / "f.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_yaml(p, "station file")
    except FileFormatError as exc:
        assert "\n" not in str(exc) and str(p) in str(exc)


def test_json_depth_and_size_bounded(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    refused(lambda q: load_json(q, "chip-state file"), deep, (FileFormatError,))
    ok = tmp_path / "ok.json"
    ok.write_text('{"a": [1, {"b": "[[[["}]}')
    assert load_json(ok, "chip-state file") == {"a": [1, {"b": "[[[["}]}


# --------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "mlp.pt"
    save_checkpoint(path, "mlp", N.mlp_lowres(hidden=8), {"network_kwargs": {"hidden": 8}})
    return path


def _payload(path):
    return torch.load(path, weights_only=True)


def _checkpoint_corpus(good: Path, tmp: Path) -> list[Path]:
    base = _payload(good)
    sd = base["state_dict"]
    first = next(iter(sd))
    variants = {
        "missing_key": {**base, "state_dict": {k: v for k, v in sd.items() if k != first}},
        "extra_key": {**base, "state_dict": {**sd, "extra.weight": torch.zeros(2)}},
        "wrong_shape": {**base, "state_dict": {**sd, first: torch.zeros(3, 3)}},
        "nan": {**base, "state_dict": {**sd, first: sd[first] * float("nan")}},
        "inf": {**base, "state_dict": {**sd, first: sd[first] + float("inf")}},
        "complex": {**base, "state_dict": {**sd, first: sd[first].to(torch.complex64)}},
        "not_tensor": {**base, "state_dict": {**sd, first: [1.0, 2.0]}},
        "empty_state": {**base, "state_dict": {}},
        "unknown_model": {**base, "model_name": "resnet9000"},
        "model_not_str": {**base, "model_name": 3},
        "wrong_format": {**base, "format": "other"},
        "wrong_version": {**base, "version": 99},
        "meta_list": {**base, "meta": [1, 2]},
        "meta_deep": {**base, "meta": {"a": __import__("functools").reduce(lambda a, _: [a], range(60), 0)}},
        "kwargs_bad": {**base, "meta": {"network_kwargs": {"hidden": [1, 2]}}},
        "kwargs_unknown": {**base, "meta": {"network_kwargs": {"no_such_arg": 1}}},
        "not_dict": [1, 2, 3],
    }
    paths = []
    for name, payload in variants.items():
        p = tmp / f"{name}.pt"
        torch.save(payload, p)
        paths.append(p)
    raw = good.read_bytes()
    for i, cut in enumerate((0, 10, len(raw) // 3, len(raw) // 2, len(raw) - 30)):
        p = tmp / f"truncated{i}.pt"
        p.write_bytes(raw[:cut])
        paths.append(p)

    class Shell:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'pwned'}",))

    evil = tmp / "evil.pt"
    torch.save({"format": "labkit-checkpoint", "x": Shell()}, evil)
    plain = tmp / "plain.pkl"
    plain.write_bytes(pickle.dumps(Shell(), protocol=2))
    junk = tmp / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    paths += [evil, plain, junk, tmp / "missing.pt", Path("/dev/zero")]
    return paths


def test_checkpoint_corpus_refused_in_one_line(good_checkpoint, tmp_path):
    corpus = _checkpoint_corpus(good_checkpoint, tmp_path)
    for p in corpus:
        refused(load_checkpoint, p)
    assert not (tmp_path / "pwned").exists()
    assert len(corpus) >= 27
    assert "shape (3, 3)" in refused(load_checkpoint, tmp_path / "wrong_shape.pt")
    assert "NaN" in refused(load_checkpoint, tmp_path / "nan.pt")
    assert "resnet9000" in refused(load_checkpoint, tmp_path / "unknown_model.pt")
    assert load_checkpoint(good_checkpoint).build() is not None  # the good one still loads


@FAST
@given(st.data())
def test_checkpoint_byte_mutations_refused_or_loaded(good_checkpoint, tmp_path_factory, data):
    raw = bytearray(good_checkpoint.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    p = tmp_path_factory.mktemp("m") / "m.pt"
    p.write_bytes(bytes(raw))
    try:
        load_checkpoint(p).build()  # a flip inside a float may still be a valid checkpoint
    except ValueError as exc:
        assert "\n" not in str(exc) and str(p) in str(exc)


# --------------------------------------------------------------------------- calibration npz

@pytest.fixture(scope="module")
def good_calibration(tmp_path_factory):
    z16 = np.zeros((16, 16))
    cal = Calibration("EMU-0", ArrayModel().to_dict(), LinearFit(z16, np.zeros(16)),
                      LinearFit(z16, np.zeros(16)), {"ser_db": {"model": 30.0}}, run_ids=[1], run_uids=["u"])
    return save_calibration(cal, tmp_path_factory.mktemp("cal") / "chip.npz")


def _calibration_corpus(good: Path, tmp: Path) -> list[Path]:
    with np.load(good, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    variants = {f"no_{k.replace('/', '_')}": {kk: v for kk, v in d.items() if kk != k}
                for k in ("format", "chip_id", "naive_weights_s", "model/currents_a", "model/rows",
                          "report_json", "run_ids")}
    variants.update({
        "weights_1x1": {**d, "naive_weights_s": np.zeros((1, 1))},
        "weights_transposed_shape": {**d, "linear_weights_s": np.zeros((16, 15))},
        "currents_wrong": {**d, "model/currents_a": np.ones((4, 4))},
        "complex": {**d, "naive_offset_s": np.zeros(16, complex)},
        "timedelta": {**d, "naive_offset_s": np.zeros(16, "m8[s]")},
        "object": {**d, "report_json": np.array([{"a": 1}], dtype=object)},
        "nan": {**d, "model/offset_s": np.full(16, np.nan)},
        "inf_scalar": {**d, "model/tdc_lsb_s": np.array(np.inf)},
        "rows_zero": {**d, "model/rows": np.array(0)},
        "rows_huge": {**d, "model/rows": np.array(10**9)},
        "rows_float": {**d, "model/rows": np.array(16.0)},
        "format_future": {**d, "format": np.array("labkit.Calibration/99")},
        "format_number": {**d, "format": np.array(1.0)},
        "chip_number": {**d, "chip_id": np.array(7)},
        "report_not_json": {**d, "report_json": np.array("{nope")},
        "report_list": {**d, "report_json": np.array("[1, 2]")},
        "scalar_as_vector": {**d, "created_at": np.zeros(3)},
        "pairs_wrong": {**d, "model/pairs": np.zeros((8, 3), np.int64)},
        "run_ids_2d": {**d, "run_ids": np.zeros((2, 2), np.int64)},
    })
    paths = []
    for name, arrays in variants.items():
        p = tmp / f"{name}.npz"
        with open(p, "wb") as f:
            np.savez(f, **arrays)
        paths.append(p)
    huge = tmp / "huge_header.npz"  # declares a (100000, 100000) float64 array in 200 bytes
    with zipfile.ZipFile(huge, "w") as z:
        header = {"descr": "<f8", "fortran_order": False, "shape": (100_000, 100_000)}
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        z.writestr("naive_weights_s.npy", np.lib.format.magic(1, 0) + buf.getvalue()[8:] + b"\0" * 64)
        for k, v in d.items():
            if k != "naive_weights_s":
                b2 = io.BytesIO()
                np.lib.format.write_array(b2, v)
                z.writestr(k + ".npy", b2.getvalue())
    raw = good.read_bytes()
    trunc = tmp / "truncated.npz"
    trunc.write_bytes(raw[: len(raw) // 2])
    junk = tmp / "junk.npz"
    junk.write_bytes(b"PK\x03\x04" + os.urandom(500))
    paths += [huge, trunc, junk, tmp / "missing.npz", Path("/dev/zero"), tmp]
    return paths


def test_calibration_corpus_refused_in_one_line(good_calibration, tmp_path):
    corpus = _calibration_corpus(good_calibration, tmp_path)
    for p in corpus:
        refused(read_calibration, p)
    assert len(corpus) >= 32
    assert "(16, 16)" in refused(read_calibration, tmp_path / "weights_1x1.npz")
    assert "complex" in refused(read_calibration, tmp_path / "complex.npz")
    assert read_calibration(good_calibration).chip_id == "EMU-0"


# --------------------------------------------------------------------------- datasets

def _idx(dtype_code: int, dims, payload: bytes) -> bytes:
    return bytes([0, 0, dtype_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def _gzip_zeros(head: bytes, mib: int) -> bytes:
    """gzip of ``head`` then ``mib`` MiB of zeros, built without holding them (about 300 kB)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(2**20)
    return c.compress(head) + b"".join(c.compress(zeros) for _ in range(mib)) + c.flush()


def _dataset_corpus(tmp: Path) -> list[tuple[Path, object]]:
    files = {
        "idx_empty": b"",
        "idx_magic": b"\x01\x02\x03\x04",
        "idx_type": _idx(0x07, (2,), b"\0\0"),
        "idx_ndim0": bytes([0, 0, 8, 0]),
        "idx_trunc_header": bytes([0, 0, 8, 3, 0, 0]),
        "idx_short_data": _idx(0x08, (10, 28, 28), b"\0" * 100),
        "idx_long_data": _idx(0x08, (1, 2), b"\0" * 100),
        "idx_huge_dims": _idx(0x08, (2**31, 2**31, 2**31), b"\0" * 8),
        "idx_many_dims": bytes([0, 0, 8, 200]) + b"\0\0\0\1" * 200,
        "idx_gzip_bomb": _gzip_zeros(_idx(0x08, (300 * 2**20,), b""), 300),
        "idx_gzip_corrupt": b"\x1f\x8b" + os.urandom(200),
        "idx_gzip_trunc": gzip.compress(_idx(0x08, (1000,), b"\1" * 1000))[:30],
    }
    out = []
    for name, data in files.items():
        p = tmp / name
        p.write_bytes(data)
        out.append((p, read_idx))
    out += [(tmp / "missing-idx", read_idx), (Path("/dev/zero"), read_idx)]
    dag = [0] * 10
    for _ in range(6):
        dag = [dag] * 30  # 2.5 kB of pickle naming 729 million list slots
    cifar = {
        "cifar_binbytes8": b"\x80\x04\x8e" + struct.pack("<Q", 2_200_000_000) + b"x" * 100,
        "cifar_dag_labels": pickle.dumps({"data": np.zeros((30, 3072), np.uint8), "labels": dag}, protocol=2),
        "cifar_global": pickle.dumps({"f": os.system}, protocol=2),
        "cifar_object_array": pickle.dumps({"data": np.array([object()] * 2)}, protocol=2),
        "cifar_float_data": pickle.dumps({"data": np.zeros((2, 3072)), "labels": [0, 1]}, protocol=2),
        "cifar_labels_range": pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 11]}, protocol=2),
        "cifar_labels_str": pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}, protocol=2),
        "cifar_not_dict": pickle.dumps([1, 2, 3], protocol=2),
        "cifar_junk": os.urandom(300),
        "cifar_empty": b"",
    }
    for name, data in cifar.items():
        p = tmp / name
        p.write_bytes(data)
        out.append((p, _cifar_checked))
    return out


def _cifar_checked(path):
    return cifar_arrays(load_cifar_batch(path), str(path))


def test_dataset_corpus_refused_in_one_line(tmp_path):
    corpus = _dataset_corpus(tmp_path)
    for p, fn in corpus:
        refused(fn, p, (DatasetFormatError, FileNotFoundError))
    assert len(corpus) >= 24


# --------------------------------------------------------------------------- memory bound

MEMORY_CHILD = r"""
import resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import tests.test_file_formats as t
from labkit.calibrate.file import read_calibration
from labkit.files import load_yaml
tmp = Path(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cases = [(p, f) for p, f in t._dataset_corpus(tmp / "d")]
cases += [(p, read_calibration) for p in (tmp / "c" / "huge_header.npz",)]
cases += [(p, lambda q: load_yaml(q, "station file")) for p in (tmp / "y" / "big.yaml", Path("/dev/zero"))]
for p, fn in cases:
    try:
        fn(p)
    except (ValueError, FileNotFoundError):
        pass
    else:
        raise SystemExit(f"accepted {p}")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(cases), base // 1024, peak // 1024, (peak - base) // 1024)
"""

MEMORY_LIMIT_MB = 150  # above the interpreter with torch imported


def test_hostile_small_files_stay_within_memory_bound(tmp_path, good_calibration):
    for sub in "dcy":
        (tmp_path / sub).mkdir()
    _calibration_corpus(good_calibration, tmp_path / "c")
    (tmp_path / "y" / "big.yaml").write_text("a: " + "x" * (5 * 2**20) + "\n")
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(HERE.parent), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n, base_mb, peak_mb, grew_mb = (int(v) for v in proc.stdout.split())
    print(f"{n} hostile files: peak RSS {peak_mb} MB, {grew_mb} MB over the {base_mb} MB after imports")
    assert n >= 25 and grew_mb < MEMORY_LIMIT_MB


def test_cli_bad_checkpoint_is_one_line_exit_2(good_checkpoint, tmp_path):
    """Through the command line: a checkpoint with NaN weights is exit 2 and one line."""
    payload = _payload(good_checkpoint)
    first = next(iter(payload["state_dict"]))
    payload["state_dict"][first] = payload["state_dict"][first] * float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(payload, bad)
    proc = subprocess.run([sys.executable, "-m", "labkit.cli", "train", "--model", "mlp", "--mode", "hw",
                           "--from", str(bad), "--subset", "20", "--epochs", "1", "--out", str(tmp_path / "o.pt")],
                          capture_output=True, text=True, cwd=HERE.parent, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and str(bad) in proc.stderr and "NaN" in proc.stderr
    assert not (tmp_path / "o.pt").exists()
