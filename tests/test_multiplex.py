"""Time-multiplexed deployment: a network with more tiles than chips runs on the chips
there are, each tile programmed once, with the partial sums kept in the run store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from labkit.backend import open_chips
from labkit.deploy.deployment import deploy
from labkit.deploy.estimate import estimate
from labkit.deploy.multiplex import ChipPool, Journal, evaluate_multiplexed, multiplexed, tile_count
from labkit.nn import AnalogConfig, ChipTile, TrainingNoise, analog_layers
from labkit.store import RunStore
from labkit.train.training import hardware_aware


CHIPS = "sim://?preset=default&seed="  # + the chip index: the same chips in every process


def _net_and_data(seed: int = 0, n: int = 96):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 5))  # 2x2 + 1x1 = 5 tiles
    x = torch.rand(n, 20)
    y = net(x).argmax(dim=1)
    ds = torch.utils.data.TensorDataset(x, y)
    model = hardware_aware(net, ds, None, AnalogConfig(noise=TrainingNoise(noise_std_s=0.0)))
    return model, ds


def _pool(chips, model):
    cfg = analog_layers(model)[0][1].config
    return ChipPool([ChipTile(b, cfg) for b in chips])


def test_one_ideal_chip_computes_what_one_chip_per_tile_computes():
    model, ds = _net_and_data()
    assert tile_count(model) == 5
    x = ds.tensors[0]
    with open_chips("sim://?seed=3&preset=ideal", 1) as (chip,):
        pool = _pool([chip], model)
        with torch.no_grad():
            one = multiplexed(model, pool)(x)
        assert pool.logs[0].programmings == 5 and len(pool.logs[0].tiles) == 5
        with torch.no_grad():
            multiplexed(model, pool)(x)  # without a journal every pass measures anew
        assert pool.logs[0].programmings == 10
    with open_chips("sim://?seed=3&preset=ideal", 5) as chips:
        per_tile = deploy(model, chips)(x)
    scale = float(per_tile.abs().mean())
    assert float((one - per_tile).abs().mean()) < 0.02 * scale


def test_two_chips_share_the_tiles_and_work_in_parallel():
    model, ds = _net_and_data()
    with open_chips("sim://?seed=10&preset=quiet", 2) as chips:
        pool = _pool(chips, model)
        acc, _ = evaluate_multiplexed(multiplexed(model, pool), ds)
    assert [log.programmings for log in pool.logs] == [3, 2]  # tiles 0, 2, 4 / 1, 3 in tile-plan order
    assert acc > 0.8


def test_partial_sums_go_to_the_store_and_a_resumed_run_never_reprograms_a_finished_tile(tmp_path):
    model, ds = _net_and_data()
    x = ds.tensors[0]
    store = RunStore(tmp_path / "runs.sqlite")
    with open_chips("sim://?seed=20", 1) as (chip,):
        with store.run("deploy") as run:
            first = multiplexed(model, _pool([chip], model), Journal(run))(x)
        old = store.load(run.id)
        assert old.tables["partial_sums.0"] == 4 and old.tables["partial_sums.2"] == 1
        with store.run("deploy") as run2:
            pool = _pool([chip], model)
            journal = Journal(run2, resumed=old)
            again = multiplexed(model, pool, journal)(x)
        assert pool.logs[0].programmings == 0 and journal.reused == 5
        assert torch.equal(first, again)  # the very partial sums, not a new measurement
        assert store.load(run2.id).tables["partial_sums.0"] == 4  # the new run holds every tile
    store.close()


def test_the_estimate_counts_programmings_cycles_and_vmms():
    e = estimate([100, 100, 100, 100, 50], chips=2, reads=2)
    assert (e.programmings, e.reprogrammings, e.cycles_per_chip, e.vmms) == (5, 3, 3, 900)
    one = estimate([100] * 8, chips=1)
    eight = estimate([100] * 8, chips=8)
    assert one.reprogrammings == 7 and eight.reprogrammings == 0
    assert one.bench_s == pytest.approx(8 * eight.bench_s)
    with pytest.raises(ValueError, match="chips=0"):
        estimate([1], chips=0)


def _tiles_recorded(db) -> int:
    """Tiles whose partial sums run 1 of ``db`` has committed (read while it runs)."""
    if not db.exists():
        return 0
    try:
        store = RunStore(db)
    except Exception:  # not created yet
        return 0
    try:
        run = store.load(1)
        return sum(v for k, v in run.tables.items() if k.startswith("partial_sums."))
    except ValueError:
        return 0
    finally:
        store.close()


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    from labkit.cli import main

    path = tmp_path_factory.mktemp("ck") / "mlp.pt"
    assert main(["train", "--model", "mlp", "--mode", "ideal", "--epochs", "3", "--subset", "400",
                 "--save", str(path)]) == 0
    return path


def test_a_killed_deployment_resumes_without_programming_a_finished_tile(tmp_path, mlp_checkpoint):
    import json
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    db = tmp_path / "runs.sqlite"
    argv = [sys.executable, "-m", "labkit.cli", "deploy", str(mlp_checkpoint), "--backend",
            "sim://?seed=100&preset=quiet", "--chips", "1", "--subset", "150", "--out", str(db), "--json"]
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    full = json.loads(subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=True).stdout)
    assert full["programmings"] == 8 and full["reused_tiles"] == 0
    kill_after = random.Random(os.getpid()).randint(1, 6)  # a random moment between two tiles' records
    db2 = tmp_path / "killed.sqlite"
    argv2 = [a if a != str(db) else str(db2) for a in argv]
    child = subprocess.Popen(argv2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    while _tiles_recorded(db2) < kill_after and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = _tiles_recorded(db2)
    assert 1 <= done < 8, done
    resumed = json.loads(subprocess.run(argv2 + ["--resume", "1"], capture_output=True, text=True, env=env,
                                        timeout=300, check=True).stdout)
    assert resumed["reused_tiles"] == done
    assert resumed["programmings"] == 8 - done  # no finished tile programmed again
    assert abs(resumed["accuracy"] - full["accuracy"]) <= 0.03


def test_two_processes_give_the_partial_sums_of_one(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from labkit.backend import open_backend

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "tests" / "helpers_multiplex_worker.py"), str(tmp_path), "3"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["programmings"] == [2, 1] and ranks[1]["programmings"] == [2]  # chips 0, 2 / chip 1
    model, ds = _net_and_data()
    cfg = analog_layers(model)[0][1].config
    backends = [open_backend(f"{CHIPS}{k}").__enter__() for k in range(3)]
    try:
        journal = Journal()
        with torch.no_grad():
            y = multiplexed(model, ChipPool([ChipTile(b, cfg) for b in backends]), journal)(ds.tensors[0])
    finally:
        for b in backends:
            b.close()
    tiles = {**ranks[0]["tiles"], **ranks[1]["tiles"]}
    assert sorted(tiles) == sorted("/".join(map(str, k)) for k in journal._done)
    for k, v in journal._done.items():
        assert torch.equal(tiles["/".join(map(str, k))], torch.as_tensor(v)), k  # the very same partial sums
    for r in ranks:
        torch.testing.assert_close(r["outputs"], y, rtol=1e-12, atol=1e-12)


def test_the_mlp_deploys_on_one_chip_of_the_virtual_bench_over_real_sockets(tmp_path, mlp_checkpoint):
    """labkit sim serve's bench (board over loopback TCP, the real drivers): 8 tiles, one chip."""
    import json
    import os
    import subprocess
    import sys

    from simulator.bench import VirtualBench

    station = tmp_path / "bench.yaml"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}

    def deploy_on(backend: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "labkit.cli", "deploy", str(mlp_checkpoint), "--backend",
                               backend, "--chips", "1", "--subset", "120", "--out", str(tmp_path / "runs.sqlite"),
                               "--json"], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    with VirtualBench(seed=100, station_out=station) as bench:
        r = deploy_on(f"station:{station}")
        pulses = bench.firmware.program_pulses
    assert r["tiles"] == 8 and len(r["chips"]) == 1 and r["programmings"] == 8
    assert r["vmms"] > 0 and pulses > 8 * 100  # every tile really programmed on the bench's chip
    same_chip = deploy_on("sim://?seed=100")  # the bench serves this very emulated chip
    assert abs(r["accuracy"] - same_chip["accuracy"]) <= 0.1, (r["accuracy"], same_chip["accuracy"])


def test_a_reduced_vgg_runs_on_one_chip(tmp_path):
    """The VGG network (three blocks of 4 channels: 18 tiles) on a tiny CIFAR-10-format set,
    time-multiplexed on one emulated chip, against the same network on one chip per tile."""
    from labkit.train.networks import vgg_small
    from tests.test_deploy import _write_cifar
    from labkit.train.datasets import cifar10

    _write_cifar(tmp_path / "cifar" / "cifar-10-batches-py")
    split = cifar10(tmp_path / "cifar")
    torch.manual_seed(0)
    small = vgg_small(widths=(4, 4, 4), convs_per_block=1, hidden=16)
    model = hardware_aware(small, split.train, None, AnalogConfig(noise=TrainingNoise(noise_std_s=0.0)))
    n = tile_count(model)
    x = split.test.tensors[0][:4] if hasattr(split.test, "tensors") else torch.stack([split.test[i][0] for i in range(4)])
    with open_chips("sim://?seed=500&preset=ideal", 1) as (chip,):
        pool = _pool([chip], model)
        with torch.no_grad():
            one = multiplexed(model, pool)(x)
    assert n == 18 and pool.logs[0].programmings == 18 and pool.logs[0].vmms > 1000
    with open_chips("sim://?seed=500&preset=ideal", n) as chips:
        per_tile = deploy(model, chips)(x)
    assert one.shape == (4, 10) and torch.isfinite(one).all()
    scale = float(per_tile.abs().mean())
    assert float((one - per_tile).abs().mean()) < 0.05 * scale


def test_deploy_refuses_a_run_over_the_endurance_budget_before_any_pulse(tmp_path, mlp_checkpoint, capsys):
    """Each chip's programmings go to its chip-state file in --state-dir; a run that would take
    a chip past --endurance (cycles on record plus this run's) stops with one line."""
    import json

    from labkit.cli import main
    from labkit.deploy.endurance import state_path
    from labkit.program import ChipState

    argv = ["deploy", str(mlp_checkpoint), "--backend", "sim://?seed=70&preset=quiet", "--chips", "2",
            "--subset", "40", "--out", str(tmp_path / "runs.sqlite"), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    ids = first["chips"]
    files = [state_path(tmp_path, c) for c in ids]  # default: the run store's folder
    used = [ChipState.load(f).cycles_used for f in files]
    assert first["cycles_on_record"] == dict(zip(ids, used))
    assert min(used) >= 4  # 8 tiles on 2 chips: 4 programmings each
    before = [f.read_bytes() for f in files]
    budget = max(used) + 4 - 1
    assert main(argv + ["--endurance", str(budget)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = [e for e in err if "endurance budget" in e]
    assert len(line) == 1 and "Traceback" not in "".join(err), err
    chip = ids[used.index(max(used))]
    assert f"chip {chip}: {max(used):,} erase-and-program cycles used" in line[0]
    assert f"needs 4 more; the endurance budget is {budget:,} cycles" in line[0]
    assert [f.read_bytes() for f in files] == before  # nothing programmed
    assert main(argv + ["--endurance", str(budget + 1), "--state-dir", str(tmp_path / "none")]) == 2
    assert "--state-dir" in capsys.readouterr().err
