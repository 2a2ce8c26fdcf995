"""Calibrate one array: measure, fit the naive / linear / model-based extractions, compare.

What it does: measures the calibration datasets (zero-input baseline, random fit
patterns with 30-50 % zero inputs, one-hot reads, held-out random and activation-like
patterns, repeated patterns for the noise floor), fits the three weight extractions of
docs/physics.md, section 3 and prints the signal-to-error ratio (SER) of each on held-out
patterns next to the noise floor (the SER of one measurement against the mean of its
repeats: no model can beat it):

* naive: one-hot reads and the ideal model ``y = W x``;
* linear: least squares over the random patterns;
* model: the hardware-aware model (cell currents, bit-line droop, crosstalk per cell,
  offsets), fitted by L-BFGS.

It also shows what each non-ideality is worth: the fitted model's SER with its droop or
its crosstalk switched off, not refitted (``ABLATIONS``).

What it writes: a ``calibrate`` run in the run store (``--out``; every dataset, so the
fit can be redone later with ``--refit RUN``) and the calibration file (``--file``,
default ``calibration-CHIP.npz`` next to the store; a NumPy archive, no pickle) that
analog layers, training and deployment load (``labkit.calibrate.load_calibration``).

How to run it::

    python experiments/calibrate.py --quick
    python experiments/calibrate.py --backend "sim://?seed=4" --file chip4.npz
    python experiments/calibrate.py --backend station:bench.yaml
    python experiments/calibrate.py --refit latest        # fit again from stored data, no chip
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import time
from pathlib import Path

from labkit import open_backend
from labkit import calibrate as cal
from labkit import measure as ch
from labkit.ui.console import Console
from labkit.store import RunStore, default_store_path, sigterm_as_keyboard_interrupt

# ------------------------------------------------------------------ settings (edit these)
SETTINGS = dict(seed=0, zero_fraction=0.4, activation_zero_fraction=0.5, onehot_levels=(0.5, 1.0))
SIZES = dict(  # --quick uses CalibrationConfig.quick()'s smaller ones
    baseline_repeats=256, fit_patterns=3072, holdout_patterns=1024, onehot_repeats=16, activation_patterns=1024,
    repeat_patterns=128, repeats=16, fit_iterations=200)
ABLATIONS = {"model, no crosstalk": "crosstalk", "model, no droop": "droop"}  # label -> ArrayModel switch


def fit_and_compare(cs: cal.CalibrationSet, config: cal.CalibrationConfig) -> cal.Calibration:
    """The three extractions of one measured set, their SER report and the ablations."""
    start = time.perf_counter()
    naive, linear = cal.fit_naive(cs), cal.fit_linear(cs)
    model, info = cal.fit_model(cs, config.fit_iterations, config.eta_per_cell)
    predictors = {"naive": naive.predict_s, "linear": linear.predict_s,
                  "model": lambda x: cal.predict_mean_s(model, x)}
    for label, switch in ABLATIONS.items():
        predictors[label] = lambda x, switch=switch: _without(model, switch, x)
    report = cal.ser_report(cs, predictors)
    report["fit"] = dataclasses.asdict(info)
    report["fit_duration_s"] = time.perf_counter() - start
    report["measure_duration_s"] = cs.duration_s
    report["config"] = dataclasses.asdict(config)
    return cal.Calibration(chip_id=cs.chip_id, model=model.to_dict(), naive=naive, linear=linear, report=report,
                           backend_uri=cs.backend_uri, run_ids=list(cs.run_ids), run_uids=list(cs.run_uids),
                           store=cs.store)


def _without(model, switch: str, x):
    """Predictions of the fitted model with one non-ideality switched off."""
    setattr(model, switch, False)
    try:
        return cal.predict_mean_s(model, x)
    finally:
        setattr(model, switch, True)


def calibration_path(db: Path, chip_id: str) -> Path:
    """Default calibration file: ``calibration-CHIP.npz`` next to the run store."""
    return db.with_name(f"calibration-{re.sub(r'[^A-Za-z0-9_.-]+', '_', chip_id)}.npz")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sim://", help="backend URI (default sim://)")
    parser.add_argument("--out", default=None, help="run store file (default $LABKIT_STORE or ./labkit-runs.sqlite)")
    parser.add_argument("--file", default=None, help="calibration file to write (default calibration-CHIP.npz)")
    parser.add_argument("--quick", action="store_true", help="smaller datasets and fit (seconds on sim://)")
    parser.add_argument("--refit", metavar="RUN", default=None,
                        help="fit the datasets of a stored run (id, uid or 'latest') instead of measuring")
    args = parser.parse_args(argv)

    config = (cal.CalibrationConfig.quick(**SETTINGS) if args.quick
              else cal.CalibrationConfig(**SETTINGS, **SIZES)).validate()
    db = Path(args.out) if args.out else default_store_path()
    out = Console()
    if args.refit is not None:
        with RunStore(db, create=False) as store:
            cs = cal.load_calibration_set(store, args.refit)
        result = fit_and_compare(cs, config)
        saved = result.save(args.file or calibration_path(db, result.chip_id))
    else:
        with open_backend(args.backend) as backend, RunStore(db) as store:
            chip = backend.identity.chip_id
            out.info(f"calibrating {chip} on {args.backend}")
            with sigterm_as_keyboard_interrupt(), store.run(
                    "calibrate", backend_uri=args.backend, chip_id=chip, settings=backend.settings,
                    provenance=backend.provenance(),
                    seeds={"fit": config.seed, "holdout": config.seed + 1, "repeats": config.seed + 2,
                           "activations": config.seed + 3, "activation_repeats": config.seed + 4}) as run:
                cs = cal.measure_calibration_set(backend, config, run, out.progress)
                cs.backend_uri = args.backend
                result = fit_and_compare(cs, config)
                saved = result.save(args.file or calibration_path(db, chip))
                run.put_result({"calibration": result.report, "calibration_file": str(saved.resolve())})

    rep = result.report
    db_ = lambda v: "-" if v is None else ("unbounded" if math.isinf(v) else f"{v:.1f} dB")  # noqa: E731
    rows = [[name, db_(rep["ser_db"][name]), f"{rep['holdout'][name]['ser']:.0f}",
             db_(rep["ser_activations_db"][name]), db_(rep["gap_to_floor_db"][name])] for name in rep["ser_db"]]
    rows.append(["noise floor", db_(rep["noise_floor_ser_db"]), f"{rep['noise_floor']['holdout']['ser']:.0f}",
                 db_(rep["noise_floor_activations_ser_db"]), "-"])
    out.table(rows, header=["extraction", "SER held-out", "ratio", "SER activations", "below floor"])
    gain = rep["holdout"]["model"]["ser"] / rep["holdout"]["naive"]["ser"]
    out.print(f"model-based / naive SER: x{gain:.2f}; fit {rep['fit_duration_s']:.1f} s "
              f"({rep['fit']['iterations']} L-BFGS iterations)")
    out.print(f"calibration file {saved} (chip {result.chip_id}, run {result.run_ids} in {db})")
    return {"calibration_file": str(saved), "chip_id": result.chip_id, "ser_db": rep["ser_db"],
            "noise_floor_ser_db": rep["noise_floor_ser_db"], "run_ids": result.run_ids, "store": str(db)}


if __name__ == "__main__":
    main()
