"""The one weights -> targets -> program-and-verify pipeline, and the refresh of a programmed chip.

- :func:`program_weights` (what the ``labkit program`` command and deployment call):
  signed weights -> :class:`~labkit.program.mapping.WeightWindow` -> target currents ->
  :func:`program_array`, with everything checked before the chip is touched.
- :func:`program_array`: erase the targeted rows and program-and-verify target currents (A).
- :func:`refresh`: re-verify against a chip-state record, re-program only what is out of
  tolerance (or unknown: a record left by a killed run is read first, never trusted).

Validation happens first, in this order, and raises UsageError before any chip access:
the recipe (:class:`ProgramConfig`) against the SafetyEnvelope and the planner's range,
the weights (real or integer dtypes, exact shape, finite), the targets, and the
chip-state path (:func:`check_state_path`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labkit.errors import UsageError
from labkit.program.chipstate import ChipState, check_window
from labkit.program.config import ProgramConfig, check_recipe, check_targets
from labkit.program.job import Progress, ProgramJob
from labkit.program.mapping import WeightWindow, check_weights, map_weights, unmap_currents
from labkit.program.planners import Planner, make_planner
from labkit.program.results import ProgramResult


def check_state_path(path: str | Path | None, identity=None) -> ChipState | None:
    """Check that a chip-state file can be written at ``path`` (its folder exists and is
    writable, the path is not a folder) and, if one is there, that it is a chip-state
    file of ``identity``'s chip. Returns the record found there, if any."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"chip-state path {p} is a directory; expected a file name")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"chip-state path {p}: folder {folder} does not exist; expected an existing folder")
    try:  # the real test: create (and remove) a file there, as the atomic save will
        fd, probe = tempfile.mkstemp(prefix=p.name + ".", suffix=".probe", dir=folder)
    except OSError as exc:
        raise UsageError(f"chip-state path {p}: cannot write in {folder} ({exc.strerror}); "
                         f"expected a writable folder") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    if p.exists():
        if not p.is_file():
            raise UsageError(f"chip-state path {p} is not a regular file; expected a chip-state file")
        earlier = ChipState.load(p)
        if identity is not None:
            earlier.check_chip(identity)
        return earlier
    return None


@dataclass(frozen=True)
class WeightPlan:
    """Checked weights ``(rows, pairs)``, the window and the target currents ``(rows, cols)`` (A)."""

    weights: np.ndarray
    window: WeightWindow
    targets_a: np.ndarray


def plan_weights(backend, weights, *, window: WeightWindow | None = None, headroom: float = 0.9,
                 scheme: str = "offset", clip: bool = False, pad: bool = False, rows_used: int | None = None,
                 outputs_used: int | None = None) -> WeightPlan:
    """Weights -> window -> targets, nothing applied. ``window`` default: the backend's at
    its integration time (labkit.program.mapping). ``rows_used`` / ``outputs_used``: only
    the first rows / signed outputs get targets (the cells of the others are left alone)."""
    g = backend.geometry
    win = window or WeightWindow.for_backend(backend, headroom=headroom, scheme=scheme)
    w = check_weights(weights, g, clip=clip, pad=pad)
    targets = map_weights(w, win, g)
    if rows_used is not None:
        targets[int(rows_used):, :] = np.nan
    if outputs_used is not None:
        used = [col for k, pair in enumerate(g.pairs) if k < int(outputs_used) for col in pair]
        targets[:, np.setdiff1d(np.arange(g.cols), used)] = np.nan
    return WeightPlan(w, win, targets)


def weight_errors(achieved_a, window: WeightWindow, geometry, weights) -> dict:
    """RMS and max |error| of the weights the currents ``achieved_a`` (A) represent."""
    got = unmap_currents(achieved_a, window, geometry)
    w = np.asarray(weights, dtype=float)
    if w.shape != got.shape:
        raise UsageError(f"weights have shape {w.shape}; expected {got.shape} (rows x signed outputs)")
    ok = np.isfinite(got)
    if not ok.any():
        return {"weight_rms_error": None, "weight_max_error": None}
    return {"weight_rms_error": float(np.sqrt(np.mean((got[ok] - w[ok]) ** 2))),
            "weight_max_error": float(np.max(np.abs(got[ok] - w[ok])))}


def program_weights(backend, weights, *, window=None, headroom: float = 0.9, scheme: str = "offset",
                    clip: bool = False, pad: bool = False, config: ProgramConfig | None = None,
                    algorithm: str | Planner = "adaptive", state_path: str | Path | None = None,
                    progress: Progress | None = None, rows_used: int | None = None,
                    outputs_used: int | None = None):
    """Map a signed weight matrix ``(rows, signed outputs)`` onto dual-branch currents
    and program it (one tile = one array). Returns ``(result, window, achieved)``:
    the ProgramResult, the WeightWindow used (default: the backend's, see
    labkit.program.mapping) and the weights the verified currents represent, ``(rows, pairs)``.
    ``pad`` accepts a smaller tile (zeros elsewhere); ``clip`` clips |w| > 1;
    ``rows_used`` / ``outputs_used`` leave the cells of the other rows / outputs alone."""
    plan = plan_weights(backend, weights, window=window, headroom=headroom, scheme=scheme, clip=clip, pad=pad,
                        rows_used=rows_used, outputs_used=outputs_used)
    result = program_array(backend, plan.targets_a, config=config, algorithm=algorithm, state_path=state_path,
                           progress=progress, weights=plan.weights, window=plan.window.to_dict())
    g = backend.geometry
    return result, plan.window, unmap_currents(result.grid("achieved_a", g.rows, g.cols), plan.window, g)


def program_array(backend, targets_a, *, config: ProgramConfig | None = None, algorithm: str | Planner = "adaptive",
                  state_path: str | Path | None = None, progress: Progress | None = None,
                  weights: np.ndarray | None = None, window: dict | None = None,
                  erase: bool = True) -> ProgramResult:
    """Erase, then program-and-verify every cell with a finite target (A) in ``targets_a``
    (``(rows, cols)``, NaN = leave alone). Only rows holding targets are erased.

    ``state_path``: chip-state file, written ahead of every erase and pulse (an existing
    file there must belong to this chip; its life counters carry over). ``weights`` /
    ``window`` are recorded in it. ``progress(done, total, text)`` is called after every
    round. Validation errors are raised before anything touches the chip.
    """
    cfg = config or ProgramConfig()
    planner = make_planner(algorithm) if isinstance(algorithm, str) else algorithm
    v_range = check_recipe(cfg, backend.envelope, planner)
    t = check_targets(targets_a, backend)
    ident = backend.identity
    window = None if window is None else check_window(window)
    earlier = check_state_path(state_path, ident)
    g = backend.geometry
    state = ChipState.new(ident, g.rows, g.cols, t, tolerance=cfg.tolerance, algorithm=planner.name,
                          settings=read_conditions(backend), window=window,
                          weights=None if weights is None else np.asarray(weights, dtype=float))
    if earlier is not None:
        state.carry_counters(earlier)
    return execute(backend, state, cfg, planner, v_range, state_path, progress, erase=erase, event="program")


def refresh(backend, state: ChipState | str | Path, *, config: ProgramConfig | None = None,
            algorithm: str | Planner | None = None, state_path: str | Path | None = None,
            progress: Progress | None = None) -> ProgramResult:
    """Re-verify a programmed chip against its chip-state record and re-program only
    the cells out of tolerance (no block erase; a cell below target costs a partial
    erase of its row, after which that row's cells are re-verified and touched up).
    Every cell is read before anything is applied: unknown cells on record (a run that
    died) are measured, never assumed done.

    ``state``: a ChipState or the path of its file (then also the default ``state_path``).
    ChipMismatchError before any action if the record is of another chip.
    """
    if not isinstance(state, ChipState):
        state_path = state_path or state
        state = ChipState.load(state)
    state.check_chip(backend.identity)
    g = backend.geometry
    if (state.rows, state.cols) != (g.rows, g.cols):
        raise UsageError(f"chip-state grid {state.rows}x{state.cols} does not match the array {g.rows}x{g.cols}")
    check_targets(state.targets_a, backend)
    cfg = config or ProgramConfig(tolerance=state.tolerance)
    name = algorithm if algorithm is not None else (state.algorithm or "adaptive")
    planner = make_planner(name, state.model) if isinstance(name, str) else name
    v_range = check_recipe(cfg, backend.envelope, planner)
    check_state_path(state_path, backend.identity)
    state.settings = read_conditions(backend)
    return execute(backend, state, cfg, planner, v_range, state_path, progress, erase=False, event="refresh")


def read_conditions(backend) -> dict:
    """The read conditions a record is taken under: read voltage (V), integration time (s), temperature (K)."""
    s = backend.settings
    return {"read_voltage_v": s.read_voltage_v, "integration_time_s": s.integration_time_s,
            "temperature_k": backend.temperature_k()}


def execute(backend, state: ChipState, cfg: ProgramConfig, planner: Planner, v_range: tuple[float, float],
            state_path, progress, *, erase: bool, event: str) -> ProgramResult:
    """Run one ProgramJob over ``state``'s targeted cells; the record says ``complete``
    only after the job's final verify, ``interrupted`` (statuses exact) if it raised."""
    t0 = time.time()
    cells = np.argwhere(np.isfinite(state.targets_a))
    job = ProgramJob(backend, state, cfg, planner, state_path, progress, cells, v_range)
    state.run_status = "programming" if event == "program" else "refreshing"
    state.tolerance = cfg.tolerance
    state.history.append({"time": t0, "event": event, "algorithm": planner.name, "tolerance": cfg.tolerance})
    try:
        job.run(erase=erase)
    except BaseException as exc:
        state.run_status = "interrupted"
        state.history.append({"time": time.time(), "event": "interrupted", "reason": f"{type(exc).__name__}: {exc}"})
        if state_path is not None:
            state.save(state_path)  # the statuses already on record stay exact
        raise
    state.run_status = "complete"
    result = ProgramResult(
        chip_id=state.chip_id, algorithm=planner.name, tolerance=cfg.tolerance, cells=cells,
        targets_a=job.target, achieved_a=job.i_meas.copy(), pulses=job.pulses.copy(),
        status=job.status.copy(), reasons={k: v for k, v in state.reasons.items()},
        erases=job.erases, partial_erases=int(job.partial.sum()), rounds=job.rounds,
        final_reopened=job.final_reopened, elapsed_s=time.time() - t0)
    state.history.append({"time": time.time(), "event": f"{event} complete",
                          **{k: v for k, v in result.summary().items() if k != "failed"}})
    if state_path is not None:
        state.save(state_path)
    return result
