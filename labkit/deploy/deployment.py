"""Deployment: program every tile of an analog network onto a chip and run inference there.

One chip (backend array) per tile, in :func:`labkit.nn.analog.tile_plan` order. Per tile:
the layer's normalized weights of that tile are mapped onto dual-branch currents
(:mod:`labkit.program.mapping`, the window of the layer's operating point), written by
program-and-verify (:func:`labkit.program.programming.program_array`; cells of unused rows and
columns are left alone), and the zero-input crossing time of every column is measured
(averaged over repeats) as the baseline the outputs are read from.

Inference runs the same network code as training (the analog layers' pulse encoding,
digital partial sums, scales, bias and time-domain ReLU), with each analog layer's tile
outputs measured instead of modelled: the pulse inputs of each row tile go to the VMMs
of the chips of that row (``SafeArray.vmm_x``, in batches), a column's charge is read
as ``(t(0) - t(x)) / g`` with the tile's readout gain ``g`` (nominal ``1/I_ref``, or the
chip's calibrated gain when the network was trained on its calibration), and a signed
output is the difference of its column pair.

Chips (:func:`open_chips`): ``sim://?seed=N&...`` gives one emulated chip per tile,
seeds N, N+1, ... (other options kept); a comma-separated list of URIs (e.g. several
``station:`` files) gives exactly those chips, and too few is a ValueError before
anything is programmed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from labkit.nn.analog import AnalogConfig, AnalogLayer, TileParams, analog_layers
from labkit.backend import chip_uris, open_chips
from labkit.program.mapping import WeightWindow, map_weights
from labkit.program.programming import ProgramConfig, program_array

__all__ = ["chip_uris", "open_chips", "calibrate_tile", "TileDeployment", "Deployment", "deploy",
           "measure_baseline"]

ProgressFn = Callable[[int, int, str], None]


def calibrate_tile(backend, config, store=None, uri: str = "") -> tuple[TileParams, dict]:
    """Calibrate one chip for a tile: its :class:`TileParams` (with the read-current gain
    correction) and the calibration's SER report. A model fit that diverges is measured
    once more with other input patterns. With ``store``, the calibration is a run there."""
    from labkit.calibrate.calibration import calibrate

    def once(cfg):
        if store is None:
            return calibrate(backend, cfg)
        with store.run("calibrate", backend_uri=uri, chip_id=backend.identity.chip_id,
                       settings=backend.settings) as run:
            return calibrate(backend, cfg, run=run)

    try:
        cal = once(config)
    except ValueError:  # the fit diverged (non-finite loss): other patterns, once
        cal = once(dataclasses.replace(config, seed=config.seed + 1))
    return TileParams.from_calibration(cal), cal.report


def measure_baseline(backend, repeats: int = 32) -> np.ndarray:
    """Mean zero-input crossing time (s) of every column over ``repeats`` VMMs."""
    return backend.vmm(np.zeros((int(repeats), backend.geometry.rows))).mean(axis=0)


@dataclass
class TileDeployment:
    """One programmed tile: its chip, baseline (s) per column and programming summary."""

    layer: str
    index: int
    row_tile: int
    col_tile: int
    backend: object
    baseline_s: np.ndarray
    gain_s_per_c: np.ndarray
    summary: dict = field(default_factory=dict)

    @property
    def chip_id(self) -> str:
        return self.backend.identity.chip_id


def _configure(backend, cfg: AnalogConfig) -> None:
    st = backend.settings
    want = dict(integration_time_s=cfg.integration_time_s, input_bits=cfg.input_bits, tdc_bits=cfg.tdc_bits,
                tdc_lsb_s=cfg.tdc_lsb_s)
    if any(getattr(st, k) != v for k, v in want.items()):
        backend.configure(**want)
    g = backend.geometry
    if g.rows != cfg.rows or tuple(map(tuple, g.pairs)) != tuple(map(tuple, cfg.pairs)):
        raise ValueError(f"chip {backend.identity.chip_id} is {g.rows}x{g.cols} with pairs {g.pairs}; the network "
                         f"was built for {cfg.rows} rows and pairs {cfg.pairs}")


def _program_tile(layer: AnalogLayer, r: int, c: int, backend, program: ProgramConfig) -> dict:
    cfg = layer.config
    _configure(backend, cfg)
    g = backend.geometry
    w = layer.tile_weights()[r, c]
    window = WeightWindow.from_datasheet(backend.datasheet, cfg.integration_time_s, g.rows, cfg.headroom)
    targets = map_weights(w, window, g, clip=True)
    rows_used = min(cfg.rows, layer.in_rows - r * cfg.rows)
    outs_used = min(cfg.outputs_per_tile, layer.out_features_ - c * cfg.outputs_per_tile)
    targets[rows_used:, :] = np.nan
    used_cols = [col for k, pair in enumerate(g.pairs) if k < outs_used for col in pair]
    unused = np.setdiff1d(np.arange(g.cols), used_cols)
    targets[:, unused] = np.nan
    result = program_array(backend, targets, config=program, weights=w, window=window.to_dict())
    s = result.summary()
    s.pop("failed", None)
    return s


class Deployment:
    """An analog network programmed onto chips; calling it runs inference on them.

    ``model``: the analog network (its analog layers' tile outputs are measured while
    the deployment is attached). ``tiles``: one :class:`TileDeployment` per tile, in
    tile-plan order. ``batch``: rows per VMM batch sent to a chip. ``reads``: VMMs per
    input whose crossing times are averaged (readout noise / sqrt(reads), at reads times
    the chip time; 1 is the chip's single-shot accuracy).
    """

    def __init__(self, model: nn.Module, tiles: list[TileDeployment], batch: int = 4096, reads: int = 1):
        if int(reads) != reads or reads < 1:
            raise ValueError(f"reads={reads!r}; expected a whole number of VMMs per input >= 1")
        self.model, self.tiles, self.batch, self.reads = model, tiles, int(batch), int(reads)
        self.vmm_count = 0
        self._by_layer: dict[int, list[list[TileDeployment]]] = {}
        for name, layer in analog_layers(model):
            grid = [[None] * layer.col_tiles for _ in range(layer.row_tiles)]
            for t in tiles:
                if t.layer == name:
                    grid[t.row_tile][t.col_tile] = t
            self._by_layer[id(layer)] = grid

    # -------------------------------------------------------------- measurement
    def measure(self, layer: AnalogLayer, x: torch.Tensor) -> torch.Tensor:
        """Measured tile outputs of ``layer`` for pulse inputs ``x`` (N, K) in [0, 1]:
        (N, n) in units of ``I_scale T``, summed over row tiles."""
        cfg, R, P = layer.config, layer.config.rows, layer.config.outputs_per_tile
        grid = self._by_layer[id(layer)]
        xn = x.detach().double().cpu().numpy()
        N = xn.shape[0]
        xn = np.clip(xn, 0.0, 1.0)
        y = np.zeros((N, layer.col_tiles * P))
        pairs = np.asarray(cfg.pairs)
        i_scale_t = cfg.window().i_scale_a * cfg.integration_time_s
        for r in range(layer.row_tiles):
            xr = np.zeros((N, R))
            k = xn[:, r * R:(r + 1) * R]
            xr[:, : k.shape[1]] = k
            active = np.flatnonzero(xr.any(axis=1))
            for c in range(layer.col_tiles):
                t = grid[r][c]
                times = np.repeat(t.baseline_s[None, :], N, axis=0)
                for a in range(0, len(active), self.batch):
                    idx = active[a:a + self.batch]
                    times[idx] = np.mean([t.backend.vmm_x(xr[idx]) for _ in range(self.reads)], axis=0)
                    self.vmm_count += len(idx) * self.reads
                q = (t.baseline_s[None, :] - times) / t.gain_s_per_c[None, :]  # C
                y[:, c * P:(c + 1) * P] += q[:, pairs[:, 0]] - q[:, pairs[:, 1]]
        y = y[:, : layer.out_features_] / i_scale_t
        return torch.as_tensor(y, dtype=x.dtype)

    @contextlib.contextmanager
    def attached(self):
        """Within: the model's analog layers measure on the chips."""
        layers = [m for _, m in analog_layers(self.model)]
        old = [m.measure for m in layers]
        for m in layers:
            m.measure = self.measure
        try:
            yield self.model
        finally:
            for m, o in zip(layers, old):
                m.measure = o

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        try:
            with self.attached():
                return self.model(x)
        finally:
            self.model.train(was)

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

    # -------------------------------------------------------------- (re)programming
    def reprogram(self, program: ProgramConfig | None = None, progress: ProgressFn | None = None) -> dict:
        """Program the model's current weights onto the same chips again (after training
        updates) and re-measure the baselines. Returns a summary."""
        program = program or ProgramConfig()
        layers = dict(analog_layers(self.model))
        errs = []
        for i, t in enumerate(self.tiles):
            t.summary = _program_tile(layers[t.layer], t.row_tile, t.col_tile, t.backend, program)
            t.baseline_s = measure_baseline(t.backend)
            errs.append(t.summary.get("rms_rel_error") or 0.0)
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
           progress: ProgressFn | None = None, baseline_repeats: int = 32, reads: int = 1) -> Deployment:
    """Program every tile of the analog network ``model`` onto ``backends`` (one per tile,
    in tile-plan order) and measure the baselines. ValueError, before programming, if
    there are too few backends, one does not fit the network's operating point, or
    ``reads`` (VMMs averaged per input, see :class:`Deployment`) is not a whole number >= 1."""
    layers = analog_layers(model)
    if not layers:
        raise ValueError("the model has no analog layers; convert it first (labkit.nn.analog.convert)")
    if int(reads) != reads or reads < 1:
        raise ValueError(f"reads={reads!r}; expected a whole number of VMMs per input >= 1")
    n = sum(m.n_tiles for _, m in layers)
    if len(backends) < n:
        raise ValueError(f"the network needs {n} tiles, one chip each; {len(backends)} given")
    plan = []
    i = 0
    for name, layer in layers:
        for r in range(layer.row_tiles):
            for c in range(layer.col_tiles):
                _configure(backends[i], layer.config)  # validation first, on every chip
                plan.append((name, layer, r, c, i))
                i += 1
    program = program or ProgramConfig()
    tiles = []
    for name, layer, r, c, i in plan:
        b = backends[i]
        summary = _program_tile(layer, r, c, b, program)
        base = measure_baseline(b, baseline_repeats)
        tp = layer.tile_params(r * layer.col_tiles + c)
        # the tile's readout gain where it describes this very chip (a calibration of it),
        # the datasheet's 1/I_ref otherwise
        gain = tp.gain_s_per_c if tp.chip_id == b.identity.chip_id else np.full(
            b.geometry.cols, 1.0 / b.datasheet.reference_current_a)
        tiles.append(TileDeployment(name, i, r, c, b, base, gain, summary))
        if progress is not None:
            progress(i + 1, n, b.identity.chip_id)
    return Deployment(model, tiles, reads=reads)
