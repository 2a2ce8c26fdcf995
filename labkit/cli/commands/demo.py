"""``labkit demo``: the whole workflow on emulated chips, with a report at the end."""

from __future__ import annotations

from pathlib import Path

from labkit.cli import options
from labkit.store import RunStore, default_store_path, sigterm_as_keyboard_interrupt
from labkit.units import fmt

HELP = "characterize, calibrate, train (ideal and hardware-aware), program and evaluate on emulated chips"


def add_arguments(parser) -> None:
    parser.add_argument("--chips", default="sim://?seed=100",
                        help="chips, one per tile: sim://?seed=N (N, N+1, ...) or comma-separated URIs")
    options.add(parser, "store")
    parser.add_argument("--quick", action="store_true", help="reduced mode: fewer samples and epochs, same code path")
    options.add(parser, "seed", seed="seed of data splits and training (default 0)")


def run(args, out) -> dict:
    from labkit.demo import DemoConfig, run_demo  # torch and friends load only for this command

    config = (DemoConfig.quick if args.quick else DemoConfig)(chips=args.chips, seed=args.seed)
    db = Path(args.out) if args.out else default_store_path()
    with RunStore(db) as store, sigterm_as_keyboard_interrupt():
        result = run_demo(store, config, out=out, report_dir=db.parent)
    _print_report(out, result, db)
    return result


def _print_report(out, r: dict, db: Path) -> None:
    p, a, s = r["programming"], r["accuracy"], r["ser_db"]
    out.table([
        ["SER naive / linear / model", f"{s['naive']:.1f} / {s['linear']:.1f} / {s['model']:.1f} dB (median of {r['tiles']} chips)"],
        ["noise floor SER", f"{r['noise_floor_ser_db']:.1f} dB"],
        ["programming", f"{p['cells']} cells, rms error {100 * p['rms_rel_error']:.2f} %, "
                        f"{100 * p['within_tolerance_fraction']:.1f} % within tolerance, {p['failed_cells']} failed"],
        ["pulses per cell", f"median {p['pulses_median']:.0f}, p95 {p['pulses_p95']:.0f}, max {p['pulses_max']}"],
        ["accuracy: software ideal", f"{100 * a['software']:.1f} % ({r['samples']} test images)"],
        ["accuracy: ideal net on chips", f"{100 * a['ideal_deployed']:.1f} %"],
        ["accuracy: hw-aware net on chips", f"{100 * a['hw_deployed']:.1f} %"],
        ["reports", f"{r['characterization']['report']}, {r['report']}"],
        ["run store", f"{db} (demo run {r['run_id']}; `labkit runs list --out {db}`)"],
        ["time", fmt(r["seconds"], "s")],
    ], header=["labkit demo", "result"])
