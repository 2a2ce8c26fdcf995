"""The run store: round trips, status marking, errors, HDF5 export, CLI, and crashes of a
real writer process (SIGINT, SIGTERM, SIGKILL) on real SQLite files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from labkit import VmmSettings
from labkit.store import RunStore, StoreError, default_store_path

HERE = Path(__file__).parent
WRITER = HERE / "helpers_store_writer.py"


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "runs.sqlite", commit_interval=0.2)
    yield s
    s.close()


def _batch(rng, n):
    return {"inputs": rng.random((n, 16)), "outputs": rng.random((n, 16)).astype(np.float32),
            "t": np.arange(n, dtype=np.float64) * 1e-3}


# --------------------------------------------------------------------- round trips


def test_wal_mode_and_default_path(store, tmp_path, monkeypatch):
    assert store.journal_mode.lower() == "wal"
    con = sqlite3.connect(store.path)  # a second, plain reader sees WAL too
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    monkeypatch.setenv("LABKIT_STORE", str(tmp_path / "elsewhere.sqlite"))
    assert default_store_path() == tmp_path / "elsewhere.sqlite"
    monkeypatch.delenv("LABKIT_STORE")
    monkeypatch.chdir(tmp_path)
    assert default_store_path() == tmp_path / "labkit-runs.sqlite"


def test_points_and_arrays_round_trip_exactly(store):
    rng = np.random.default_rng(1)
    batches = [_batch(rng, n) for n in (7, 1, 30)]
    currents = rng.random((16, 16)) * 1e-6
    flags = rng.random((16, 16)) > 0.5
    codes = np.arange(256, dtype=">u2").reshape(16, 16)  # big-endian in, values kept
    with store.run("characterize", "sim://?seed=3", "chip-7", settings=VmmSettings(),
                   provenance={"station": "board: socket://127.0.0.1:1\n", "idn": {"smu": "X,1"}},
                   seeds={"chip": 3, "inputs": 11}) as run:
        for b in batches:
            assert run.add_points("vmm", **b) == len(b["t"])
        run.add_points("sweep", v=np.linspace(0, 1, 5), i=np.zeros((5, 2), dtype=np.int64))
        run.put_array("currents", currents)
        run.put_array("flags", flags)
        run.put_array("codes", codes)
        run.put_array("currents", currents * 2)  # replaces
        run.put_result({"rmse": np.float64(0.25)})
        run.put_result({"n": 3})  # merges
    got = store.load(run.id)
    assert (got.status, got.kind, got.chip_id, got.backend_uri) == ("completed", "characterize", "chip-7",
                                                                   "sim://?seed=3")
    assert got.tables == {"vmm": 38, "sweep": 5}
    pts = got.points("vmm")
    for name in ("inputs", "outputs", "t"):
        want = np.concatenate([b[name] for b in batches])
        assert pts[name].dtype == want.dtype and pts[name].shape == want.shape
        np.testing.assert_array_equal(pts[name], want)
    assert got.points("sweep")["i"].dtype == np.int64 and got.points("sweep")["i"].shape == (5, 2)
    arrays = got.arrays
    np.testing.assert_array_equal(arrays["currents"], currents * 2)
    assert arrays["flags"].dtype == np.bool_ and np.array_equal(arrays["flags"], flags)
    assert arrays["codes"].dtype == np.dtype("u2") and np.array_equal(arrays["codes"], codes)
    assert got.result == {"rmse": 0.25, "n": 3}
    assert got.settings["integration_time_s"] == 1e-6
    assert got.provenance["idn"] == {"smu": "X,1"} and got.seeds == {"chip": 3, "inputs": 11}
    v = got.versions
    assert v["labkit"] and v["python"] and v["numpy"] == np.__version__ and "torch" in v
    assert got.host and got.pid == os.getpid() and got.finished_at >= got.started_at
    with pytest.raises(ValueError, match="no point table 'nope'"):
        got.points("nope")


def test_blobs_are_raw_bytes_not_pickle(store):
    with store.run("x") as run:
        run.add_points("p", a=np.array([1.0, 2.0]))
        run.put_array("m", np.array([[1, 2]], dtype=np.int32))
    con = sqlite3.connect(store.path)
    blob, = con.execute("SELECT data FROM point_batches").fetchone()
    dtype, shape, data = con.execute("SELECT dtype, shape, data FROM arrays").fetchone()
    con.close()
    assert blob == np.array([1.0, 2.0], "<f8").tobytes()
    assert (dtype, json.loads(shape), data) == ("<i4", [1, 2], np.array([1, 2], "<i4").tobytes())


def test_bad_batches_are_value_errors_before_writing(store):
    with store.run("x") as run:
        run.add_points("p", a=np.zeros((2, 3)), b=np.zeros(2))
        with pytest.raises(ValueError, match="same number of points"):
            run.add_points("p", a=np.zeros((2, 3)), b=np.zeros(3))
        with pytest.raises(ValueError, match=r"shape \(3,\)"):
            run.add_points("p", a=np.zeros((2, 4)), b=np.zeros(2))
        with pytest.raises(ValueError, match="columns of p"):
            run.add_points("p", a=np.zeros((2, 3)))
        with pytest.raises(ValueError, match="not safely castable"):
            run.add_points("p", a=np.zeros((1, 3)), b=np.array(["s"]))
        run.add_points("p", a=np.zeros((1, 3), dtype=np.int32), b=np.zeros(1, np.float32))  # safe cast
        with pytest.raises(ValueError, match="cannot be stored"):
            run.put_array("o", np.array([object()]))
        with pytest.raises(ValueError, match="not a valid name"):
            run.add_points("bad name", a=[1])
        with pytest.raises(ValueError, match="JSON"):
            run.put_result({"x": object()})
    assert store.load(run.id).tables == {"p": 3}
    with pytest.raises(ValueError, match="already completed"):
        run.finish()
    with pytest.raises(ValueError, match="cannot add data"):
        run.add_points("p", a=np.zeros((1, 3)), b=np.zeros(1))


# --------------------------------------------------------------------- status marking


def test_exception_marks_failed_and_reraises(store):
    with pytest.raises(RuntimeError, match="chip on fire"):
        with store.run("program") as run:
            run.add_points("p", a=np.arange(4.0))
            raise RuntimeError("chip on fire")
    got = store.load(run.id)
    assert got.status == "failed" and got.reason == "RuntimeError: chip on fire"
    assert got.points("p")["a"].tolist() == [0, 1, 2, 3]  # data before the failure kept


def test_keyboard_interrupt_marks_aborted(store):
    with pytest.raises(KeyboardInterrupt):
        with store.run("characterize") as run:
            run.add_points("p", a=np.arange(3.0))
            raise KeyboardInterrupt
    got = store.load(run.id)
    assert got.status == "aborted" and "interrupted" in got.reason
    assert got.tables == {"p": 3}


def test_left_running_run_shows_interrupted(store, tmp_path):
    run = store.start_run("x")
    run.add_points("p", a=np.arange(3.0))
    assert store.load(run.id).status == "running"
    store.close()  # closed without finishing: the run was left behind
    again = RunStore(store.path)
    got = again.load(run.id)
    assert (got.stored_status, got.status) == ("running", "interrupted")
    assert got.tables == {"p": 3}  # close committed the data
    again.close()


def test_commit_cadence_without_further_writes(tmp_path):
    """A lone batch is committed by the flusher within the interval, no later call needed."""
    s = RunStore(tmp_path / "c.sqlite", commit_interval=0.2)
    run = s.start_run("x")
    run.add_points("p", a=np.arange(5.0))
    reader = RunStore(tmp_path / "c.sqlite", create=False)
    assert reader.load(run.id).tables.get("p", 0) == 0  # not yet committed
    deadline = time.monotonic() + 10  # a loaded machine may delay the flusher thread
    while reader.load(run.id).tables.get("p", 0) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reader.load(run.id).tables == {"p": 5}
    assert run.committed == {"p": 5}
    run.finish()
    assert reader.load(run.id).status == "completed"
    reader.close()
    s.close()


# --------------------------------------------------------------------- errors


def test_unwritable_and_read_only_paths(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    bad = blocker / "runs.sqlite"
    with pytest.raises(StoreError, match=str(bad)) as info:
        RunStore(bad)
    assert isinstance(info.value, OSError) and "\n" not in str(info.value)
    with pytest.raises(StoreError, match="no run store"):
        RunStore(tmp_path / "missing.sqlite", create=False)
    with pytest.raises(StoreError, match="not a labkit run store"):
        RunStore(blocker)

    path = tmp_path / "ro.sqlite"
    RunStore(path).close()
    ro = RunStore(path, readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        ro.start_run("x")
    ro.readonly = False  # bypass the guard: SQLite itself refuses the write
    with pytest.raises(StoreError, match=rf"{path}.*read-only"):
        ro.start_run("x")
    ro.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_file_is_store_error(tmp_path):
    d = tmp_path / "locked"
    d.mkdir()
    RunStore(d / "runs.sqlite").close()
    os.chmod(d / "runs.sqlite", 0o444)
    os.chmod(d, 0o555)
    try:
        with pytest.raises(StoreError, match=str(d / "runs.sqlite")):
            RunStore(d / "runs.sqlite").start_run("x")
    finally:
        os.chmod(d, 0o755)


def test_full_disk_is_one_line_error_and_keeps_committed_data(tmp_path):
    path = tmp_path / "full.sqlite"
    s = RunStore(path)
    rng = np.random.default_rng(0)
    stored = 0
    with pytest.raises(StoreError, match="disk full") as info:
        with s.run("characterize") as run:
            run.add_points("vmm", **_batch(rng, 50))
            run.flush()
            stored += 50
            pages = s._conn.execute("PRAGMA page_count").fetchone()[0]
            s._conn.execute(f"PRAGMA max_page_count={pages + 40}")  # a genuine SQLITE_FULL soon
            for _ in range(100):
                run.add_points("vmm", **_batch(rng, 50))
                run.flush()
                stored += 50
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert 50 <= stored < 5050
    s.close()
    again = RunStore(path)
    got = again.load(run.id)
    assert got.tables["vmm"] == stored
    assert got.points("vmm")["inputs"].shape == (stored, 16)
    assert got.status in ("failed", "interrupted")
    again.close()


# --------------------------------------------------------------------- HDF5 export


def test_export_hdf5_is_readable_by_h5py(store, tmp_path):
    rng = np.random.default_rng(2)
    b = _batch(rng, 20)
    with store.run("calibrate", "sim://?seed=1", "chip-1", settings={"T_s": 1e-6},
                   provenance={"station": "x" * 100_000}, seeds={"s": 1}) as run:
        run.add_points("vmm", **b)
        run.put_array("currents", np.eye(16) * 1e-7)
        run.put_array("names", np.array(["a", "bc"]))
        run.put_result({"rmse": 0.01})
    out = store.export_hdf5(run.id, tmp_path / "run.h5")
    with h5py.File(out, "r") as f:
        assert f.attrs["kind"] == "calibrate" and f.attrs["status"] == "completed"
        assert f.attrs["id"] == run.id and f.attrs["chip_id"] == "chip-1"
        assert json.loads(f.attrs["settings"]) == {"T_s": 1e-6}
        assert json.loads(f.attrs["result"]) == {"rmse": 0.01}
        assert len(json.loads(f.attrs["provenance"])["station"]) == 100_000
        np.testing.assert_array_equal(f["points/vmm/inputs"][()], b["inputs"])
        assert f["points/vmm/outputs"].dtype == np.float32
        np.testing.assert_array_equal(f["arrays/currents"][()], np.eye(16) * 1e-7)
        assert [x.decode() for x in f["arrays/names"][()]] == ["a", "bc"]
    assert not (tmp_path / "run.h5.part").exists()
    with pytest.raises(StoreError, match="does not exist"):
        store.export_hdf5(run.id, tmp_path / "nodir" / "x.h5")
    with pytest.raises(ValueError, match="no run 99"):
        store.export_hdf5(99, tmp_path / "y.h5")


# --------------------------------------------------------------------- CLI


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def _main(capsys, *args):
    """The same CLI in-process (cheaper than a subprocess per call): (rc, stdout, stderr)."""
    from labkit.cli import main

    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_list_show_export(tmp_path, capsys, monkeypatch):
    db = tmp_path / "cli.sqlite"
    with RunStore(db) as s:
        with s.run("characterize", "sim://?seed=3", "chip-3") as run:
            run.add_points("vmm", a=np.arange(12.0))
            run.put_array("m", np.ones((2, 2)))
        with pytest.raises(KeyboardInterrupt):
            with s.run("program", "sim://", "chip-3"):
                raise KeyboardInterrupt
    r = _cli("runs", "list", "--out", str(db), "--json")  # the real entry point, once
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert [(x["id"], x["kind"], x["status"], x["points"]) for x in runs] == [
        (1, "characterize", "completed", {"vmm": 12}), (2, "program", "aborted", {})]
    r = _cli("runs", "show", "42", "--out", str(db))
    assert r.returncode == 2 and r.stderr.strip() == f"labkit runs: error: no run 42 in run store {db}"

    rc, out, err = _main(capsys, "runs", "show", "1", "--out", str(db), "--json")
    assert rc == 0, err
    shown = json.loads(out)["run"]
    assert shown["chip_id"] == "chip-3" and shown["arrays"] == {"m": {"dtype": "float64", "shape": [2, 2]}}
    rc, out, err = _main(capsys, "runs", "show", "latest", "--out", str(db))  # human-readable
    assert rc == 0 and "aborted" in out and "program" in out
    rc, out, err = _main(capsys, "runs", "--out", str(db), "list")  # --out before the action
    assert rc == 0 and "characterize" in out and "completed" in out
    h5 = tmp_path / "one.h5"
    rc, out, err = _main(capsys, "runs", "export", "1", "--hdf5", str(h5), "--out", str(db), "--json")
    assert rc == 0, err
    assert json.loads(out)["hdf5"] == str(h5)
    with h5py.File(h5) as f:
        assert f["points/vmm/a"].shape == (12,)
    monkeypatch.setenv("LABKIT_STORE", str(db))  # --out defaults to $LABKIT_STORE
    rc, out, err = _main(capsys, "runs", "list", "--json")
    assert rc == 0 and len(json.loads(out)["runs"]) == 2
    for args, msg in [(("runs", "list", "--out", str(tmp_path / "none.sqlite")), "no run store"),
                      (("runs", "show", "abc", "--out", str(db)), "no run 'abc'"),
                      (("runs", "list", "--limit", "0"), "--limit 0")]:
        rc, out, err = _main(capsys, *args)
        assert rc == 2 and msg in err, (args, err)
        assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------- crashes


class Child:
    """The writer helper in a real subprocess; its stdout lines are collected live."""

    def __init__(self, db: Path, interval: float):
        self.proc = subprocess.Popen([sys.executable, str(WRITER), str(db), "--interval", str(interval)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     # Ctrl-C reaches the writer even where this test runs with SIGINT
                                     # ignored (a background job), as it would a user's process
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def wait_for(self, pred, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"child did not get there; rc={self.proc.poll()} "
                             f"stderr={self.proc.stderr.read() if self.proc.poll() is not None else ''}")

    def commits(self) -> list[int]:
        return [int(x.split()[1]) for x in self.lines if x.startswith("committed ")]

    def writes(self) -> list[tuple[int, float]]:
        return [(int(x.split()[1]), float(x.split()[2])) for x in self.lines if x.startswith("wrote ")]

    def run_id(self) -> int:
        return next(int(x.split()[1]) for x in self.lines if x.startswith("run "))

    def finish(self):
        rc = self.proc.wait(timeout=30)
        self.reader.join(timeout=10)
        return rc


def _assert_exact_prefix(pts, m):
    idx = np.arange(m, dtype=np.float64)
    np.testing.assert_array_equal(pts["t"], idx)
    np.testing.assert_array_equal(pts["inputs"], idx[:, None] + np.arange(16) / 100.0)
    np.testing.assert_array_equal(pts["outputs"], -pts["inputs"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_writer_is_aborted_with_every_point(tmp_path, sig):
    db = tmp_path / "int.sqlite"
    child = Child(db, interval=1.0)  # the default cadence
    child.wait_for(lambda: len(child.commits()) >= 1)
    time.sleep(0.5)  # mid-interval: about half a second of points is not committed yet
    child.proc.send_signal(sig)
    rc = child.finish()
    assert rc == 130 and "aborted" in child.lines, child.proc.stderr.read()
    handed = child.writes()[-1][0]
    with RunStore(db, create=False) as s:
        got = s.load(child.run_id())
        assert got.status == "aborted" and sig.name in got.reason
        m = got.tables["vmm"]
        # everything handed to the store is there (a batch whose 'wrote' line the signal
        # pre-empted may be there too); nothing is half-written
        assert handed <= m <= handed + 20
        _assert_exact_prefix(got.points("vmm"), m)


def test_killed_writer_keeps_every_committed_point(tmp_path):
    db = tmp_path / "kill.sqlite"
    interval = 0.3
    child = Child(db, interval=interval)
    child.wait_for(lambda: len(child.commits()) >= 1)
    time.sleep(1.7)  # not tied to the commit times: several intervals of writing
    kill_time = time.time()
    child.proc.send_signal(signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    committed = max(child.commits())
    writes = child.writes()
    with RunStore(db, create=False) as s:
        got = s.load(child.run_id())
        assert (got.stored_status, got.status) == ("running", "interrupted")
        m = got.tables["vmm"]
        assert committed <= m <= writes[-1][0]  # every point reported committed is readable
        # at most the last interval (plus scheduling slack) is lost
        old = [n for n, t in writes if t <= kill_time - interval - 1.0]
        assert not old or m >= max(old)
        _assert_exact_prefix(got.points("vmm"), m)
