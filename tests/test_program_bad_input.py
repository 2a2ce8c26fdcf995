"""Adversarial inputs to ``labkit program``: every one refused in one line, before the chip.

A corpus per input class (weights npz files, chip-state JSON records, command-line
options and station limits), each run through the real command against an emulated
chip that counts every call reaching it: the command must exit 2 with exactly one line
on stderr, print nothing on stdout, write no chip-state file and make 0 chip calls.
Failed cells are a result outside tolerance: exit code 3, after the record is written.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit import cli
from labkit.errors import ResultError, exit_code
from labkit.program import ChipState, FailedCellsError

CALLS = {"n": 0}


@pytest.fixture(autouse=True)
def counting_scheme():
    """``count://?seed=N``: the emulated chip, every read / pulse / erase / VMM counted in CALLS;
    ``lowv://`` is the same chip behind a station whose program voltage limit is ``vmax``."""
    from simulator.emulated import EmulatedArray, chip_from_options

    class Counting(EmulatedArray):
        def read_currents(self, cells):
            CALLS["n"] += 1
            return super().read_currents(cells)

        def program_pulses(self, cells, voltage_v, width_s):
            CALLS["n"] += 1
            return super().program_pulses(cells, voltage_v, width_s)

        def erase_rows(self, rows, voltage_v, width_s):
            CALLS["n"] += 1
            return super().erase_rows(rows, voltage_v, width_s)

        def vmm(self, widths_s):
            CALLS["n"] += 1
            return super().vmm(widths_s)

    def lowv(uri, opts):
        a = Counting(chip_from_options({"seed": opts.get("seed", "3")}), uri=uri)
        a.envelope = a.envelope.tightened(max_program_voltage_v=float(opts["vmax"]))
        return a

    labkit.register_scheme("count", lambda uri, opts: Counting(chip_from_options(opts), uri=uri))
    labkit.register_scheme("lowv", lowv)
    CALLS["n"] = 0


def main_code(argv) -> int:
    """The command's exit code (a CLI that does not map ResultError yet lets it through)."""
    try:
        return cli.main(argv)
    except ResultError as exc:
        assert isinstance(exc, FailedCellsError)
        return exit_code(exc)


@pytest.fixture(autouse=True)
def _restore_cwd():
    """These tests run the command in their tmp folder: give the next test its folder back."""
    cwd = os.getcwd()
    yield
    os.chdir(cwd)


def refused(capsys, tmp_path, *argv, backend="count://?seed=3", code=2) -> str:
    """Run the command; assert a one-line refusal with no chip call; return the line."""
    os.chdir(tmp_path)
    got = cli.main(["program", "--backend", backend, *argv])
    out, err = capsys.readouterr()
    assert got == code, err
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert CALLS["n"] == 0
    assert not (tmp_path / "chipstate-EMU-0003.json").exists()
    return err.strip()


# ---------------------------------------------------------------- weights files


def npy_bytes(shape, descr="<f8", data=b"", version=(1, 0)) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    if version == (1, 0):
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data
    return b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(header)) + header + data


def npz_of(members: dict[str, bytes], compress=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def saved(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


GOOD = np.random.default_rng(0).uniform(-1, 1, (16, 8))

WEIGHT_FILES = {
    "complex": (saved(weights=GOOD.astype(complex) + 0.5j), "complex128"),
    "complex64": (saved(weights=GOOD.astype(np.complex64)), "complex64"),
    "timedelta": (saved(weights=np.zeros((16, 8), "m8[s]")), "timedelta64"),
    "datetime": (saved(weights=np.zeros((16, 8), "M8[s]")), "datetime64"),
    "bool": (saved(weights=np.ones((16, 8), bool)), "bool"),
    "strings": (saved(weights=np.full((16, 8), "0.5")), "<U3"),
    "structured": (saved(weights=np.zeros((16, 8), [("a", "f8")])), "dtype"),
    "object (pickle)": (npz_of({"weights.npy": npy_bytes((16, 8), "|O", b"\x80\x04N.")}), "dtype object"),
    "1x1 broadcast": (saved(weights=np.full((1, 1), 0.5)), "(1, 1)"),
    "row vector": (saved(weights=np.zeros(8)), "2-d"),
    "scalar": (saved(weights=np.float64(0.5)), "2-d"),
    "3-d": (saved(weights=np.zeros((16, 8, 1))), "2-d"),
    "transposed": (saved(weights=GOOD.T), "(8, 16)"),
    "one row short": (saved(weights=GOOD[:15]), "(15, 8)"),
    "one output more": (saved(weights=np.zeros((16, 9))), "(16, 9)"),
    "empty": (saved(weights=np.zeros((0, 8))), "(0, 8)"),
    "nan": (saved(weights=np.where(np.eye(16, 8) > 0, np.nan, GOOD)), "nan"),
    "inf": (saved(weights=np.where(np.eye(16, 8) > 0, np.inf, GOOD)), "finite"),
    "-inf": (saved(weights=np.where(np.eye(16, 8) > 0, -np.inf, GOOD)), "finite"),
    "out of range": (saved(weights=GOOD * 3), "--clip"),
    "huge integers": (saved(weights=np.full((16, 8), 2**62, np.int64)), "--clip"),
    "no weights array": (saved(other=GOOD), "named 'weights'"),
    "many arrays, none weights": (saved(**{f"a{i}": np.zeros(1) for i in range(20)}), "named 'weights'"),
    "too many members": (saved(weights=GOOD, **{f"a{i}": np.zeros(1) for i in range(80)}), "entries"),
    "not a zip": (b"not a zip at all", "not a readable .npz"),
    "empty file": (b"", "not a readable .npz"),
    "truncated npz": (saved(weights=GOOD)[:700], "not a readable .npz"),
    "a single npy": (npy_bytes((16, 8), data=GOOD.tobytes()), "single .npy"),
    "huge header shape": (npz_of({"weights.npy": npy_bytes((10**6, 10**6))}), "elements"),
    "zip bomb": (None, "elements"),  # zip_bomb(): 8 M zeros in ~60 kB
    "short data": (npz_of({"weights.npy": npy_bytes((16, 8), data=b"\0" * 100)}), "cannot be read"),
    "npy version 3": (npz_of({"weights.npy": npy_bytes((16, 8), data=GOOD.tobytes(), version=(3, 0))}), "1.0 or 2.0"),
    "corrupt header": (npz_of({"weights.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 'xx'}  \n"}), "header"),
    "garbage member": (npz_of({"weights.npy": os.urandom(64)}), "header"),
}


@functools.lru_cache(maxsize=1)
def zip_bomb() -> bytes:
    """An npz of 8 M float zeros (64 MB once read) in ~60 kB, written without allocating them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open("weights.npy", "w", force_zip64=True) as f:
        f.write(npy_bytes((8_000, 1_000)))
        chunk = bytes(1 << 20)
        for _ in range(64):
            f.write(chunk)
    return buf.getvalue()


@pytest.mark.parametrize("name", list(WEIGHT_FILES))
def test_bad_weights_files_are_refused_in_one_line_before_the_chip(tmp_path, capsys, name):
    data, match = WEIGHT_FILES[name]
    (tmp_path / "w.npz").write_bytes(zip_bomb() if data is None else data)
    line = refused(capsys, tmp_path, "w.npz")
    assert match in line and "w.npz" in line or match in line


@pytest.mark.parametrize("path, match", [("missing.npz", "does not exist"), (".", "not a file")])
def test_missing_or_directory_weights_path(tmp_path, capsys, path, match):
    assert match in refused(capsys, tmp_path, path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(["f8", "f4", "f2", "i8", "i2", "u1", "c16", "?", "m8[ns]", "U2"]),
       shape=st.lists(st.integers(0, 20), min_size=0, max_size=3).map(tuple))
def test_any_array_other_than_a_real_16x8_is_refused(tmp_path, capsys, dtype, shape):
    if np.dtype(dtype).kind in "iuf" and shape == (16, 8):
        return  # the one good form (checked by the programming tests)
    (tmp_path / "w.npz").write_bytes(saved(weights=np.zeros(shape, dtype)))
    CALLS["n"] = 0
    refused(capsys, tmp_path, "w.npz")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000), keep=st.integers(0, 1200))
def test_random_bytes_and_mangled_npz_never_traceback(tmp_path, capsys, data, keep):
    good = saved(weights=GOOD)
    blob = good[:keep] + data + good[keep + len(data):] if keep % 2 else data
    (tmp_path / "w.npz").write_bytes(blob)
    (tmp_path / "s.json").unlink(missing_ok=True)  # hypothesis reuses the folder across examples
    CALLS["n"] = 0
    os.chdir(tmp_path)
    got = main_code(["program", "--backend", "count://?seed=3", "w.npz", "--state", "s.json",
                     "--max-pulses", "1", "--tolerance", "0.4"])
    out, err = capsys.readouterr()
    if got == 2:
        assert len(err.strip().splitlines()) == 1 and CALLS["n"] == 0 and not (tmp_path / "s.json").exists()
    else:  # a mangling that left a valid file: programmed for real (one pulse per cell: cells fail)
        assert got == 3


def test_a_hostile_small_npz_keeps_the_memory_bounded(tmp_path):
    """Peak RSS of reading a 40 kB zip bomb and a header claiming 10^12 elements."""
    (tmp_path / "bomb.npz").write_bytes(zip_bomb())
    (tmp_path / "header.npz").write_bytes(WEIGHT_FILES["huge header shape"][0])
    code = ("import resource, sys\n"
            "from labkit.program import load_weights\n"
            "from labkit.errors import UsageError\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n"
            "        load_weights(p)\n"
            "    except UsageError:\n"
            "        pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bomb.npz"), str(tmp_path / "header.npz")],
                         capture_output=True, text=True, timeout=120, check=True)
    grown_kib = int(out.stdout.strip())
    assert grown_kib < 32 * 1024, f"peak RSS grew by {grown_kib} KiB"  # reading the bomb would take 64 MB


# ---------------------------------------------------------------- chip-state files


def valid_record() -> dict:
    t = np.full((16, 16), np.nan)
    t[2] = 3e-9
    st_ = ChipState.new(labkit.Identity("EMU-0003", "fw", "sim://"), 16, 16, t, window={
        "i_min_a": 1e-9, "i_max_a": 1.1e-8, "scheme": "offset"}, weights=np.zeros((16, 8)))
    st_.model = {"planner": "adaptive", "b": 3.0, "erase_rate_per_s": 30.0}
    st_.history = [{"time": 1.0, "event": "program"}]
    return st_.to_dict()


REQUIRED = ("format", "chip_id", "rows", "cols", "targets_a", "achieved_a", "pulses", "status", "tolerance",
            "run_status")
WRONG = ["x", -1, 1e300, True, None, [], {}, [[1]], [[None]]]


def record_corpus() -> dict[str, tuple[str, str]]:
    """name -> (file text, what the error must name)."""
    base = valid_record()
    out = {}
    for field in REQUIRED:
        d = copy.deepcopy(base)
        del d[field]
        out[f"missing {field}"] = (json.dumps(d), field if field != "format" else "format")
    for field in base:
        for i, v in enumerate(WRONG):
            d = copy.deepcopy(base)
            if isinstance(v, str) and field in ("chip_id", "backend", "firmware", "algorithm"):
                continue  # any text is a valid name (another chip's id is the mismatch tests' case)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and field in ("created_at", "updated_at"):
                continue
            if d[field] == v or (field in ("window", "weights", "intent") and v is None) or (
                    field in ("model", "settings", "reasons") and v == {}) or (field == "history" and v == []):
                continue  # an allowed value for that field
            d[field] = v
            out[f"{field} = {v!r}"] = (json.dumps(d), field)
    grid_fields = ("targets_a", "achieved_a", "pulses", "status", "pulses_unconfirmed")
    for field in grid_fields:
        d = copy.deepcopy(base)
        d[field] = d[field][:15]
        out[f"{field} one row short"] = (json.dumps(d), field)
        d = copy.deepcopy(base)
        d[field][4] = d[field][4][:3]
        out[f"{field} ragged"] = (json.dumps(d), field)
        d = copy.deepcopy(base)
        d[field] = [[d[field][0][0]]]
        out[f"{field} 1x1 broadcast"] = (json.dumps(d), field)
    d = copy.deepcopy(base)
    d["status"][3][3] = "finished"
    out["unknown status"] = (json.dumps(d), "status")
    d = copy.deepcopy(base)
    d["pulses"][0][0] = -4
    out["negative pulses"] = (json.dumps(d), "pulses")
    d = copy.deepcopy(base)
    d["pulses_unconfirmed"][0][0] = 5
    out["more unconfirmed than counted"] = (json.dumps(d), "pulses_unconfirmed")
    d = copy.deepcopy(base)
    d["weights"] = [[0.5]]
    out["weights 1x1 broadcast"] = (json.dumps(d), "weights")
    d = copy.deepcopy(base)
    d["window"] = {"i_min_a": 1e-8, "i_max_a": 1e-9}
    out["inverted window"] = (json.dumps(d), "window")
    d = copy.deepcopy(base)
    d["intent"] = {"op": "erase", "rows": [99]}
    out["intent outside the grid"] = (json.dumps(d), "intent")
    d = copy.deepcopy(base)
    d["model"] = {"planner": "adaptive", "b": "fast"}
    out["model number as text"] = (json.dumps(d), "b")
    d = copy.deepcopy(base)
    d["model"]["erased_a"] = [[1e-6]]
    out["model grid 1x1"] = (json.dumps(d), "erased_a")
    d = copy.deepcopy(base)
    d["surplus"] = 1
    out["unknown field"] = (json.dumps(d), "surplus")
    d = copy.deepcopy(base)
    d["rows"] = 10**9
    out["a billion rows"] = (json.dumps(d), "rows")
    text = json.dumps(base)
    out["NaN constant"] = (text.replace('"tolerance": 0.01', '"tolerance": NaN'), "NaN")
    out["duplicate key"] = (text.replace('"rows": 16', '"rows": 16, "rows": 1'), "duplicate")
    out["truncated"] = (text[: len(text) // 2], "not JSON")
    out["empty"] = ("", "not JSON")
    out["a list"] = ("[1, 2]", "expected an object")
    out["deeply nested"] = ("[" * 100_000 + "]" * 100_000, "nests")
    out["nested in a field"] = (text.replace('"settings": {', '"settings": ' + "[" * 50 + "]" * 50 + ', "x": {'),
                                "nests")
    out["over the size bound"] = (text + " " * (5 << 20), "bytes")
    out["another format"] = (json.dumps({**base, "format": "something else"}), "format")
    return out


RECORDS = record_corpus()


@pytest.mark.parametrize("name", list(RECORDS))
def test_bad_chip_state_files_are_refused_in_one_line_before_the_chip(tmp_path, capsys, name):
    text, field = RECORDS[name]
    (tmp_path / "s.json").write_text(text)
    line = refused(capsys, tmp_path, "--refresh", "--state", "s.json")
    assert "s.json" in line and field in line, line


def test_non_utf8_chip_state_file(tmp_path, capsys):
    (tmp_path / "s.json").write_bytes(b'{"format": "\xff\xfe"}')
    assert "UTF-8" in refused(capsys, tmp_path, "--refresh", "--state", "s.json")


def test_the_valid_record_of_the_corpus_is_accepted(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(valid_record()))
    st_ = ChipState.load(tmp_path / "s.json")
    assert st_.count("pending") == 16 and st_.weights.shape == (16, 8)


# ---------------------------------------------------------------- options and limits


@pytest.mark.parametrize("argv, match", [
    (["--tolerance", "1e-300"], "achievable precision 0.002"),
    (["--tolerance", "0.001"], "achievable precision"),
    (["--tolerance", "0"], "tolerance"),
    (["--tolerance", "-0.01"], "tolerance"),
    (["--tolerance", "nan"], "tolerance"),
    (["--tolerance", "inf"], "tolerance"),
    (["--tolerance", "0.5"], "tolerance"),
    (["--max-pulses", "0"], "--max-pulses"),
    (["--max-pulses", "-3"], "--max-pulses"),
    (["--max-pulses", "10000000000"], "--max-pulses"),
    (["--out", "."], "directory"),
    (["--headroom", "0"], "headroom"),
    (["--headroom", "1.5"], "headroom"),
    (["--headroom", "nan"], "headroom"),
    (["--state", "."], "is a directory"),
    (["--state", "no/such/folder/s.json"], "does not exist"),
    (["--state", "w.npz/s.json"], "does not exist"),
    (["--state", "theirs.json"], "EMU-0009"),
    (["--state", "junk.json"], "junk.json"),
    (["--refresh"], "do not pass WEIGHTS"),
])
def test_bad_options_are_refused_before_anything_is_erased(tmp_path, capsys, argv, match):
    np.savez(tmp_path / "w.npz", weights=GOOD)
    theirs = ChipState.new(labkit.Identity("EMU-0009", "fw", "sim://"), 16, 16, np.full((16, 16), 2e-9))
    theirs.save(tmp_path / "theirs.json")
    (tmp_path / "junk.json").write_text("{")
    assert match in refused(capsys, tmp_path, "w.npz", *argv)


def test_refresh_without_a_record_and_weights_missing(tmp_path, capsys):
    assert "does not exist" in refused(capsys, tmp_path, "--refresh", "--state", "none.json")
    assert "no chip-state file" in refused(capsys, tmp_path, "--refresh")
    assert "required" in refused(capsys, tmp_path)


@pytest.mark.parametrize("vmax, algorithm, match", [
    (1.5, "adaptive", "below the recipe's v_min=2 V"),
    (1.5, "ispp", "below the recipe's v_min=2 V"),
    (3.0, "ispp", "below the ispp planner's lowest pulse 3.6 V"),
])
def test_a_station_limit_below_the_planners_range_is_refused_up_front(tmp_path, capsys, vmax, algorithm, match):
    np.savez(tmp_path / "w.npz", weights=GOOD)
    line = refused(capsys, tmp_path, "w.npz", "--algorithm", algorithm, backend=f"lowv://?seed=3&vmax={vmax}")
    assert match in line


def test_failed_cells_are_exit_code_3_with_the_record_written(tmp_path, capsys):
    np.savez(tmp_path / "w.npz", weights=GOOD)
    os.chdir(tmp_path)
    code = main_code(["program", "--backend", "count://?seed=3", "w.npz", "--algorithm", "ispp",
                      "--max-pulses", "3", "--state", "s.json"])
    out, err = capsys.readouterr()
    assert code == 3
    st_ = ChipState.load(tmp_path / "s.json")
    assert st_.run_status == "complete" and st_.count("failed") > 100
    assert CALLS["n"] > 0
