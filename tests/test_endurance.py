"""Endurance from the chip-state files: every programming adds the erases and pulses it
applied to its chip's record (bounds, never short, the confirmed part never more than
applied, also across a SIGKILL), and a deployment over the budget is refused before any
pulse with one line naming the chip, the cycles used, the cycles needed and the budget."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import labkit
from labkit.backend import open_chips
from labkit.deploy import deploy
from labkit.deploy.endurance import EnduranceError, check, state_path
from labkit.deploy.multiplex import ChipPool, chip_needs, multiplexed
from labkit.nn import AnalogConfig, ChipTile, TrainingNoise, analog_layers
from labkit.program import ChipState, WeightWindow, program_array, refresh
from labkit.train.training import hardware_aware

CALLS = ("read_currents", "program_pulses", "erase_rows")
KILL_LOCK = threading.Lock()


class Counting:
    """A backend that counts the erases (per row) and pulses (per cell) it passed on,
    and SIGKILLs its process right before or after the ``kill_at``-th erase or pulse call
    of all the ``Counting`` backends of ``shared`` (first saving ``shared``'s counts to ``truth``)."""

    def __init__(self, inner, shared: dict):
        self.inner, self.shared = inner, shared
        self.pulses = np.zeros((16, 16), dtype=int)
        self.erases = np.zeros(16, dtype=int)
        self.calls = 0
        shared.setdefault("chips", []).append(self)

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in CALLS:
            return attr

        def call(*args):
            sh = self.shared
            with KILL_LOCK:  # kill points: the erase and pulse calls
                sh["n"] = sh.get("n", 0) + (name != "read_currents")
                hit = name != "read_currents" and sh["n"] == sh.get("kill_at")
            if hit and sh["when"] == "before":
                self.die()
            out = attr(*args)
            self.calls += name != "read_currents"
            if name == "program_pulses":
                np.add.at(self.pulses, tuple(np.asarray(args[0]).T), 1)
            elif name == "erase_rows":
                np.add.at(self.erases, np.asarray(args[0]), 1)
            if hit and sh["when"] == "after":
                self.die()
            return out

        return call

    def die(self) -> None:
        with KILL_LOCK:  # the other chip's thread waits here: its counts stay as saved
            chips = self.shared["chips"]
            np.savez(self.shared["truth"], ids=np.array([c.identity.chip_id for c in chips]),
                     pulses=np.stack([c.pulses for c in chips]), erases=np.stack([c.erases for c in chips]),
                     calls=self.shared["n"])
            os.kill(os.getpid(), signal.SIGKILL)


def _net(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 5))  # 2x2 + 1x1 = 5 tiles
    x = torch.rand(48, 20)
    ds = torch.utils.data.TensorDataset(x, net(x).argmax(dim=1))
    return hardware_aware(net, ds, None, AnalogConfig(noise=TrainingNoise(noise_std_s=0.0))), x


def _targets(backend, rows, seed) -> np.ndarray:
    win = WeightWindow.for_backend(backend)
    t = np.full((16, 16), np.nan)
    t[rows] = np.exp(np.random.default_rng(seed).uniform(np.log(win.i_min_a), np.log(win.i_max_a), (len(rows), 16)))
    return t


def test_every_programming_adds_its_erases_and_pulses_per_row_and_cell_to_the_record(tmp_path):
    path = tmp_path / "chip.json"
    with labkit.open_backend("sim://?seed=31") as raw:
        b = Counting(raw, {})
        r1 = program_array(b, _targets(raw, [1, 4], 0), state_path=path)
        r2 = program_array(b, _targets(raw, [4, 9], 1), state_path=path)  # a new record of the same chip
        raw.inner.advance_time_s(1e6)
        refresh(b, path)
    st = ChipState.load(path)
    assert np.array_equal(st.life_pulses, b.pulses) and not st.life_pulses_unconfirmed.any()
    assert np.array_equal(st.row_erases, b.erases) and st.erase_cycles == b.erases.sum()
    assert st.program_cycles == b.pulses.sum() == st.life_pulses.sum()
    assert st.life_pulses[1].sum() == r1.pulses[r1.cells[:, 0] == 1].sum()  # row 1: the first job only
    assert st.life_pulses[4].sum() > r2.pulses[r2.cells[:, 0] == 4].sum()  # row 4: both jobs
    assert st.cycles_used == b.erases.max() >= 2  # row 4: erased by both jobs


def _deploy_child(folder: str, truth: str, kill_at: int, when: str) -> None:
    """A time-multiplexed deployment on two chips, SIGKILLed at its ``kill_at``-th erase or pulse
    (0: never), each chip's programmings recorded in ``folder``."""
    model, x = _net()
    cfg = analog_layers(model)[0][1].config
    shared = {"truth": truth, "kill_at": kill_at, "when": when}
    with open_chips("sim://?seed=40&preset=quiet", 2) as chips:
        pool = ChipPool([ChipTile(Counting(c, shared), cfg) for c in chips])
        pool.record_in(folder)
        with torch.no_grad():
            multiplexed(model, pool)(x)
        with KILL_LOCK:
            shared["kill_at"] = None
        if kill_at == 0:
            Counting.die(pool.chips[0].backend)  # the reference: its calls and counts


def test_a_sigkilled_deployment_leaves_records_that_count_every_applied_cycle_and_claim_no_more(tmp_path,
                                                                                              monkeypatch):
    # the fork server imports from the current folder (sys.path ''): the repository's, whatever
    # folder an earlier test left the process in
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["labkit", "labkit.deploy", "tests.test_endurance"])

    def child(folder, n, when, truth="truth.npz"):
        folder.mkdir(exist_ok=True)
        p = ctx.Process(target=_deploy_child, args=(str(folder), str(folder / truth), n, when))
        p.start()
        p.join(120)
        assert p.exitcode == -signal.SIGKILL
        return np.load(folder / truth)

    ref = child(tmp_path / "ref", 0, "after")
    rng = random.Random(os.getpid())
    total = None
    for i in range(4):
        folder = tmp_path / f"k{i}"
        truth = child(folder, rng.randint(1, int(ref["calls"])), ("after", "before")[i % 2])
        for cid, pulses, erases in zip(truth["ids"], truth["pulses"], truth["erases"]):
            p = state_path(folder, str(cid))
            if not p.exists():  # killed before this chip's first erase was announced
                assert pulses.sum() == erases.sum() == 0
                continue
            st = ChipState.load(p)  # atomic writes: always a whole record
            life, unconf = st.life_pulses, st.life_pulses_unconfirmed
            assert np.all(life - unconf <= pulses) and np.all(pulses <= life)
            rows, rows_unconf = np.array(st.row_erases), np.array(st.row_erases_unconfirmed)
            assert np.all(rows - rows_unconf <= erases) and np.all(erases <= rows)
            assert st.program_cycles - unconf.sum() <= pulses.sum() <= st.program_cycles
            assert st.cycles_used >= erases.max()
            assert unconf.sum() + rows_unconf.sum() <= 16 * 16  # at most the one call in flight
        total = truth
    assert total is not None and ref["pulses"].sum() > 0
    # the next deployment on the same chips adds to the last killed records (killed right
    # before a call: its counts are in flight, and stay so on the new records)
    again = child(folder, 0, "after", "again.npz")
    for cid, p0, e0, p1, e1 in zip(total["ids"], total["pulses"], total["erases"], again["pulses"], again["erases"]):
        st = ChipState.load(state_path(folder, str(cid)))
        life, unconf = st.life_pulses, st.life_pulses_unconfirmed
        assert np.all(life - unconf <= p0 + p1) and np.all(p0 + p1 <= life)
        rows, rows_unconf = np.array(st.row_erases), np.array(st.row_erases_unconfirmed)
        assert np.all(rows - rows_unconf <= e0 + e1) and np.all(e0 + e1 <= rows)
        assert st.erase_cycles == rows.sum() and st.program_cycles == life.sum()
    # uninterrupted: the records are exact, one erase per used row and programming at least
    for cid, pulses, erases in zip(ref["ids"], ref["pulses"], ref["erases"]):
        st = ChipState.load(state_path(tmp_path / "ref", str(cid)))
        assert np.array_equal(st.life_pulses, pulses) and np.array_equal(st.row_erases, erases)
    assert [ChipState.load(state_path(tmp_path / "ref", str(c))).cycles_used >= n
            for c, n in zip(ref["ids"], (3, 2))] == [True, True]


def test_a_deployment_over_the_budget_is_refused_before_any_pulse(tmp_path):
    model, x = _net()
    cfg = analog_layers(model)[0][1].config
    with open_chips("sim://?seed=50&preset=quiet", 2) as chips:
        shared: dict = {}
        pool = ChipPool([ChipTile(Counting(c, shared), cfg) for c in chips])
        pool.record_in(tmp_path)
        with torch.no_grad():
            multiplexed(model, pool, endurance=3)(x)  # 3 and 2 tiles: within a budget of 3
        used = [ChipState.load(state_path(tmp_path, c.chip_id)).cycles_used for c in pool.chips]
        assert used[0] >= 3 and used[1] >= 2
        calls = [c.backend.calls for c in pool.chips]
        needs = chip_needs(model, 2)
        assert needs == {0: 3, 1: 2}
        budget = used[0] + 3 - 1
        with pytest.raises(EnduranceError) as err:
            multiplexed(model, pool, endurance=budget)
        msg = str(err.value)
        assert "\n" not in msg and pool.chips[0].chip_id in msg
        assert f"{used[0]:,} erase-and-program cycles used" in msg and "needs 3 more" in msg
        assert f"budget is {budget:,} cycles" in msg
        assert [c.backend.calls for c in pool.chips] == calls  # nothing erased or pulsed
        multiplexed(model, pool, endurance=used[0] + 3)  # exactly at the budget: allowed
        with pytest.raises(ValueError, match="endurance=0; expected a whole number"):
            multiplexed(model, pool, endurance=0)


def test_one_chip_per_tile_records_and_refuses_a_reprogramming_over_the_budget(tmp_path):
    model, x = _net()
    with open_chips("sim://?seed=60&preset=quiet", 5) as chips:
        counted = [Counting(c, {}) for c in chips]
        dep = deploy(model, counted, state_dir=tmp_path, endurance=100)
        used = check([(b, state_path(tmp_path, b.identity.chip_id), 0) for b in counted], None)
        assert len(used) == 5 and min(used.values()) >= 1
        for b in counted:
            st = ChipState.load(state_path(tmp_path, b.identity.chip_id))
            assert np.array_equal(st.life_pulses, b.pulses) and np.array_equal(st.row_erases, b.erases)
        dep.endurance = max(used.values())  # every chip at or below; one more cycle is too many
        calls = [b.calls for b in counted]
        with pytest.raises(EnduranceError, match="needs 1 more; the endurance budget is"):
            dep.reprogram()
        assert [b.calls for b in counted] == calls
        with pytest.raises(EnduranceError, match="cycles used on record"):
            deploy(model, counted, state_dir=tmp_path, endurance=max(used.values()))


@pytest.mark.parametrize("bad", [0, -3, 2.5, float("nan"), float("inf"), True, "abc"])
def test_a_bad_budget_is_refused_in_one_line_naming_it(bad):
    from labkit.deploy.endurance import check_budget

    with pytest.raises(ValueError, match=r"^endurance=.*; expected a whole number of erase-and-program cycles >= 1$"):
        check_budget(bad)
    assert check_budget(None) is None and check_budget(10_000) == 10_000 and check_budget(3.0) == 3
