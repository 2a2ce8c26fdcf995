"""Characterize one 16x16 array: the standard suite, step by step.

What it does: sets the operating point (read voltage, integration time), then measures
the zero-input baseline, the cell current map, Id-Vg curves of a few cells, random /
one-hot / repeated / network-activation VMM datasets, the crosstalk map and the droop
sweep, plus a temperature sweep and a retention check where the backend can (the
emulated chip and the virtual bench can; a bench without a temperature controller
skips them). Every point goes into the run store as it is measured, so an interrupted
run keeps what it measured.

What it writes: one ``characterize`` run in the run store (``--out``, default
``$LABKIT_STORE`` or ``./labkit-runs.sqlite``) and a PNG report next to it
(``STORE-runID.png``); it prints the headline figures and both paths.

How to run it::

    python experiments/characterize.py --quick                       # emulated chip, seconds
    python experiments/characterize.py --backend "sim://?seed=3"     # full sizes, another chip
    python experiments/characterize.py --backend station:bench.yaml  # virtual bench or a real one

Copy it and edit the settings below: the steps in ``measure`` are plain calls into
:mod:`labkit.measure`; drop one, change its arguments or add your own.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from labkit import open_backend
from labkit import measure as ch
from labkit.backend import TemperatureControl, VirtualClock
from labkit.ui.console import Console
from labkit.ui.plots import characterization_report
from labkit.store import RunStore, default_store_path, sigterm_as_keyboard_interrupt
from labkit.units import fmt

# ------------------------------------------------------------------ settings (edit these)
READ_VOLTAGE_V = 1.8  # word-line high level, for cell reads and VMMs (V)
INTEGRATION_TIME_S = 1e-6  # T: an input x is a word-line pulse of x * T (s)

SETTINGS = dict(  # kept with --quick
    seed=0,  # seed of the random input patterns
    zero_fraction=0.4,  # inputs that are zero in the random patterns (0.3-0.5 separates edges from durations)
    idvg_cells=((0, 0), (0, 15), (7, 8), (15, 0), (15, 15)),  # cells of the Id-Vg sweep, (row, col)
    idvg_start_v=1.0, idvg_stop_v=2.2, idvg_points=25,  # gate sweep (V)
    idvg_compliance_a=2e-6,  # source-measure compliance (A)
    temperature=True,  # temperature sweep, where the backend has a temperature controller
    retention=True,  # retention check, where the backend has a virtual clock (it ages the chip: last)
)
SIZES = dict(  # dataset sizes; --quick uses SuiteConfig.quick()'s small ones instead
    baseline_repeats=512, current_averages=4, random_patterns=4096, onehot_levels=(0.25, 0.5, 0.75, 1.0),
    onehot_repeats=8, repeat_patterns=128, repeats=16, activation_patterns=1024, crosstalk_widths=(1, 2, 3, 4),
    crosstalk_repeats=128, droop_levels=16, droop_repeats=32,
    temperature_offsets_k=(-10.0, 0.0, 10.0, 20.0, 30.0),  # around the starting temperature (K)
    retention_checkpoints_s=(0.0, 10.0, 100.0, 1e3, 1e4, 1e5),  # elapsed (virtual) time (s)
)


def measure(backend, config: ch.SuiteConfig, run, progress) -> ch.Characterization:
    """The standard suite, one library call per step; each step writes to ``run``."""
    start = time.perf_counter()
    base = ch.measure_baseline(backend, config.baseline_repeats, run, progress)
    currents = ch.cell_current_map(backend, averages=config.current_averages, run=run)
    gate_v = ch.gate_voltages(config.idvg_start_v, config.idvg_stop_v, config.idvg_points, backend)
    idvg = ch.id_vg_sweep(backend, [list(c) for c in config.idvg_cells], gate_v, config.idvg_compliance_a,
                          run, progress)
    random = ch.vmm_random(backend, base, config.random_patterns, config.zero_fraction, config.seed, run, progress)
    onehot = ch.vmm_onehot(backend, base, config.onehot_levels, config.onehot_repeats, run, progress)
    repeats = ch.vmm_repeats(backend, base, config.repeat_patterns, config.repeats, config.zero_fraction,
                             config.seed + 1, run, progress)
    acts = ch.vmm_activations(backend, base, ch.network_activations(config.activation_patterns, config.seed),
                              run, progress)
    crosstalk = ch.crosstalk_map(backend, config.crosstalk_widths, config.crosstalk_repeats, run=run,
                                 progress=progress)
    droop = ch.droop_sweep(backend, base, config.droop_levels, config.droop_repeats, run=run, progress=progress)
    result = ch.Characterization(backend.identity.backend, backend.identity.chip_id, backend.geometry.rows,
                                 backend.geometry.cols, config, base, currents, idvg, random, onehot, repeats,
                                 acts, crosstalk, droop)
    if config.temperature and backend.capability(TemperatureControl) and backend.temperature_k():
        t0 = backend.temperature_k()
        result.temperature = ch.temperature_sweep(backend, [t0 + d for d in config.temperature_offsets_k],
                                                  run=run, progress=progress)
    elif config.temperature:
        result.skipped.append("temperature (no temperature controller)")
    if config.retention and backend.capability(VirtualClock):
        result.retention = ch.retention_check(backend, config.retention_checkpoints_s, run=run, progress=progress)
    elif config.retention:
        result.skipped.append("retention (no virtual clock)")
    result.duration_s = time.perf_counter() - start
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sim://", help="backend URI (default sim://)")
    parser.add_argument("--out", default=None, help="run store file (default $LABKIT_STORE or ./labkit-runs.sqlite)")
    parser.add_argument("--quick", action="store_true", help="small datasets (seconds on sim://)")
    args = parser.parse_args(argv)

    config = (ch.SuiteConfig.quick(**SETTINGS) if args.quick else ch.SuiteConfig(**SETTINGS, **SIZES)).validate()
    db = Path(args.out) if args.out else default_store_path()
    out = Console()
    with open_backend(args.backend) as backend, RunStore(db) as store:
        backend.configure(read_voltage_v=READ_VOLTAGE_V, integration_time_s=INTEGRATION_TIME_S)
        config.validate(backend)  # sweep ranges against this backend's limits, before measuring
        with sigterm_as_keyboard_interrupt(), store.run(
                "characterize", backend_uri=args.backend, chip_id=backend.identity.chip_id,
                settings=backend.settings, provenance=backend.provenance(),
                seeds={"patterns": config.seed, "repeats": config.seed + 1}) as run:
            out.info(f"run {run.id}: characterizing {backend.identity.chip_id} on {args.backend}")
            result = measure(backend, config, run, out.progress)
            summary = result.summary()
            run.put_result(summary)
            report = characterization_report(result, db.with_name(f"{db.stem}-run{run.id}.png"))
            run.put_result({"report": str(report)})

    s = summary
    out.table([
        ["chip", f"{result.chip_id} ({args.backend})"],
        ["noise floor SER", "unbounded" if math.isinf(s["noise_floor_ser_db"]) else
         f"{s['noise_floor_ser_db']:.1f} dB ({s['noise_floor_bits']:.1f} bits)"],
        ["output noise", fmt(s["output_noise_s"], "s")],
        ["cell currents", f"median {fmt(s['cell_current_median_a'], 'A')}, spread "
                          f"{100 * s['cell_current_spread']:.0f} %"],
        ["crosstalk per edge", f"{fmt(s['crosstalk_mean_v'], 'V')} mean, {fmt(s['crosstalk_max_v'], 'V')} max"],
        ["crosstalk pattern", s["crosstalk_pattern"]],
        ["droop at full input", f"{100 * s['droop_fraction']:.1f} %"],
        ["skipped", ", ".join(s["skipped"]) or "-"],
        ["run", f"{run.id} in {db} ({s['duration_s']:.1f} s)"],
        ["report", str(report)],
    ], header=["characterization", "value"])
    return {"run_id": run.id, "store": str(db), "report": str(report), "summary": summary}


if __name__ == "__main__":
    main()
