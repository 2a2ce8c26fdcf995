"""``labkit program``: program signed weights onto the array, or refresh a programmed chip.

``labkit program --backend URI WEIGHTS.npz [--tolerance 0.01] [--json]`` maps the
array ``weights`` (rows x signed outputs, 16x8 for one array) onto dual-branch
currents and programs it cell by cell with program-and-verify, writing the chip-state
file ahead of every erase and pulse (labkit.program.program_weights).
``labkit program --refresh`` re-verifies a programmed chip against its chip-state file
and re-programs only the cells out of tolerance (labkit.program.refresh).
``labkit program --refresh --plan --state FILE --retention MODEL.npz [--temperature C]``
applies nothing: from the record and the chip's retention model
(labkit.program.retention) it reports when the chip leaves tolerance (``--tolerance``,
default 0.015 rms after the readout gain) and what a refresh costs. Every input,
the ``--state`` path included, is validated before the first pulse. Exit code 3 when
cells failed (labkit.program.FailedCellsError).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np

from labkit.backend import open_backend
from labkit.cli import options
from labkit.errors import UsageError
from labkit.program import (MAX_PULSES, PLANNERS, SCHEMES, ChipState, FailedCellsError, ProgramConfig, WeightWindow,
                            check_recipe, check_state_path, load_weights, make_planner, plan_weights, precision,
                            program_weights, refresh, weight_errors)
from labkit.program.chipstate import state_file_name
from labkit.store import RunStore

HELP = "program signed weights onto the array (program-and-verify), or --refresh a programmed chip"


def add_arguments(parser) -> None:
    parser.add_argument("weights", nargs="?", metavar="WEIGHTS.npz",
                        help="npz file holding one array named 'weights' (rows x signed outputs, e.g. 16x8)")
    options.add(parser, "backend", "store", store="also record the job as a run in this run store")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="relative current tolerance per cell (default 0.01 = 1 %%; "
                             "with --refresh: the one on record)")
    parser.add_argument("--algorithm", choices=sorted(PLANNERS), default="adaptive",
                        help="pulse planner: adaptive (learns each cell) or ispp (baseline); default adaptive")
    parser.add_argument("--state", metavar="FILE", default=None,
                        help="chip-state file (default ./chipstate-CHIPID.json)")
    parser.add_argument("--refresh", action="store_true",
                        help="re-verify against the chip-state file and fix only cells out of tolerance")
    parser.add_argument("--plan", action="store_true",
                        help="with --refresh: apply nothing; report when the chip leaves tolerance and what a "
                             "refresh costs (needs --retention)")
    parser.add_argument("--retention", metavar="FILE", default=None,
                        help="retention model of the chip (labkit.program.retention), for --refresh --plan")
    parser.add_argument("--temperature", type=float, default=None, metavar="DEGC",
                        help="--plan: the chip's temperature from now on (default: the one on record)")
    parser.add_argument("--clip", action="store_true", help="clip weights outside [-1, 1] instead of refusing")
    parser.add_argument("--headroom", type=float, default=0.9,
                        help="fraction of the bit line's full-scale charge a column may use (default 0.9)")
    parser.add_argument("--scheme", choices=SCHEMES, default="offset", help="dual-branch scheme (default offset)")
    parser.add_argument("--max-pulses", type=options.count(1, MAX_PULSES, "a number of pulses"), default=None,
                        help="program pulses per cell at most (default 150)")


def default_state_path(chip_id: str) -> Path:
    return Path(state_file_name(chip_id))


def run(args, out) -> dict:
    if args.plan or args.retention is not None:
        return _plan(args, out)
    overrides = {} if args.tolerance is None else {"tolerance": args.tolerance}
    if args.max_pulses is not None:
        overrides["max_pulses"] = args.max_pulses
    config = ProgramConfig(**overrides)  # bad tolerance / budget: before anything opens
    if args.refresh and args.weights:
        raise UsageError("--refresh re-verifies against the chip-state file (--state); do not pass WEIGHTS")
    if not args.refresh and not args.weights:
        raise UsageError("WEIGHTS.npz is required (or --refresh with a chip-state file)")
    raw = None if args.refresh else load_weights(args.weights)
    if args.state is not None:
        check_state_path(args.state)  # the path and any record there, before the backend opens
        if args.refresh and not Path(args.state).is_file():
            raise UsageError(f"chip-state file {args.state} does not exist")
    with open_backend(args.backend) as backend:  # opening applies nothing
        ident, g = backend.identity, backend.geometry
        state_path = Path(args.state) if args.state else default_state_path(ident.chip_id)
        check_recipe(config, backend.envelope, make_planner(args.algorithm))
        if args.refresh:
            if not state_path.is_file():
                raise UsageError(f"no chip-state file {state_path} for chip {ident.chip_id}; pass --state FILE")
            state = ChipState.load(state_path)
            state.check_chip(ident)  # another chip's record: an error before the first pulse
            if args.tolerance is None:
                config = dataclasses.replace(config, tolerance=state.tolerance)
            window = WeightWindow.from_dict(state.window) if state.window else None
            weights = state.weights
            if weights is not None and weights.shape != (g.rows, g.signed_outputs):
                raise UsageError(f"chip-state file {state_path}: field 'weights' has shape {weights.shape}; "
                                 f"expected {(g.rows, g.signed_outputs)}")
            what = f"re-verifying {int(np.sum(np.isfinite(state.targets_a)))} cells"
        else:
            plan = plan_weights(backend, raw, headroom=args.headroom, scheme=args.scheme, clip=args.clip)
            window, weights = plan.window, plan.weights
            check_state_path(state_path, ident)
            what = f"programming {g.rows * g.cols} cells to +-{config.tolerance:g}"
        out.info(f"{ident.chip_id} on {args.backend}: {what} ({args.algorithm}); chip state -> {state_path}")
        with contextlib.ExitStack() as stack:
            run_ = None
            if args.out:  # the job as a run in the run store: marked failed/aborted if it dies
                store = stack.enter_context(RunStore(args.out))
                run_ = stack.enter_context(store.run("program", backend_uri=args.backend, chip_id=ident.chip_id,
                                                     settings=backend.settings))
            bar = stack.enter_context(out.progress("refreshing" if args.refresh else "programming",
                                                   total=g.rows * g.cols))

            def progress(done: int, total: int, text: str) -> None:
                bar.total = max(total, 1)
                bar.advance(done - bar.done, status=text)

            if args.refresh:
                result = refresh(backend, state, config=config, algorithm=args.algorithm,
                                 state_path=state_path, progress=progress)
            else:
                result, _, _ = program_weights(backend, raw, window=window, clip=args.clip, config=config,
                                               algorithm=args.algorithm, state_path=state_path, progress=progress)
            summary = result.summary()
            final = ChipState.load(state_path)
            if run_ is not None:
                run_.put_array("targets_a", final.targets_a)
                run_.put_array("achieved_a", final.achieved_a)
                run_.put_array("pulses", final.pulses)
                run_.put_result({**summary, "state": str(state_path)})
    info = {"backend": args.backend, "state": str(state_path), "refresh": bool(args.refresh), **summary}
    if window is not None:
        info["window"] = window.to_dict()
        info["precision"] = precision(window, config.tolerance)
        if weights is not None and np.all(np.isfinite(final.achieved_a)):
            info.update(weight_errors(final.achieved_a, window, g, weights))
    _print(out, info)
    if info["failed_cells"]:
        raise FailedCellsError(f"{info['failed_cells']} of {info['cells']} cells failed (not within "
                               f"+-{info['tolerance']:g}); see {state_path}")
    return info


def _plan(args, out) -> dict:
    """``--refresh --plan``: when the programmed chip leaves tolerance, from its chip-state
    file and retention model, and what refreshing it costs. Nothing is opened or applied."""
    import math
    import time

    from labkit.program.retention import read_retention_model, refresh_plan

    if not (args.refresh and args.plan):
        raise UsageError("--plan and --retention go together with --refresh: labkit program --refresh --plan "
                         "--state FILE --retention FILE")
    if args.retention is None:
        raise UsageError("--refresh --plan needs --retention FILE (a retention model of the chip)")
    if args.state is None:
        raise UsageError("--refresh --plan needs --state FILE (the chip-state file of the programmed chip)")
    tol = 0.015 if args.tolerance is None else args.tolerance
    if not (isinstance(tol, float) and math.isfinite(tol) and 0 < tol < 1):
        raise UsageError(f"--tolerance {tol!r}; expected a fraction in (0, 1), e.g. 0.015")
    state = ChipState.load(args.state)
    model = read_retention_model(args.retention)
    if model.chip_id and model.chip_id != state.chip_id:
        raise UsageError(f"retention model {args.retention} is of chip {model.chip_id!r}, the chip-state file "
                         f"{args.state} of {state.chip_id!r}")
    if model.per_decade.shape != (state.rows, state.cols):
        raise UsageError(f"retention model {args.retention} is {model.per_decade.shape}; the chip is "
                         f"{(state.rows, state.cols)}")
    recorded = state.settings.get("temperature_k")
    kelvin = args.temperature + 273.15 if args.temperature is not None else recorded
    if kelvin is None or not math.isfinite(kelvin) or kelvin <= 0:
        raise UsageError("no temperature on record in the chip-state file; pass --temperature DEGC")
    programmed = [h["time"] for h in state.history if str(h.get("event", "")).endswith("complete")]
    if not programmed:
        raise UsageError(f"chip-state file {args.state} records no complete programming; program the chip first")
    age = max(time.time() - float(programmed[-1]), 0.0)
    targeted = np.isfinite(state.targets_a)
    per_cell = float(np.median(state.pulses[targeted])) if targeted.any() else 0.0
    plan = refresh_plan(model, state.targets_a, kelvin, tol, age_now_s=age, pulses_per_cell=per_cell,
                        chip_id=state.chip_id)
    info = {"plan": True, "state": str(args.state), "programmed_at": float(programmed[-1]), **plan.to_dict()}
    leave = plan.leaves_tolerance_after_s
    info["refresh_in_s"] = None if not math.isfinite(leave) else max(leave - age, 0.0)
    when = "not within 100 years" if not math.isfinite(leave) else (
        "now (already out of tolerance)" if leave <= age else f"in {_duration(leave - age)}")
    out.table([["chip", state.chip_id], ["temperature", f"{kelvin - 273.15:.1f} degC"],
               ["programmed", f"{_duration(age)} ago"], ["rms error now (after gain)", f"{100 * plan.error_now:.2f} %"],
               ["leaves +-" + f"{100 * tol:g} %", when],
               ["refresh cost", f"{plan.cells} cells, {plan.rows_erased} row erases, ~{plan.pulses} pulses"]],
              header=["refresh plan", state.chip_id])
    return info


def _duration(s: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.0f} s"


def _print(out, info: dict) -> None:
    pct = lambda x: "-" if x is None else f"{100 * x:.2f} %"  # noqa: E731
    rows = [
        ["cells", info["cells"]],
        ["within tolerance", f"{100 * info['within_tolerance_fraction']:.1f} % (+-{100 * info['tolerance']:g} %)"],
        ["rms / max error", f"{pct(info['rms_rel_error'])} / {pct(info['max_rel_error'])}"],
        ["pulses median / p95 / max", f"{info['pulses_median']:g} / {info['pulses_p95']:g} / {info['pulses_max']}"],
        ["failed cells", info["failed_cells"]],
        ["row erases (partial)", f"{info['erases']} ({info['partial_erases']})"],
        ["chip-state file", info["state"]],
    ]
    if "weight_rms_error" in info:
        rows.append(["weight error rms / max", f"{info['weight_rms_error']:.4f} / {info['weight_max_error']:.4f}"])
    out.table(rows, header=["program" if not info["refresh"] else "refresh", info["chip_id"]])
    for f in info["failed"][:10]:
        out.print(f"  failed ({f['row']}, {f['col']}): {f['reason']}")
