"""Program a signed weight matrix onto one array with program-and-verify.

What it does: maps a ``(16, 8)`` signed weight matrix (rows x signed outputs, |w| <= 1)
onto dual-branch cell currents (:mod:`labkit.program.mapping`), erases the array and programs
every cell to its target current with the adaptive planner (it learns each cell's
response from its own pulses; ``--algorithm ispp`` is the step-pulse baseline), then
prints the current error, the weight error and the pulse statistics. The weights come
from an ``.npz`` file holding an array named ``weights``, or a demo matrix
(``--demo random``: uniform in [-1, 1]; ``--demo structured``: a cosine basis, 8
smooth signed filters over the 16 inputs).

``--refresh``: after programming, let the chip age ``--age`` seconds (on a backend with
a virtual clock, such as the emulated chip; on a bench without one it re-verifies at
once), then re-verify every cell against the chip-state file and re-program only those
that drifted out of tolerance. ``--refresh-only`` does just that on a chip programmed
earlier (its chip-state file, ``--state``).

What it writes: the chip-state file (JSON: target, verified current, pulses and status
per cell, written after every round, so an interrupted job leaves an exact record), a
``program`` run in the run store (``--out``) with those grids, and a PNG report
(weights asked vs achieved, pulses per cell, current error).

How to run it::

    python experiments/program_weights.py --quick                    # demo matrix on sim://
    python experiments/program_weights.py my_weights.npz --refresh --age 86400
    python experiments/program_weights.py my_weights.npz --backend station:bench.yaml
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from labkit import open_backend
from labkit.backend import VirtualClock
from labkit.measure import cell_current_map
from labkit.program.chipstate import ChipState
from labkit.cli.commands.program import load_weights
from labkit.ui.console import Console
from labkit.program.mapping import WeightWindow, precision, unmap_currents
from labkit.ui.plots import save_png
from labkit.program.programming import ProgramConfig, program_weights, refresh
from labkit.store import RunStore, default_store_path, sigterm_as_keyboard_interrupt

# ------------------------------------------------------------------ settings (edit these)
TOLERANCE = 0.01  # |I / I_target - 1| that counts as programmed
MAX_PULSES = 150  # program pulses per cell, at most
HEADROOM = 0.9  # fraction of the bit line's full-scale charge one column may use
SCHEME = "offset"  # dual-branch scheme: "offset" (zero = both branches at I_min) or "balanced"


def demo_weights(kind: str, rows: int = 16, outputs: int = 8, seed: int = 0) -> np.ndarray:
    """A demo matrix: ``random`` (uniform in [-1, 1]) or ``structured`` (cosine basis)."""
    if kind == "random":
        return np.random.default_rng(seed).uniform(-1.0, 1.0, (rows, outputs))
    i, k = np.arange(rows)[:, None], np.arange(outputs)[None, :]
    return np.cos(np.pi * (i + 0.5) * k / rows)


def statistics(result, weights, achieved) -> dict:
    """Current and weight errors and pulse counts of one job."""
    s = result.summary()
    s["weight_rms_error"] = float(np.sqrt(np.mean((achieved - weights) ** 2)))
    s["weight_max_error"] = float(np.max(np.abs(achieved - weights)))
    return s


def report(path: Path, weights, achieved, state: ChipState) -> Path:
    """PNG: weights asked vs achieved, pulses per cell, relative current error per cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 3)
    ax[0].plot([-1, 1], [-1, 1], color="0.6", lw=1)
    ax[0].plot(weights.ravel(), achieved.ravel(), ".", ms=5)
    ax[0].set(title="weights", xlabel="asked", ylabel="achieved (verified currents)")
    im = ax[1].imshow(state.pulses, cmap="viridis")
    fig.colorbar(im, ax=ax[1], label="program pulses (all jobs on record)")
    ax[1].set(title="pulses per cell", xlabel="column", ylabel="row")
    err = 100 * (state.achieved_a / state.targets_a - 1)
    lim = max(100 * state.tolerance, float(np.nanmax(np.abs(err))))
    im = ax[2].imshow(err, cmap="coolwarm", vmin=-lim, vmax=lim)
    fig.colorbar(im, ax=ax[2], label="current error (%)")
    ax[2].set(title=f"I / I_target - 1 (tolerance {100 * state.tolerance:g} %)", xlabel="column", ylabel="row")
    return save_png(fig, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="?", help="npz file with an array 'weights' (16 x 8, |w| <= 1)")
    parser.add_argument("--backend", default="sim://", help="backend URI (default sim://)")
    parser.add_argument("--out", default=None, help="run store file (default $LABKIT_STORE or ./labkit-runs.sqlite)")
    parser.add_argument("--quick", action="store_true", help="a looser tolerance (2 %%): fewer pulses")
    parser.add_argument("--demo", choices=("random", "structured"), default="structured",
                        help="demo matrix when no weights file is given (default structured)")
    parser.add_argument("--algorithm", choices=("adaptive", "ispp"), default="adaptive")
    parser.add_argument("--state", default=None, help="chip-state file (default: next to the store)")
    parser.add_argument("--refresh", action="store_true", help="after programming, age --age s and refresh")
    parser.add_argument("--refresh-only", action="store_true", help="only refresh the chip on record in --state")
    parser.add_argument("--age", type=float, default=86400.0, help="virtual seconds before --refresh (default 1 day)")
    args = parser.parse_args(argv)

    config = ProgramConfig(tolerance=0.02 if args.quick else TOLERANCE, max_pulses=MAX_PULSES)
    weights = None
    if not args.refresh_only:
        weights = load_weights(args.weights) if args.weights else demo_weights(args.demo)
    db = Path(args.out) if args.out else default_store_path()
    out = Console()
    with open_backend(args.backend) as backend, RunStore(db) as store:
        chip = backend.identity.chip_id
        state_path = Path(args.state) if args.state else db.with_name(
            f"chipstate-{re.sub(r'[^A-Za-z0-9_.-]+', '_', chip)}.json")
        with sigterm_as_keyboard_interrupt(), store.run("program", backend_uri=args.backend, chip_id=chip,
                                                        settings=backend.settings) as run:
            jobs = {}
            if weights is not None:
                out.info(f"programming {chip} on {args.backend} ({args.algorithm}, +-{config.tolerance:g})")
                result, window, achieved = program_weights(
                    backend, weights, headroom=HEADROOM, scheme=SCHEME, config=config, algorithm=args.algorithm,
                    state_path=state_path)
                result_weights = np.asarray(weights, dtype=float)
                jobs["program"] = statistics(result, result_weights, achieved)
            if args.refresh or args.refresh_only:
                clock = backend.capability(VirtualClock)
                aged = 0.0 if clock is None or args.refresh_only else args.age
                if aged:
                    clock.advance_time_s(aged)
                state = ChipState.load(state_path)
                if state.window is None or state.weights is None:
                    raise SystemExit(f"{state_path} holds currents, not weights; use labkit program --refresh")
                before = cell_current_map(backend, averages=config.final_reads) / state.targets_a - 1
                jobs["drift"] = {"aged_s": aged, "max_rel_error": float(np.nanmax(np.abs(before))),
                                 "out_of_tolerance": int(np.nansum(np.abs(before) > state.tolerance))}
                out.info(f"refreshing {chip}: {jobs['drift']['out_of_tolerance']} cells out of tolerance")
                result = refresh(backend, state_path, config=None if args.refresh_only else config)
                window = WeightWindow.from_dict(state.window)
                result_weights = state.weights
                g = backend.geometry
                achieved = unmap_currents(result.grid("achieved_a", g.rows, g.cols), window, g)
                jobs["refresh"] = statistics(result, result_weights, achieved)
            final = ChipState.load(state_path)
            png = report(db.with_name(f"{db.stem}-run{run.id}.png"), result_weights, achieved, final)
            for name in ("targets_a", "achieved_a", "pulses"):
                run.put_array(name, getattr(final, name))
            run.put_result({"jobs": jobs, "state": str(state_path), "report": str(png),
                            "precision": precision(window, final.tolerance)})

    rows = []
    for name, s in jobs.items():
        if name == "drift":
            when = f"aged {s['aged_s']:g} s" if s["aged_s"] else "before refresh"
            rows.append([when, f"{s['out_of_tolerance']} cells out of tolerance, worst {100 * s['max_rel_error']:.1f} %",
                         "", ""])
            continue
        rows.append([name, f"{100 * s['within_tolerance_fraction']:.1f} % within +-{100 * s['tolerance']:g} %, "
                           f"rms {100 * s['rms_rel_error']:.2f} %, max {100 * s['max_rel_error']:.2f} %",
                     f"rms {s['weight_rms_error']:.4f}, max {s['weight_max_error']:.4f}",
                     f"{s['pulses_median']:g} / {s['pulses_p95']:g} / {s['pulses_max']} ({s['pulses_total']} total, "
                     f"{s['erases']} row erases, {s['failed_cells']} failed)"])
    out.table(rows, header=["job", "current error", "weight error", "pulses median / p95 / max"])
    out.print(f"chip-state file {state_path}\nrun {run.id} in {db}\nreport {png}")
    return {"run_id": run.id, "store": str(db), "state": str(state_path), "report": str(png), "jobs": jobs}


if __name__ == "__main__":
    main()
