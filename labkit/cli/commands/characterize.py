"""``labkit characterize``: the standard characterization suite, stored as one run.

Measures the zero-input baseline, the cell current map, Id-Vg curves, random /
one-hot / repeated / network-activation VMM datasets, the crosstalk map and the droop
sweep (plus temperature and retention where the backend can), writes every point to
the run store as it goes, draws a PNG report and prints a summary table.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from labkit import measure as ch
from labkit.backend import open_backend
from labkit.cli import options
from labkit.store import RunStore, default_store_path, sigterm_as_keyboard_interrupt
from labkit.units import fmt, si

HELP = "run the standard characterization suite (current map, VMM datasets, crosstalk, droop) into the run store"


def add_arguments(parser) -> None:
    options.add(parser, "backend", "store")
    parser.add_argument("--quick", action="store_true", help="small datasets (same code path): seconds on sim://")
    options.add(parser, "seed", seed="seed of the random input patterns (default 0)")
    parser.add_argument("--report", metavar="PNG", default=None, type=options.output_file("PNG report"),
                        help="PNG report path (default: next to the store, DB-runID.png)")
    parser.add_argument("--no-report", action="store_true", help="do not draw the PNG report")
    parser.add_argument("--vg", nargs=2, metavar=("START", "STOP"), default=None,
                        help="Id-Vg gate sweep range in V (default 1.0 2.2)")
    parser.add_argument("--vg-points", type=options.count(2, 10_000), default=None, help="points per Id-Vg curve")
    parser.add_argument("--compliance", default=None, help="Id-Vg compliance current in A (default 2e-6)")
    parser.add_argument("--patterns", type=options.count(16, 1_000_000), default=None, help="random VMM patterns")
    parser.add_argument("--repeats", type=options.count(2, 100_000), default=None,
                        help="repeats of the noise-floor patterns")
    parser.add_argument("--crosstalk-repeats", type=options.count(1, 100_000), default=None,
                        help="repeats of each crosstalk probe")
    parser.add_argument("--droop-levels", type=options.count(2, 4096), default=None, help="levels of the droop sweep")
    parser.add_argument("--no-temperature", action="store_true", help="skip the temperature sweep")
    parser.add_argument("--no-retention", action="store_true", help="skip the retention check")


def config_from_args(args) -> ch.SuiteConfig:
    """The suite configuration the options ask for; ValueError on a bad one."""
    changes: dict = {"seed": args.seed}
    if args.vg is not None:
        changes["idvg_start_v"] = float(si(_number(args.vg[0], "--vg START"), "V", "--vg START"))
        changes["idvg_stop_v"] = float(si(_number(args.vg[1], "--vg STOP"), "V", "--vg STOP"))
    if args.compliance is not None:
        changes["idvg_compliance_a"] = float(si(_number(args.compliance, "--compliance"), "A", "--compliance"))
    for opt, key in (("vg_points", "idvg_points"), ("patterns", "random_patterns"), ("repeats", "repeats"),
                     ("crosstalk_repeats", "crosstalk_repeats"), ("droop_levels", "droop_levels")):
        if getattr(args, opt) is not None:
            changes[key] = getattr(args, opt)
    if args.no_temperature:
        changes["temperature"] = False
    if args.no_retention:
        changes["retention"] = False
    config = ch.SuiteConfig.quick(**changes) if args.quick else ch.SuiteConfig(**changes)
    return config.validate()


def _number(text: str, name: str):
    try:
        return float(text)
    except ValueError:
        return text  # maybe a quantity such as "1.2 V": si() converts or names it


def run(args, out) -> dict:
    config = config_from_args(args)  # bad sizes and sweep ranges: before anything opens
    db = Path(args.out) if args.out else default_store_path()
    with open_backend(args.backend) as backend:  # opening measures nothing
        config.validate(backend)  # ranges against this backend's envelope
        with RunStore(db) as store:  # a read-only or unopenable store fails here, before measuring
            with sigterm_as_keyboard_interrupt(), store.run(
                    "characterize", backend_uri=args.backend, chip_id=backend.identity.chip_id,
                    settings=backend.settings, provenance=backend.provenance(),
                    seeds={"patterns": config.seed, "repeats": config.seed + 1, "activations": config.seed},
            ) as run_:
                run_.put_result({"config": dataclasses.asdict(config)})
                out.info(f"run {run_.id}: characterizing {backend.identity.chip_id} on {args.backend}: "
                         f"{', '.join(config.steps(backend))}")
                result = ch.run_standard(backend, config, run=run_, progress=out.progress)
                summary = result.summary()
                report, report_error = None, None
                if not args.no_report:
                    path = Path(args.report) if args.report else db.with_name(f"{db.stem}-run{run_.id}.png")
                    try:
                        from labkit.ui.plots import characterization_report

                        report = str(characterization_report(result, path))
                        run_.put_result({"report": report})
                    except OSError as exc:
                        report_error = str(exc)
            run_id = run_.id
    if report_error:
        raise OSError(f"{report_error} (all measurements are stored as run {run_id} in {db})")
    _print_summary(out, result, summary, run_id, db, report)
    return {
        "backend": args.backend,
        "chip_id": result.chip_id,
        "rows": result.rows,
        "cols": result.cols,
        "run_id": run_id,
        "store": str(db),
        "report": report,
        "cell_current_a": result.cell_current_a.tolist(),
        "noise_floor_ser_db": summary["noise_floor_ser_db"],
        "noise_floor_ser": summary["noise_floor_ser"],
        "crosstalk_v": result.crosstalk.volts.tolist(),
        "droop_fraction": summary["droop_fraction"],
        "summary": {k: v for k, v in summary.items()},
    }


def _db(value: float) -> str:
    return "unbounded (no noise)" if math.isinf(value) else f"{value:.1f} dB"


def _print_summary(out, result, s: dict, run_id: int, db: Path, report: str | None) -> None:
    rows = [
        ["chip", f"{result.chip_id} ({result.backend})"],
        ["noise floor SER", f"{_db(s['noise_floor_ser_db'])}, {s['noise_floor_bits']:.1f} bits; "
                            f"output noise {fmt(s['output_noise_s'], 's')}"],
        ["crosstalk per edge", f"mean {fmt(s['crosstalk_mean_v'], 'V')}, max {fmt(s['crosstalk_max_v'], 'V')} "
                               f"(nominal; {100 * s['crosstalk_fraction_of_full_scale']:.2f} % of full scale)"],
        ["crosstalk pattern", s["crosstalk_pattern"]],
        ["droop at full input", f"{100 * s['droop_fraction']:.1f} % mean, {100 * s['droop_fraction_max']:.1f} % "
                                f"worst column; nonlinearity {100 * s['nonlinearity_max']:.1f} %"],
        ["cell currents", f"median {fmt(s['cell_current_median_a'], 'A')}, {fmt(s['cell_current_min_a'], 'A')}"
                          f" .. {fmt(s['cell_current_max_a'], 'A')}, spread {100 * s['cell_current_spread']:.0f} %"],
        ["Id-Vg", f"{s['idvg_path']}, steepest slope {s['idvg_slope_mv_per_decade']:.0f} mV/decade (median)"],
    ]
    if "current_temp_coeff_per_k" in s:
        rows.append(["temperature", f"d ln(I)/dT {100 * s['current_temp_coeff_per_k']:+.2f} %/K (median)"])
    if "retention_change" in s:
        rows.append(["retention", f"{100 * s['retention_change']:+.2f} % over the check, "
                                  f"{100 * s['retention_per_decade']:+.2f} %/decade (median)"])
    for skipped in s["skipped"]:
        rows.append(["skipped", skipped])
    rows += [["datasets", ", ".join(f"{k} {v}" for k, v in s["datasets"].items())],
             ["run", f"{run_id} in {db} ({s['duration_s']:.1f} s)"], ["report", report or "-"]]
    out.table(rows, header=["characterization", "value"])
