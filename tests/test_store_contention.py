"""The run store under contention: a writer paused with SIGSTOP (what Ctrl-Z does) must
not block another writer for more than a few seconds, and if it holds the write lock
the other writer gets a one-line StoreError naming it. Real subprocesses, real signals,
SQLite files on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from labkit.store import LOCK_WAIT_S, RunStore, StoreError, StoreLockedError, write_lock_holder

HERE = Path(__file__).parent
WRITER = HERE / "helpers_store_writer.py"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGSTOP and /proc")


def _second_writer(db: Path) -> float:
    """Start, fill and finish a run in this process; the seconds it took."""
    t0 = time.monotonic()
    with RunStore(db, commit_interval=0.05) as s, s.run("second") as run:
        run.add_points("p", a=np.arange(10.0))
        run.flush()
    return time.monotonic() - t0


def _read_line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return line.strip()
        if proc.poll() is not None:
            break
    raise AssertionError(f"child said nothing; rc={proc.poll()}")


def test_writer_stopped_between_commits_blocks_nobody(tmp_path):
    """A labkit writer appending flat out, stopped five times: the lock is free each time
    (transactions are short), and a second writer starts, writes and finishes at once."""
    db = tmp_path / "busy.sqlite"
    child = subprocess.Popen([sys.executable, str(WRITER), str(db), "--interval", "0.2", "--sleep", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert _read_line(child).startswith("run ")
        waits = []
        for _ in range(5):
            time.sleep(0.3)
            os.kill(child.pid, signal.SIGSTOP)
            while write_lock_holder(db) is not None:  # stopped inside a commit (ms): that is
                os.kill(child.pid, signal.SIGCONT)    # the next test's case; stop it elsewhere
                time.sleep(0.01)
                os.kill(child.pid, signal.SIGSTOP)
            waits.append(_second_writer(db))
            os.kill(child.pid, signal.SIGCONT)
        assert max(waits) < 1.0, waits
    finally:
        child.kill()
        child.wait(timeout=30)
    with RunStore(db, create=False, readonly=True) as s:
        runs = s.list_runs()
        assert [r.kind for r in runs].count("second") == 5
        assert all(r.status == "completed" for r in runs if r.kind == "second")


HOLDER = textwrap.dedent("""
    import os, signal, sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE meta SET value=value WHERE key='schema_version'")
    os.write(1, b"locked\\n")
    os.kill(os.getpid(), signal.SIGSTOP)   # paused inside its transaction, like Ctrl-Z
    db.execute("COMMIT")
    os.write(1, b"committed\\n")
""")


def test_writer_stopped_inside_its_transaction_is_named_within_seconds(tmp_path):
    db = tmp_path / "held.sqlite"
    with RunStore(db) as s, s.run("first") as run:  # a store with a run in it
        run.add_points("p", a=np.arange(3.0))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert _read_line(holder) == "locked"
        deadline = time.monotonic() + 10
        while open(f"/proc/{holder.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # readers are not blocked at all (WAL)
        t0 = time.monotonic()
        with RunStore(db, create=False, readonly=True) as r:
            assert r.load("latest").tables == {"p": 3}
        assert time.monotonic() - t0 < 1.0
        # a writer waits LOCK_WAIT_S at most, then one line naming the stopped process
        s = RunStore(db)
        t0 = time.monotonic()
        with pytest.raises(StoreLockedError) as info:
            s.start_run("second")
        waited = time.monotonic() - t0
        msg = str(info.value)
        assert LOCK_WAIT_S - 0.5 <= waited <= LOCK_WAIT_S + 2.0, waited
        assert isinstance(info.value, StoreError) and "\n" not in msg
        assert f"pid {holder.pid}" in msg and "python" in msg and "stopped" in msg and str(db) in msg
        # while that process stays stopped, the next attempt fails at once
        t0 = time.monotonic()
        with pytest.raises(StoreLockedError):
            s.start_run("second")
        assert time.monotonic() - t0 < 1.0
        # continued, it commits and lets go: the same store writes again
        os.kill(holder.pid, signal.SIGCONT)
        assert _read_line(holder) == "committed"
        assert holder.wait(timeout=30) == 0
        with s.run("second") as run:
            run.add_points("p", a=np.arange(4.0))
        assert s.load("latest").tables == {"p": 4}
        s.close()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_staged_points_survive_a_lock_timeout(tmp_path):
    """Points handed to the store while the lock was held are committed once it is free."""
    db = tmp_path / "later.sqlite"
    s = RunStore(db, commit_interval=60)
    run = s.start_run("x")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert _read_line(holder) == "locked"
        run.add_points("p", a=np.arange(7.0))  # staged: no lock needed yet
        with pytest.raises(StoreLockedError):
            run.flush()
        assert run.committed == {}
        os.kill(holder.pid, signal.SIGKILL)  # killed: the OS drops its lock, SQLite rolls it back
        holder.wait(timeout=30)
        run.finish()
        assert run.committed == {"p": 7}
        assert s.load(run.id).tables == {"p": 7} and s.load(run.id).status == "completed"
    finally:
        holder.kill()
        holder.wait(timeout=30)
        s.close()
