"""Kill a real ``labkit characterize`` process midway: every committed point stays readable.

The child is ``python -m labkit.cli characterize --backend sim:// --out DB`` with a large
random-pattern set, so that it is surely still measuring when the signal arrives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from labkit import measure as ch
from labkit.store import RunStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATTERNS = 200_000


def start(db) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "labkit.cli", "characterize", "--backend", "sim://", "--out", str(db),
         "--no-report", "--patterns", str(PATTERNS)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # Ctrl-C works even if this
    # test runs where SIGINT is ignored (a background job): the child must see it as a user would


def wait_for_points(proc, db, table: str = "vmm_random", minimum: int = 1024, timeout: float = 60.0) -> int:
    """Committed points of ``table`` once there are at least ``minimum`` (read by another connection)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        assert proc.poll() is None, f"child ended early: {proc.communicate()}"
        if db.exists():
            try:
                with RunStore(db, create=False, readonly=True) as store:
                    runs = store.list_runs()
                    if runs and runs[-1].tables.get(table, 0) >= minimum:
                        return runs[-1].tables[table]
            except Exception:  # the file is being created
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {minimum} committed {table} points within {timeout} s")


def check_points(run, at_least: int) -> None:
    """Every committed table is whole, and vmm_random holds exactly the first patterns."""
    for table, n in run.tables.items():
        cols = run.points(table)
        assert all(len(v) == n for v in cols.values()), table
    n = run.tables["vmm_random"]
    assert n >= at_least
    pts = run.points("vmm_random")
    expected = ch.random_patterns(PATTERNS, 16, 0.4, 8, seed=0)[:n]
    np.testing.assert_array_equal(pts["x"], expected)
    base = run.points("baseline")["t"].mean(axis=0)
    np.testing.assert_allclose(pts["y"], base - pts["t"], atol=1e-15)
    assert np.all(np.isfinite(pts["t"])) and run.arrays["cell_current_a"].shape == (16, 16)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_characterization_is_aborted_with_its_points(tmp_path, sig):
    db = tmp_path / "runs.sqlite"
    proc = start(db)
    seen = wait_for_points(proc, db)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    with RunStore(db, create=False, readonly=True) as store:
        run = store.load("latest")
        assert run.status == "aborted" and run.stored_status == "aborted"
        assert "interrupted" in run.reason
        assert run.tables["vmm_random"] < PATTERNS  # it was midway
        check_points(run, seen)


def test_killed_characterization_keeps_every_committed_point(tmp_path):
    db = tmp_path / "runs.sqlite"
    proc = start(db)
    seen = wait_for_points(proc, db)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with RunStore(db, create=False, readonly=True) as store:
        run = store.load("latest")
        assert run.stored_status == "running" and run.status == "interrupted"
        check_points(run, seen)
