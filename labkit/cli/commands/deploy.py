"""``labkit deploy``: program a trained network onto the chips there are and measure its accuracy.

An ideal checkpoint is converted to analog tiles first (nominal chip parameters, input
scales from the training data); a hardware-aware checkpoint brings its own tiles.
``--backend`` names the chips and ``--chips K`` counts them (``sim://?seed=N``: emulated
chips N, N+1, ...; or comma-separated URIs). With a chip per tile every tile is written
by program-and-verify onto its own chip, then the test set runs through the chips. With
fewer chips than tiles the deployment is time-multiplexed (:mod:`labkit.deploy.multiplex`):
layer by layer, each chip takes a tile, runs every input that tile needs, and takes the
next; the partial sums go to the run store as they are measured, so an interrupted run
resumes with ``--resume RUN`` without programming a finished tile again. Before
anything is programmed the command states the bench time, the reprogrammings and the
erase-and-program cycles per chip. Every programming goes to the chip's chip-state file
in ``--state-dir`` (default: the run store's folder; ``chipstate-CHIPID.json``, as
``labkit program`` writes), and a run that would take a chip past ``--endurance``
cycles (those on record plus this run's) is refused before any pulse.

``--temperature C`` regulates the chips at C for inference (refused outside the safety
envelope before anything is programmed); ``--temperature-compensation read-voltage``
follows each chip's temperature at every batch with a gate shift and readout scale from
its temperature calibration (``--temperature-calibration FILE`` per chip, or measured
with ``--calibrate-at C,C,C``), ``reprogram`` also programs a tile again 5 K away from
where it was programmed, ``probed`` fits each column's readout again at every
temperature on reference inputs measured right after programming, ``reprogram-probed``
does both (labkit.deploy.temperature). Every batch's temperatures and
read voltages are in the result (``batches``); a temperature outside the calibrated
range is a warning on stderr and in ``warnings``.
"""

from __future__ import annotations

import time
from pathlib import Path

from labkit.cli import options

HELP = "program a checkpoint onto the chips there are (time-multiplexed when fewer than tiles) and measure its accuracy"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint written by labkit train")
    options.add(parser, "backend", backend="chips: sim://?seed=N (emulated chips N, N+1, ...) or comma-separated "
                                           "URIs (default sim://)")
    parser.add_argument("--chips", type=options.count(1, 100_000, "a number of chips"), default=None, metavar="K",
                        help="chips to use (default: one per tile with sim://, else every URI given); "
                             "fewer than the network's tiles are time-multiplexed")
    options.add(parser, "data", "subset", "seed", "store", subset="evaluate at most N test examples")
    parser.add_argument("--batch-size", type=options.count(1, 1_000_000), default=256,
                        help="test examples per inference batch (chip per tile)")
    parser.add_argument("--passes", type=options.count(1, 1000), default=1,
                        help="measure the test set this many times and report the mean accuracy")
    parser.add_argument("--tolerance", type=float, default=None, help="program-and-verify tolerance (0.01)")
    parser.add_argument("--reads", type=options.count(1, 1024), default=1,
                        help="VMMs per input, crossing times averaged (readout noise / sqrt(N); default 1)")
    parser.add_argument("--resume", type=options.count(1, 2**62, "a run id"), default=None, metavar="RUN",
                        help="resume the interrupted time-multiplexed deployment RUN of the run store")
    parser.add_argument("--temperature-compensation", default="off",
                        choices=("off", "read-voltage", "reprogram", "probed", "reprogram-probed"),
                        help="follow the chip temperature at inference: off; read-voltage (gate shift plus readout "
                             "scale, not reprogrammed); reprogram (read-voltage, and a tile is programmed again "
                             "5 K away from its programming temperature); probed (the gate shift, and each "
                             "column's readout fitted again at every temperature on reference inputs measured "
                             "as programmed; not reprogrammed); reprogram-probed (both). Default off")
    parser.add_argument("--temperature-calibration", metavar="FILE", action="append", default=[],
                        help="temperature calibration of a chip (labkit.calibrate.temperature; repeat per chip); "
                             "chips without one are calibrated at --calibrate-at")
    parser.add_argument("--calibrate-at", type=_celsius_list, default=None, metavar="C,C,C",
                        help="calibrate every chip at these temperatures (degC, three or more) before programming")
    parser.add_argument("--temperature", type=float, default=None, metavar="DEGC",
                        help="regulate the chips at DEGC for inference (refused outside the safety envelope)")
    parser.add_argument("--endurance", type=options.count(1, 10**7, "a number of cycles"), default=10_000,
                        metavar="CYCLES", help="erase-and-program cycles a chip may reach, those on record in its "
                                               "chip-state file included (default 10000)")
    parser.add_argument("--state-dir", metavar="DIR", default=None,
                        help="folder of the chips' chip-state files (default: the run store's folder)")


def _celsius_list(text: str) -> list[float]:
    import argparse

    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; expected comma-separated temperatures in degC") from None
    if len(vals) < 3:
        raise argparse.ArgumentTypeError(f"{text!r}; expected three or more temperatures in degC")
    return vals


def _check_temperature(args) -> None:
    """The inference temperature and compensation options, before anything opens."""
    import math

    from labkit.backend import SafetyEnvelope

    lo, hi = SafetyEnvelope().temperature_range_k
    if args.temperature is not None:
        k = args.temperature + 273.15
        if not math.isfinite(k) or not lo <= k <= hi:
            raise ValueError(f"--temperature {args.temperature:g} degC is outside the safety envelope "
                             f"{lo - 273.15:g} to {hi - 273.15:g} degC")
    for c in args.calibrate_at or []:
        if not math.isfinite(c) or not lo <= c + 273.15 <= hi:
            raise ValueError(f"--calibrate-at {c:g} degC is outside the safety envelope "
                             f"{lo - 273.15:g} to {hi - 273.15:g} degC")
    if args.temperature_compensation != "off" and not (args.temperature_calibration or args.calibrate_at):
        raise ValueError(f"--temperature-compensation {args.temperature_compensation} needs "
                         "--temperature-calibration FILE (per chip) or --calibrate-at C,C,C")


def run(args, out) -> dict:
    from labkit.backend import chip_uris, open_chips
    from labkit.backend.registry import chips_named
    from labkit.deploy import multiplex
    from labkit.deploy.deployment import deploy
    from labkit.deploy.estimate import estimate
    from labkit.nn import analog_layers
    from labkit.program import ProgramConfig
    from labkit.store import RunStore, default_store_path, sigterm_as_keyboard_interrupt
    from labkit.train.checkpoint import load_checkpoint
    from labkit.train.networks import dataset_for
    from labkit.train.training import hardware_aware, is_main_process

    _check_temperature(args)
    program = ProgramConfig() if args.tolerance is None else ProgramConfig(tolerance=args.tolerance)
    t0 = time.monotonic()
    ck = load_checkpoint(args.checkpoint)
    split = dataset_for(ck.model_name, args.data, subset=args.subset, seed=args.seed)
    model = ck.build()
    if not analog_layers(model):
        model = hardware_aware(model, split.train, None, seed=args.seed)
    layers = analog_layers(model)
    n = sum(m.n_tiles for _, m in layers)
    k = args.chips or chips_named(args.backend) or n
    uris = chip_uris(args.backend, min(k, n))  # too few chips named: error before anything opens
    plan = estimate(multiplex.tile_inputs(model, split.test), len(uris), args.reads * args.passes)
    args.state_dir = Path(args.state_dir) if args.state_dir else (Path(args.out) if args.out else
                                                                  default_store_path()).parent
    if not args.state_dir.is_dir():
        raise ValueError(f"--state-dir {args.state_dir} is not a folder; expected an existing folder")
    if args.resume is not None and len(uris) >= n:
        raise ValueError(f"--resume {args.resume}: {n} tiles on {len(uris)} chips is not time-multiplexed; "
                         "there is nothing to resume (run it again)")
    out.info(f"{ck.model_name}: {n} tiles on {len(uris)} chip{'s' if len(uris) != 1 else ''}: "
             f"{plan.reprogrammings * args.passes} reprogrammings, {plan.cycles_per_chip * args.passes} cycles per "
             f"chip, ~{plan.pulses * args.passes:,} pulses, {plan.vmms:,} VMMs; estimated bench time "
             f"{plan.bench_s * args.passes:.0f} s")
    temperature_options = (args.temperature_compensation != "off" or args.temperature is not None
                           or args.temperature_calibration or args.calibrate_at)
    if len(uris) < n and temperature_options:
        raise ValueError("temperature compensation and --temperature need one chip per tile; "
                         f"{n} tiles on {len(uris)} chips is time-multiplexed")
    if len(uris) >= n:
        result = _one_chip_per_tile(args, out, model, split, program, uris, deploy, open_chips)
    else:
        db = Path(args.out) if args.out else default_store_path()
        with RunStore(db) as store, sigterm_as_keyboard_interrupt():
            result = _multiplexed(args, out, model, split, program, uris, store, multiplex, open_chips, n)
    result.update({"model": ck.model_name, "mode": ck.mode, "samples": len(split.test), "reads": args.reads,
                   "backend": args.backend, "checkpoint": args.checkpoint, "tiles": n,
                   "software_accuracy": ck.meta.get("accuracy"), "estimate": plan.to_dict(),
                   "seconds": time.monotonic() - t0})
    if not is_main_process():  # under torchrun: rank 0 reports (the accuracy is the same on every rank)
        return None
    out.table([("model", ck.model_name), ("mode", ck.mode), ("tiles / chips", f"{n} / {len(uris)}"),
               ("accuracy on chips", f"{result['accuracy']:.4f}"), ("test samples", len(split.test)),
               ("programmings", result["programmings"]), ("VMMs", result["vmms"]),
               ("cycles on record, busiest chip", max(result["cycles_on_record"].values(), default=0))]
              + ([("temperature compensation", result["temperature_compensation"]),
                  ("chip temperature", _span(result["batches"]))] if result.get("batches") else []),
              header=("", ""))
    return result


def _one_chip_per_tile(args, out, model, split, program, uris, deploy, open_chips) -> dict:
    from labkit.deploy.endurance import check as check_endurance
    from labkit.nn import analog_layers

    recorded = [c for _, m in analog_layers(model) for c in m.tile_chips]
    with open_chips(args.backend, len(uris)) as chips:
        ids = [b.identity.chip_id for b in chips]
        trained_on = [c for c in recorded if c and c not in ("nominal",) and not c.startswith("spread-")]
        if trained_on and trained_on != ids[: len(trained_on)]:
            out.info("note: the network was trained on the calibrations of other chips "
                     f"({trained_on[0]}, ...) than these ({ids[0]}, ...)")
        tcals = _temperature_calibrations(args, out, chips)
        if args.temperature is not None:  # the chip's own envelope, before anything is programmed
            for b in chips:
                lo, hi = b.envelope.temperature_range_k
                if not lo <= args.temperature + 273.15 <= hi:
                    raise ValueError(f"--temperature {args.temperature:g} degC is outside chip {b.identity.chip_id}'s "
                                     f"safety envelope {lo - 273.15:g} to {hi - 273.15:g} degC")
        with out.progress("programming tiles", len(uris)) as bar:
            dep = deploy(model, chips, program, progress=lambda i, total, chip: bar.advance(1, chip), reads=args.reads,
                         state_dir=args.state_dir, endurance=args.endurance)
        dep.compensate(args.temperature_compensation, tcals)
        if args.temperature is not None:
            dep.set_temperature_k(args.temperature + 273.15)
        accs = []
        for p in range(args.passes):
            with out.progress(f"inference pass {p + 1}", len(split.test)) as bar:
                last = [0]

                def report(done, total, text, bar=bar, last=last):
                    bar.advance(done - last[0], text)
                    last[0] = done
                accs.append(dep.evaluate(split.test, args.batch_size, progress=report))
        summary = dep.summary()
        cycles = check_endurance([(t.backend, t.chip.state_path, 0) for t in dep.tiles], None)
    batches = _batches(dep)
    warnings = list(dict.fromkeys(r.warning for r in dep.temperature_log if r.warning))
    for w in warnings:
        out.info(f"warning: {w}")
    return {"accuracy": sum(accs) / len(accs), "passes": accs, "chips": summary.pop("chips"),
            "programming": summary, "programmings": len(uris), "vmms": dep.vmm_count, "run_id": None,
            "cycles_on_record": cycles, "temperature_compensation": args.temperature_compensation,
            "batches": batches, "warnings": warnings,
            "programmed_at": dep.programmed_at,
            "programmed_k": [None if s is None else s["temperature_k"] for s in dep.programmed],
            "reprograms": sum(getattr(w, "reprograms", 0) for w in dep._wrapped.values()),
            "probe_vmms": sum(getattr(w, "probe_vmms", 0) for w in dep._wrapped.values())}


def _span(batches: list[dict]) -> str:
    ks = [k for b in batches for k in b["temperature_k"]]
    return f"{min(ks) - 273.15:.1f} to {max(ks) - 273.15:.1f} degC over {len(batches)} batches"


def _batches(dep) -> list[dict]:
    """Per inference batch: every chip's temperature (K) and read voltage (V)."""
    n = len(dep.tiles)
    log = dep.temperature_log
    return [{"batch": k, "temperature_k": [r.temperature_k for r in log[k * n:(k + 1) * n]],
             "read_voltage_v": [r.read_voltage_v for r in log[k * n:(k + 1) * n]]} for k in range(len(log) // n)]


def _temperature_calibrations(args, out, chips) -> dict:
    """Chip id -> TemperatureCalibration: from the files given, the rest measured at --calibrate-at."""
    from labkit.calibrate.temperature import calibrate_temperatures, read_temperature_calibration

    tcals = {}
    for path in args.temperature_calibration:
        tc = read_temperature_calibration(path)
        tcals[tc.chip_id] = tc
    if args.calibrate_at:
        temps = [c + 273.15 for c in args.calibrate_at]
        with out.progress("temperature calibration", len(chips)) as bar:
            for b in chips:
                if b.identity.chip_id not in tcals:
                    tcals[b.identity.chip_id] = calibrate_temperatures(b, temps)
                bar.advance(1, b.identity.chip_id)
    return tcals


def _multiplexed(args, out, model, split, program, uris, store, multiplex, open_chips, n) -> dict:
    """Time-multiplexed on len(uris) chips; under torchrun the chips spread over the
    processes (each holds chips rank, rank + world, ... and journals its own tiles)."""
    import contextlib

    from labkit.backend import open_backend
    from labkit.nn import ChipTile, analog_layers
    from labkit.train.training import init_distributed

    distributed = init_distributed()
    if distributed and args.resume is not None:
        raise ValueError("--resume runs in one process; start it without torchrun")
    resumed = None
    if args.resume is not None:
        resumed = store.load(args.resume)
        if resumed.kind != "deploy" or resumed.result.get("checkpoint") != str(args.checkpoint):
            raise ValueError(f"--resume {args.resume}: run {resumed.id} is a {resumed.kind!r} run of "
                             f"{resumed.result.get('checkpoint')!r}, not a deployment of {args.checkpoint}")
    cfg = analog_layers(model)[0][1].config
    K = len(uris)
    with contextlib.ExitStack() as stack:
        backends: dict[int, object] = {}

        def chip(k: int) -> ChipTile:
            backends[k] = stack.enter_context(open_backend(uris[k]))
            return ChipTile(backends[k], cfg, program, reads=args.reads)

        pool = multiplex.ChipPool.distributed(chip, K) if distributed else multiplex.ChipPool([chip(k) for k in range(K)])
        multiplex.use_chip_readout(pool.local, model, {k: b.identity.chip_id for k, b in backends.items()}, K)
        pool.record_in(args.state_dir)
        used = pool.check_endurance(multiplex.chip_needs(model, K, args.passes), args.endurance)
        out.info(f"chip-state files in {args.state_dir}: at most {max(used.values(), default=0):,} cycles on record "
                 f"per chip, endurance {args.endurance:,}")
        with store.run("deploy", backend_uri=args.backend, chip_id=",".join(b.identity.chip_id for b in backends.values()),
                       seeds={"data": args.seed}) as run:
            run.put_result({"checkpoint": str(args.checkpoint), "chips": K, "tiles": n,
                            "placement": multiplex.placement(model, K), "resumed_from": args.resume})
            journal = multiplex.Journal(run, resumed)
            accs = []
            for p in range(args.passes):
                with out.progress(f"tiles, pass {p + 1}", n) as bar:
                    network = multiplex.multiplexed(model, pool, journal if p == 0 else None,
                                                    progress=lambda text: bar.advance(1, text))
                    acc, _ = multiplex.evaluate_multiplexed(network, split.test)
                    bar.advance(n - bar.done)
                accs.append(acc)
            logs = [vars(log) | {"tiles": len(log.tiles)} for log in pool.logs]
            result = {"accuracy": sum(accs) / len(accs), "passes": accs, "chips": [log.chip_id for log in pool.logs],
                      "programmings": sum(log.programmings for log in pool.logs),
                      "reused_tiles": journal.reused, "per_chip": logs,
                      "vmms": sum(log.vmms for log in pool.logs), "run_id": run.id,
                      "cycles_on_record": pool.check_endurance({}, None)}  # this process's chips
            run.put_result({k: v for k, v in result.items() if k != "per_chip"})
    return result
