"""``labkit program``: program signed weights onto the array, or refresh a programmed chip.

``labkit program --backend URI WEIGHTS.npz [--tolerance 0.01] [--json]`` maps the
array ``weights`` (rows x signed outputs, 16x8 for one array) onto dual-branch
currents (labkit.program.mapping), erases the array and programs it cell by cell with
program-and-verify (labkit.program.programming), writing the chip-state file as it goes.
``labkit program --refresh`` re-verifies a programmed chip against its chip-state file
and re-programs only the cells out of tolerance. Every input is validated before the
first pulse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path

import numpy as np

from labkit.backend import open_backend
from labkit.program.chipstate import ChipState
from labkit.program.mapping import SCHEMES, WeightWindow, map_weights, precision, unmap_currents
from labkit.program.programming import PLANNERS, ProgramConfig, program_array, refresh
from labkit.store import RunStore

HELP = "program signed weights onto the array (program-and-verify), or --refresh a programmed chip"


def add_arguments(parser) -> None:
    parser.add_argument("weights", nargs="?", metavar="WEIGHTS.npz",
                        help="npz file holding one array named 'weights' (rows x signed outputs, e.g. 16x8)")
    parser.add_argument("--backend", default="sim://", help="backend URI (default: sim://)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="relative current tolerance per cell (default 0.01 = 1 %%; "
                             "with --refresh: the one on record)")
    parser.add_argument("--algorithm", choices=sorted(PLANNERS), default="adaptive",
                        help="pulse planner: adaptive (learns each cell) or ispp (baseline); default adaptive")
    parser.add_argument("--state", metavar="FILE", default=None,
                        help="chip-state file (default ./chipstate-CHIPID.json)")
    parser.add_argument("--refresh", action="store_true",
                        help="re-verify against the chip-state file and fix only cells out of tolerance")
    parser.add_argument("--clip", action="store_true", help="clip weights outside [-1, 1] instead of refusing")
    parser.add_argument("--headroom", type=float, default=0.9,
                        help="fraction of the bit line's full-scale charge a column may use (default 0.9)")
    parser.add_argument("--scheme", choices=SCHEMES, default="offset", help="dual-branch scheme (default offset)")
    parser.add_argument("--max-pulses", type=int, default=None, help="program pulses per cell at most (default 150)")
    parser.add_argument("--out", metavar="DB", default=None, help="also record the job as a run in this run store")


def load_weights(path: str) -> np.ndarray:
    """The array ``weights`` of an npz file (no pickle); ValueError naming what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"weights file {path} does not exist")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as exc:  # not numpy at all, a corrupt zip, a pickle
        raise ValueError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array; expected an .npz file with an array named 'weights'")
    with data:
        if "weights" not in data.files:
            raise ValueError(f"{path} holds {sorted(data.files)}; expected an array named 'weights'")
        try:
            return np.array(data["weights"])
        except ValueError:
            raise ValueError(f"{path}: 'weights' is an object array; expected numbers") from None


def default_state_path(chip_id: str) -> Path:
    return Path(f"chipstate-{re.sub(r'[^A-Za-z0-9_.-]+', '_', chip_id)}.json")


def run(args, out) -> dict:
    overrides = {} if args.tolerance is None else {"tolerance": args.tolerance}
    if args.max_pulses is not None:
        overrides["max_pulses"] = args.max_pulses
    config = ProgramConfig(**overrides)  # bad tolerance / budget: before anything opens
    if args.refresh and args.weights:
        raise ValueError("--refresh re-verifies against the chip-state file (--state); do not pass WEIGHTS")
    if not args.refresh and not args.weights:
        raise ValueError("WEIGHTS.npz is required (or --refresh with a chip-state file)")
    raw = None if args.refresh else load_weights(args.weights)
    if args.state is not None and args.refresh and not Path(args.state).is_file():
        raise ValueError(f"chip-state file {args.state} does not exist")
    with open_backend(args.backend) as backend:  # opening applies nothing
        ident, g = backend.identity, backend.geometry
        state_path = Path(args.state) if args.state else default_state_path(ident.chip_id)
        if args.refresh:
            if not state_path.is_file():
                raise ValueError(f"no chip-state file {state_path} for chip {ident.chip_id}; pass --state FILE")
            state = ChipState.load(state_path)
            state.check_chip(ident)  # another chip's record: an error before the first pulse
            if args.tolerance is None:
                config = dataclasses.replace(config, tolerance=state.tolerance)
            window = WeightWindow.from_dict(state.window) if state.window else None
            weights = state.weights
            what = f"re-verifying {int(np.sum(np.isfinite(state.targets_a)))} cells"
        else:
            window = WeightWindow.for_backend(backend, headroom=args.headroom, scheme=args.scheme)
            weights = _checked(raw, g, args.clip)
            targets = map_weights(weights, window, g)
            if state_path.exists():
                ChipState.load(state_path).check_chip(ident)
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
                result = program_array(backend, targets, config=config, algorithm=args.algorithm,
                                       state_path=state_path, progress=progress, weights=weights,
                                       window=window.to_dict())
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
            got = unmap_currents(final.achieved_a, window, g)
            info["weight_rms_error"] = float(np.sqrt(np.mean((got - weights) ** 2)))
            info["weight_max_error"] = float(np.max(np.abs(got - weights)))
    _print(out, info)
    return info


def _checked(raw, geometry, clip: bool) -> np.ndarray:
    from labkit.program.mapping import check_weights

    return check_weights(raw, geometry, clip=clip)


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
