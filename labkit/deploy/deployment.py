"""Deployment: an analog network built on chip tiles, one chip (backend array) per tile.

:func:`deploy` places the tiles of an analog network on chips in
:func:`labkit.nn.tile_plan` order; each becomes a :class:`labkit.nn.ChipTile` whose
``set_weights`` maps that tile's normalized weights onto dual-branch currents, writes
them by program-and-verify (cells of unused rows and columns are left alone) and
measures the zero-input baseline of every column. The deployed network is the same
network (same parameters, pulse encoding, digital partial sums, scales, bias and
time-domain ReLU) built with chip tiles (:func:`labkit.nn.with_tiles`); chip-in-the-loop
training uses it built with :class:`labkit.nn.InLoopTiles` (chips forward, model
backward). A column's charge is read as ``(t(0) - t(x)) / g`` with the tile's readout
gain ``g`` (nominal ``1/I_ref``, or the chip's calibrated gain when the network was
trained on its calibration), and a signed output is the difference of its column pair.

With ``state_dir`` every programming goes to the chip's chip-state file there
(``chipstate-CHIPID.json``: its erase and program cycles over the chip's life on
record); with ``endurance`` a deployment or reprogramming that would take a chip past
that many cycles is refused before any pulse (:mod:`labkit.deploy.endurance`).

Chips (:func:`open_chips`): ``sim://?seed=N&...`` gives one emulated chip per tile,
seeds N, N+1, ... (other options kept); a comma-separated list of URIs (e.g. several
``station:`` files) gives exactly those chips, and too few is a ValueError before
anything is programmed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from labkit.backend import chip_uris, open_chips
from labkit.deploy.endurance import check as check_endurance
from labkit.deploy.endurance import check_budget, state_path
from labkit.errors import FitDivergedError
from labkit.nn import ChipTile, ChipTiles, InLoopTiles, TileParams, analog_layers, with_tiles
from labkit.program import ProgramConfig
from labkit.deploy.temperature import programmed_state

__all__ = ["chip_uris", "open_chips", "calibrate_tile", "TileDeployment", "Deployment", "deploy"]

ProgressFn = Callable[[int, int, str], None]


def calibrate_tile(backend, config, store=None, uri: str = "") -> tuple[TileParams, dict]:
    """Calibrate one chip for a tile: its :class:`TileParams` (with the read-current gain
    correction) and the calibration's SER report. A model fit that diverges
    (:class:`labkit.errors.FitDivergedError`) is measured once more with other input
    patterns; any other error propagates. With ``store``, the calibration is a run there."""
    from labkit.calibrate.calibration import calibrate

    def once(cfg):
        if store is None:
            return calibrate(backend, cfg)
        with store.run("calibrate", backend_uri=uri, chip_id=backend.identity.chip_id,
                       settings=backend.settings) as run:
            return calibrate(backend, cfg, run=run)

    try:
        cal = once(config)
    except FitDivergedError:  # other patterns, once
        cal = once(dataclasses.replace(config, seed=config.seed + 1))
    return TileParams.from_calibration(cal), cal.report


@dataclass
class TileDeployment:
    """Where one chip tile sits: layer name, tile index (in tile-plan order), row and
    column tile of the layer."""

    layer: str
    index: int
    row_tile: int
    col_tile: int
    chip: ChipTile

    @property
    def backend(self):
        return self.chip.backend

    @property
    def chip_id(self) -> str:
        return self.chip.chip_id

    @property
    def summary(self) -> dict:
        return self.chip.summary

    @property
    def baseline_s(self) -> np.ndarray:
        return self.chip.baseline_s

    @property
    def gain_s_per_c(self) -> np.ndarray:
        return self.chip.gain_s_per_c


class Deployment:
    """An analog network programmed onto chips; calling it runs inference on them.

    ``model``: the analog network (model tiles; its weights are the ones programmed).
    ``tiles``: one :class:`TileDeployment` per tile, in tile-plan order. ``network``:
    ``model`` built on the chip tiles; ``in_loop``: built on chip tiles forward and model
    tiles backward (parameters shared with ``model``). ``reads``: VMMs per input whose
    crossing times are averaged (readout noise / sqrt(reads), at reads times the chip
    time; 1 is the chip's single-shot accuracy).
    """

    def __init__(self, model: nn.Module, tiles: list[TileDeployment], reads: int = 1, endurance: int | None = None):
        self.model, self.tiles = model, tiles
        self.reads = reads
        self.endurance = check_budget(endurance)  # cycles a chip may reach (None: no limit)
        self.clock_s = 0.0  # deployment time (s): virtual-clock advances (advance_time_s)
        self.programmed_at_s = [0.0] * len(tiles)  # per tile, on that clock
        self.programmed_at = [time.time()] * len(tiles)  # per tile, seconds since the epoch
        self.temperature_log: list = []  # BatchRecord per tile and batch, once compensate() is called
        self.programmed: list = [None] * len(tiles)  # per tile: labkit.deploy.temperature.programmed_state
        self._wrapped: dict = {}
        self._build({})

    def _build(self, wrapped: dict) -> None:
        self._wrapped = wrapped
        grids = {}
        for name, layer in analog_layers(self.model):
            grid = [[None] * layer.col_tiles for _ in range(layer.row_tiles)]
            for t in self.tiles:
                if t.layer == name:
                    grid[t.row_tile][t.col_tile] = wrapped.get(t.index, t.chip)
            grids[name] = ChipTiles(grid)
        self.network = with_tiles(self.model, lambda name, layer: grids[name])
        self.in_loop = with_tiles(self.model, lambda name, layer: InLoopTiles(grids[name]))

    @property
    def reads(self) -> int:
        return self._reads

    @reads.setter
    def reads(self, value: int) -> None:
        if int(value) != value or value < 1:
            raise ValueError(f"reads={value!r}; expected a whole number of VMMs per input >= 1")
        self._reads = int(value)
        for t in self.tiles:
            t.chip.reads = self._reads

    @property
    def vmm_count(self) -> int:
        """VMMs run on all chips so far."""
        return sum(t.chip.vmm_count for t in self.tiles)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        return self.network(x)

    @torch.no_grad()
    def evaluate(self, ds: Dataset, batch_size: int = 256, progress: ProgressFn | None = None) -> float:
        """Fraction of ``ds`` classified correctly with every analog layer on chips."""
        correct = total = 0
        n = len(ds)
        for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
            correct += int((self(x).argmax(dim=1) == y).sum())
            total += len(y)
            if progress is not None:
                progress(total, n, f"{correct / total:.3f}")
        if total == 0:
            raise ValueError("evaluate: the data set is empty")
        return correct / total

    # ------------------------------------------------------------ temperature and time
    def tile_weights(self, tile: TileDeployment) -> np.ndarray:
        """The normalized weights (rows, outputs; NaN: unused) programmed onto ``tile``."""
        return dict(analog_layers(self.model))[tile.layer].tile_weights(pad=np.nan)[tile.row_tile, tile.col_tile]

    def used_cells(self, tile: TileDeployment) -> np.ndarray:
        """(rows, cols) bool: the cells of ``tile`` its weights use (both branches)."""
        w = self.tile_weights(tile)
        g = tile.backend.geometry
        used = np.zeros((g.rows, g.cols), bool)
        rows = np.isfinite(w).any(axis=1)
        for k, (p, m) in enumerate(g.pairs):
            if np.isfinite(w[:, k]).any():
                used[rows, p] = used[rows, m] = True
        return used

    def compensate(self, method: str, calibrations=None, retention=None, design_age_s: float | None = None) -> None:
        """Wrap every chip tile in a :class:`labkit.deploy.temperature.CompensatedTile`
        (``method`` ``off`` or ``read-voltage``); ``calibrations`` and ``retention``:
        dicts chip id -> TemperatureCalibration / RetentionModel; ``design_age_s`` (s):
        tiles programmed from now on (refreshes) are drift-aware for that age. Batches are recorded
        in :attr:`temperature_log`; the network is not reprogrammed."""
        from labkit.deploy.temperature import CompensatedTile, check_method

        check_method(method)
        calibrations, retention = calibrations or {}, retention or {}
        if method != "off":
            missing = [t.chip_id for t in self.tiles if t.chip_id not in calibrations]
            if missing:
                raise ValueError(f"no temperature calibration for chip {missing[0]}; expected one per chip")
        wrapped = {}
        for t in self.tiles:
            old = self._wrapped.get(t.index)
            state = self.programmed[t.index] if old is None else old.state()
            if state is None:
                raise ValueError(f"tile {t.index} on chip {t.chip_id} has no record of its programmed state")
            wrapped[t.index] = CompensatedTile(t.chip, method, calibrations.get(t.chip_id), retention.get(t.chip_id),
                                               self.used_cells(t), clock=lambda: self.clock_s, log=self.temperature_log,
                                               programmed=state, weights=self.tile_weights(t),
                                               design_age_s=design_age_s)
        self._build(wrapped)

    def set_temperature_k(self, kelvin: float) -> None:
        """Regulate every chip at ``kelvin`` (K) through its TemperatureControl (the
        envelope's guard refuses a temperature outside it)."""
        from labkit.backend import TemperatureControl

        for t in self.tiles:
            ctl = t.backend.capability(TemperatureControl)
            if ctl is None:
                raise ValueError(f"chip {t.chip_id} has no temperature controller")
            ctl.set_temperature_k(kelvin)

    def advance_time_s(self, seconds: float) -> None:
        """Let ``seconds`` (s) pass on every chip's virtual clock and the deployment's."""
        from labkit.backend import VirtualClock

        clocks = [t.backend.capability(VirtualClock) for t in self.tiles]
        if any(c is None for c in clocks):
            raise ValueError("advance_time_s needs a virtual clock on every chip (emulated chips)")
        for c in clocks:
            c.advance_time_s(seconds)
        self.clock_s += float(seconds)

    def refresh_tile(self, index: int, program: ProgramConfig | None = None) -> dict:
        """Program tile ``index``'s weights again (a refresh, at the present temperature);
        its programming time becomes now. Returns the programming summary."""
        t = self.tiles[index]
        if program is not None:
            t.chip.program = program
        w = self.tile_weights(t)
        self.programmed_at_s[index] = self.clock_s
        self.programmed_at[index] = time.time()
        wrapped = self._wrapped.get(index)
        if wrapped is None:
            summary = t.chip.set_weights(w)
            self.programmed[index] = programmed_state(t.chip, self.clock_s)
            return summary
        summary = wrapped.set_weights(w)
        self.programmed[index] = wrapped.state()
        return summary

    def reprogram(self, program: ProgramConfig | None = None, progress: ProgressFn | None = None) -> dict:
        """Program the model's current weights onto the same chips again (after training
        updates; the baselines are measured again). Returns :meth:`summary`. EnduranceError
        first if a chip would pass :attr:`endurance` (one cycle each)."""
        layers = dict(analog_layers(self.model))
        check_endurance([(t.backend, t.chip.state_path, 1) for t in self.tiles], self.endurance)
        for i, t in enumerate(self.tiles):
            t.chip.program = program or ProgramConfig()
            t.chip.set_weights(layers[t.layer].tile_weights(pad=np.nan)[t.row_tile, t.col_tile])
            if progress is not None:
                progress(i + 1, len(self.tiles), t.chip_id)
        return self.summary()

    def summary(self) -> dict:
        """Programming figures over all tiles."""
        s = [t.summary for t in self.tiles]
        rms = [v["rms_rel_error"] for v in s if v.get("rms_rel_error") is not None]
        return {
            "tiles": len(self.tiles),
            "chips": [t.chip_id for t in self.tiles],
            "rms_rel_error": float(np.sqrt(np.mean(np.square(rms)))) if rms else None,
            "within_tolerance_fraction": float(np.mean([v.get("within_tolerance_fraction", 1.0) for v in s])) if s else None,
            "failed_cells": int(sum(v.get("failed_cells", 0) for v in s)),
            "pulses_total": int(sum(v.get("pulses_total", 0) for v in s)),
        }


def deploy(model: nn.Module, backends: Sequence, program: ProgramConfig | None = None,
           progress: ProgressFn | None = None, baseline_repeats: int = 32, reads: int = 1,
           state_dir: str | Path | None = None, endurance: int | None = None) -> Deployment:
    """Program every tile of the analog network ``model`` onto ``backends`` (one per tile,
    in tile-plan order) and measure the baselines. ValueError, before programming, if
    there are too few backends, one does not fit the network's operating point, or
    ``reads`` (VMMs averaged per input, see :class:`Deployment`) is not a whole number >= 1;
    EnduranceError if a chip's cycles on record in ``state_dir`` plus this programming
    would exceed ``endurance`` (see the module docstring)."""
    budget = check_budget(endurance)
    layers = analog_layers(model)
    if not layers:
        raise ValueError("the model has no analog layers; convert it first (labkit.nn.convert)")
    if int(reads) != reads or reads < 1:
        raise ValueError(f"reads={reads!r}; expected a whole number of VMMs per input >= 1")
    n = sum(m.n_tiles for _, m in layers)
    if len(backends) < n:
        raise ValueError(f"the network needs {n} tiles, one chip each; {len(backends)} given")
    tiles = []
    for name, layer in layers:
        for r in range(layer.row_tiles):
            for c in range(layer.col_tiles):
                b = backends[len(tiles)]
                tp = layer.tile_params(r * layer.col_tiles + c)
                # the tile's readout gain where it describes this very chip (a calibration
                # of it), the datasheet's 1/I_ref otherwise
                chip = ChipTile(b, layer.config, program or ProgramConfig(), baseline_repeats, reads)
                if tp.chip_id == b.identity.chip_id:
                    chip.use_readout(tp)
                chip.configure()  # validation first, on every chip
                if state_dir is not None:
                    chip.state_path = state_path(state_dir, chip.chip_id)
                tiles.append(TileDeployment(name, len(tiles), r, c, chip))
    check_endurance([(t.backend, t.chip.state_path, 1) for t in tiles], budget)
    states = []
    for t in tiles:
        layer = dict(layers)[t.layer]
        t.chip.set_weights(layer.tile_weights(pad=np.nan)[t.row_tile, t.col_tile])
        states.append(programmed_state(t.chip))
        if progress is not None:
            progress(t.index + 1, n, t.chip_id)
    dep = Deployment(model, tiles, reads=reads, endurance=budget)
    dep.programmed = states
    return dep
