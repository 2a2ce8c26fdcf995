"""Chip-state truth under SIGKILL: the record never claims more than the chip holds.

A child process (started by a fork server, so each start is cheap) runs a programming
job through :class:`KillAt`, which SIGKILLs the child right before or right after its
n-th chip call (read, pulse or erase), after dumping the emulated chip's hidden truth.
For every call index of each scenario and both sides of the call, the parent loads the
chip-state file and checks it against that truth:

- every cell the file calls ``done`` is within tolerance on the chip (0 false claims);
- the cells of an erase in flight are ``unknown``, the file never says ``complete``;
- pulse and erase counts are bounds, never short:
  ``counted - unconfirmed <= applied <= counted`` (per cell, per row, per chip);
- a refresh from the killed record finishes the job it was killed in (never the
  weights of an earlier record), reading unknown cells before touching them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

import numpy as np
import pytest

import labkit
from labkit.program import ChipState, WeightWindow, program_array, refresh

TOL = 0.01
SEED = 21
CALLS = ("read_currents", "program_pulses", "erase_rows")


class KillAt:
    """A backend that delegates to ``inner`` and SIGKILLs its own process right
    ``when`` ("before" / "after") its ``n``-th chip call once :attr:`armed`, first writing
    the hidden chip's truth and the operations really applied to ``truth_path`` (tests only)."""

    def __init__(self, inner, n: int, when: str, truth_path: str):
        self.inner, self.n, self.when, self.truth_path = inner, n, when, truth_path
        self.armed, self.count = False, 0
        self.pulses = np.zeros((16, 16), dtype=int)  # applied, over the chip's life in this process
        self.erases = np.zeros(16, dtype=int)
        self.base = np.zeros((16, 16), dtype=int)

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in CALLS:
            return attr

        def call(*args):
            self.count += self.armed
            hit = self.armed and self.count == self.n
            if hit and self.when == "before":
                self.die(name)
            out = attr(*args)
            if name == "program_pulses":
                np.add.at(self.pulses, tuple(np.asarray(args[0]).T), 1)
            elif name == "erase_rows":
                np.add.at(self.erases, np.asarray(args[0]), 1)
            if hit and self.when == "after":
                self.die(name)
            return out

        return call

    def die(self, call: str) -> None:
        chip = self.inner.inner.chip
        np.savez(self.truth_path, currents=chip.currents(), overdrive_v=chip.overdrive_v,
                 programmed_at_s=chip.programmed_at_s, time_s=chip.time_s, pulses=self.pulses,
                 erases=self.erases, base=self.base, call=call)
        os.kill(os.getpid(), signal.SIGKILL)


def targets(backend, rows, seed) -> np.ndarray:
    win = WeightWindow.for_backend(backend)
    t = np.full((16, 16), np.nan)
    rng = np.random.default_rng(seed)
    t[rows] = np.exp(rng.uniform(np.log(win.i_min_a), np.log(win.i_max_a), (len(rows), 16)))
    return t


ROWS = [2, 7, 11]


def scenario(name: str, n: int, when: str, path: str, truth_path: str) -> None:
    """The child: set up, arm the kill, run the scanned job (n = 0: never killed)."""
    with labkit.open_backend(f"sim://?seed={SEED}") as backend:
        kb = KillAt(backend, n, when, truth_path)
        if name == "program":
            kb.armed = True
            program_array(kb, targets(backend, ROWS, 0), state_path=path)
        elif name == "reprogram":  # weights A complete on record, then weights B
            program_array(kb, targets(backend, ROWS, 0), state_path=path)
            kb.base, kb.armed = kb.pulses.copy(), True
            program_array(kb, targets(backend, ROWS, 1), state_path=path)
        elif name == "refresh":  # a chip that sat on the shelf: partial erases and touch-ups
            program_array(kb, targets(backend, ROWS, 0), state_path=path)
            backend.inner.advance_time_s(1e6)
            kb.armed = True
            refresh(kb, path)
        elif name == "ispp":
            kb.armed = True
            program_array(kb, targets(backend, ROWS, 2), state_path=path, algorithm="ispp")
        if n == 0:  # the reference run: how many calls the scanned job makes
            with open(truth_path, "w") as f:
                f.write(str(kb.count))


@pytest.fixture
def tmp_path(tmp_path_factory):
    """Records on tmpfs where there is one: a SIGKILL loses nothing the page cache holds,
    so fsync is not what is tested here, and tmpfs makes it free."""
    import tempfile

    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    if shm is None:
        yield tmp_path_factory.mktemp("kill")
        return
    import pathlib
    import shutil

    d = pathlib.Path(tempfile.mkdtemp(prefix="labkit-kill-", dir=shm))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ctx():
    c = multiprocessing.get_context("forkserver")
    c.set_forkserver_preload(["labkit", "labkit.program", "simulator.emulated", "tests.test_chipstate_truth"])
    return c


def run_child(ctx, *args) -> int:
    p = ctx.Process(target=scenario, args=args)
    p.start()
    p.join(60)
    assert p.exitcode is not None, "child hung"
    return p.exitcode


def reopen(truth) -> tuple:
    """A backend on the killed child's chip as it was when it died (the bench survives the host)."""
    from simulator.emulated import EmulatedArray, VirtualChip

    chip = VirtualChip(seed=SEED)
    chip.overdrive_v = truth["overdrive_v"].copy()
    chip.programmed_at_s = truth["programmed_at_s"].copy()
    chip.time_s = float(truth["time_s"])
    labkit.register_scheme("killed", lambda uri, opts: EmulatedArray(chip, uri=f"sim://?seed={SEED}"))
    return labkit.open_backend("killed://"), chip


def check_record(st: ChipState, truth, name: str) -> dict:
    """Figures of one killed record against the chip's truth (asserts the hard promises)."""
    assert st.run_status != "complete"
    done = st.status == "done"
    err = truth["currents"] / st.targets_a - 1
    false_claims = int(np.sum(done & ~(np.abs(err) <= st.tolerance)))
    if str(truth["call"]) == "erase_rows":
        assert st.intent is not None and st.intent["op"] == "erase"
        live = np.isin(st.status, ("pending", "done", "pulsing", "unknown"))
        rows = np.zeros(16, bool)
        rows[st.intent["rows"]] = True
        assert np.all(st.status[rows][live[rows]] == "unknown")
    applied = truth["pulses"] - truth["base"]
    assert np.all(st.pulses - st.pulses_unconfirmed <= applied) and np.all(applied <= st.pulses)
    erased = truth["erases"]
    rows_counted, rows_unconfirmed = np.array(st.row_erases), np.array(st.row_erases_unconfirmed)
    assert np.all(rows_counted - rows_unconfirmed <= erased) and np.all(erased <= rows_counted)
    total = int(truth["pulses"].sum())
    assert st.program_cycles - int(st.pulses_unconfirmed.sum()) <= total <= st.program_cycles
    assert st.erase_cycles - int(rows_unconfirmed.sum()) <= int(erased.sum()) <= st.erase_cycles
    return {"false_claims": false_claims, "done": int(done.sum())}


@pytest.mark.parametrize("name, stride, both, resume_every", [
    ("program", 1, True, 6), ("reprogram", 1, False, 5), ("refresh", 1, False, 8), ("ispp", 10, False, 0)])
def test_sigkill_at_every_call_boundary_leaves_a_record_that_never_lies(tmp_path, ctx, name, stride, both,
                                                                        resume_every):
    """Every call index (every ``stride``-th for the long ISPP job), killed right before
    and right after the call (``both``) or on alternating sides, to keep the scan short."""
    ref = tmp_path / "ref.json"
    assert run_child(ctx, name, 0, "before", str(ref), str(tmp_path / "calls.txt")) == 0
    calls = int((tmp_path / "calls.txt").read_text())
    assert calls > 10
    scanned, false_claims, resumed = 0, 0, 0
    for n in range(1, calls + 1, stride):
        for when in ("before", "after") if both else (("before", "after")[(n // stride) % 2],):
            path, truth_path = tmp_path / f"{n}{when}.json", tmp_path / f"{n}{when}.npz"
            assert run_child(ctx, name, n, when, str(path), str(truth_path)) == -signal.SIGKILL
            truth = np.load(truth_path)
            st = ChipState.load(path)  # the first erase is announced: a record exists from the start
            false_claims += check_record(st, truth, name)["false_claims"]
            scanned += 1
            if resume_every and (n % resume_every == 0):
                # the record is enough to finish the job it was killed in
                opened, chip = reopen(truth)
                with opened as backend:
                    result = refresh(backend, path)
                ok = result.status == "done"
                rel = chip.currents()[result.cells[ok, 0], result.cells[ok, 1]] / result.targets_a[ok] - 1
                assert np.allclose(result.targets_a, st.targets_a[np.isfinite(st.targets_a)])
                assert np.mean(np.abs(rel) <= TOL) >= 31 / 32 and np.max(np.abs(rel)) <= 1.3 * TOL
                assert ChipState.load(path).run_status == "complete"
                resumed += 1
    print(f"\n{name}: {calls} calls, {scanned} kill points scanned, {false_claims} false claims, "
          f"{resumed} resumed by refresh")
    assert false_claims == 0


def test_sigkill_after_the_first_block_erase_of_a_reprogramming_never_says_complete(tmp_path, ctx):
    """The issue's scenario: weights A programmed, re-programming with B killed right after
    its first erase. The record names B, says the erased rows are unknown, and a refresh
    writes B (not A) after reading every cell."""
    path, truth_path = tmp_path / "s.json", tmp_path / "t.npz"
    assert run_child(ctx, "reprogram", 1, "after", str(path), str(truth_path)) == -signal.SIGKILL
    truth = np.load(truth_path)
    assert str(truth["call"]) == "erase_rows"
    st = ChipState.load(path)
    assert st.run_status == "programming" and st.count("done") == 0
    assert np.all(st.status[ROWS] == "unknown") and st.intent["rows"] == ROWS
    opened, chip = reopen(truth)
    with opened as backend:
        a, b = targets(backend, ROWS, 0), targets(backend, ROWS, 1)
        assert np.allclose(st.targets_a[ROWS], b[ROWS])
        assert np.all(chip.currents()[ROWS] > 10 * b[ROWS])  # the chip really is erased
        reads = []
        inner = backend.inner
        backend_read = inner.read_currents
        inner.read_currents = lambda cells: reads.append(len(cells)) or backend_read(cells)
        applied = chip.pulses_applied
        pulses_before_first_read = []
        inner_program = inner.program_pulses
        inner.program_pulses = lambda *a: pulses_before_first_read.append(len(reads)) or inner_program(*a)
        refresh(backend, path)
        assert reads and min(pulses_before_first_read) >= 1 and chip.pulses_applied > applied
        rel_b = chip.currents()[ROWS] / b[ROWS] - 1
        assert np.mean(np.abs(rel_b) <= TOL) >= 31 / 32
        assert np.mean(np.abs(chip.currents()[ROWS] / a[ROWS] - 1) <= TOL) < 0.2  # not the old weights
    done = ChipState.load(path)
    assert done.run_status == "complete" and done.erase_cycles >= 2 * len(ROWS)
