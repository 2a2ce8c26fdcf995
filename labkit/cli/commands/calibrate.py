"""``labkit calibrate``: measure a chip, fit naive / linear / model extractions, save the file.

Measures the calibration datasets (zero-input baseline, random fit patterns, one-hot
reads, held-out random and activation-like patterns, repeats for the noise floor) into
one run of the run store, fits the three extractions, prints their SER against the
noise floor and writes the calibration file (``.npz``, no pickle) that records the run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from labkit import calibrate as cal
from labkit.backend import open_backend
from labkit.cli import options
from labkit.store import RunStore, default_store_path, sigterm_as_keyboard_interrupt

HELP = "measure and fit the chip's hardware-aware model (naive, linear, model-based) and save a calibration file"


def add_arguments(parser) -> None:
    options.add(parser, "backend", "store")
    parser.add_argument("--file", metavar="NPZ", default=None, type=options.output_file("calibration"),
                        help="calibration file to write (default: calibration-CHIP.npz next to the run store)")
    parser.add_argument("--quick", action="store_true", help="smaller datasets (same code path)")
    options.add(parser, "seed", seed="seed of the input patterns (default 0)")
    parser.add_argument("--patterns", type=options.count(16, 1_000_000), default=None, help="random fit patterns")
    parser.add_argument("--holdout", type=options.count(8, 1_000_000), default=None,
                        help="held-out random (and activation-like) patterns")
    parser.add_argument("--iterations", type=options.count(1, 100_000), default=None,
                        help="most L-BFGS iterations of the model fit")
    parser.add_argument("--programmed-states", type=options.count(0, 16), default=0, metavar="N",
                        help="also program the chip to N weight-like states and fit the chip on them, so the "
                             "model predicts programmed tiles (REPROGRAMS the chip; default 0)")


def config_from_args(args) -> cal.CalibrationConfig:
    """The configuration the options ask for; ValueError on a bad one (before measuring)."""
    changes: dict = {"seed": args.seed}
    if args.patterns is not None:
        changes["fit_patterns"] = args.patterns
    if args.holdout is not None:
        changes["holdout_patterns"] = changes["activation_patterns"] = args.holdout
    if args.iterations is not None:
        changes["fit_iterations"] = args.iterations
    if getattr(args, "programmed_states", 0):
        changes["programmed_states"] = args.programmed_states
    config = cal.CalibrationConfig.quick(**changes) if args.quick else cal.CalibrationConfig(**changes)
    return config.validate()


def run(args, out) -> dict:
    config = config_from_args(args)
    db = Path(args.out) if args.out else default_store_path()
    with open_backend(args.backend) as backend:
        chip = backend.identity.chip_id
        path = Path(args.file) if args.file else db.with_name(f"calibration-{_safe(chip)}.npz")
        with RunStore(db) as store:
            out.info(f"calibrating {chip} on {args.backend}")
            if config.programmed_states:
                out.info(f"note: this programs {chip} to {config.programmed_states} weight-like states "
                         "(its present weights are overwritten)")
            with sigterm_as_keyboard_interrupt(), store.run(
                    "calibrate", backend_uri=args.backend, chip_id=chip, settings=backend.settings,
                    provenance=backend.provenance(),
                    seeds={"fit": config.seed, "holdout": config.seed + 1, "repeats": config.seed + 2,
                           "activations": config.seed + 3, "activation_repeats": config.seed + 4},
            ) as run_:
                run_.put_result({"config": dataclasses.asdict(config)})
                result = cal.calibrate(backend, config, run=run_, progress=out.progress)
                result.backend_uri = args.backend
                saved = result.save(path)
                run_.put_result({"calibration_file": str(saved.resolve())})
    rep = result.report
    _print_report(out, result, saved, db)
    return {
        "backend": args.backend,
        "chip_id": result.chip_id,
        "ser_db": rep["ser_db"],
        "ser": {k: v["ser"] for k, v in rep["holdout"].items()},
        "ser_activations_db": rep["ser_activations_db"],
        "noise_floor_ser_db": rep["noise_floor_ser_db"],
        "noise_floor_ser": rep["noise_floor"]["holdout"]["ser"],
        "noise_floor_activations_ser_db": rep["noise_floor_activations_ser_db"],
        "gap_to_floor_db": rep["gap_to_floor_db"],
        "calibration_file": str(saved.resolve()),
        "run_ids": result.run_ids,
        "store": str(db),
        "measure_duration_s": rep["measure_duration_s"],
        "fit_duration_s": rep["fit_duration_s"],
        "fit": rep["fit"],
        "sizes": rep["sizes"],
        "shipped": rep.get("shipped"),
        "programmed": rep.get("programmed"),
    }


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "chip"


def _db(value) -> str:
    if value is None:
        return "-"
    return "unbounded" if math.isinf(value) else f"{value:.1f} dB"


def _print_report(out, result, path: Path, db: Path) -> None:
    rep = result.report
    rows = []
    for m in cal.METHODS:
        rows.append([m, _db(rep["ser_db"][m]), f"{rep['holdout'][m]['ser']:.0f}",
                     _db(rep["ser_activations_db"][m]), _db(rep["gap_to_floor_db"][m])])
    rows.append(["noise floor", _db(rep["noise_floor_ser_db"]), f"{rep['noise_floor']['holdout']['ser']:.0f}",
                 _db(rep["noise_floor_activations_ser_db"]), "-"])
    out.table(rows, header=["extraction", "SER held-out", "ratio", "SER activations", "below floor"])
    if "programmed" in rep:
        out.table([[m, _db(rep["ser_db"][m]), _db(rep["gap_to_floor_db"][m])] for m in cal.METHODS]
                  + [["noise floor", _db(rep["noise_floor_ser_db"]), "-"]],
                  header=["extraction", "SER programmed state (activations)", "below floor"])
        res = rep["programmed"]["residuals"]
        out.print(f"residuals / noise: {res['overall']:.2f} overall; "
                  + (f"above {res['limit']:.2f} in {', '.join(res['flagged'])}: the model lacks something here"
                     if res["structure"] else "no column or pattern class above the noise"))
    out.print(f"chip {result.chip_id}: measured in {rep['measure_duration_s']:.1f} s, fitted in "
              f"{rep['fit_duration_s']:.1f} s ({rep['fit']['iterations']} L-BFGS iterations)")
    out.print(f"calibration file {path} (run {', '.join(map(str, result.run_ids))} in {db})")
