"""Tiles, the seam between networks and hardware.

A :class:`Tile` is one array of ``rows`` inputs by ``outputs`` signed outputs (column
pairs). It takes pulse inputs ``x`` (N, rows) in [0, 1] (fractions of the integration
window T) and returns signed outputs (N, outputs) in units of ``I_scale T`` (ideally
``sum_i w_i x_i``); it has chip parameters (:class:`~labkit.nn.tileparams.TileParams`)
and takes normalized weights ``w`` (rows, outputs) in [-1, 1] (NaN: a cell the network
does not use). Two kinds:

* :class:`ModelTile`: the hardware-aware model (:mod:`labkit.model.tile_physics`);
* :class:`ChipTile`: a backend array (a SafeArray): ``set_weights`` maps the weights to
  currents and writes them by program-and-verify (:mod:`labkit.program`), then measures
  the zero-input baseline; ``forward`` runs VMMs and reads the charge back.

An analog layer computes its outputs through a :class:`LayerTiles`, which sums the row
tiles of the layer: :class:`ModelTiles` (all model tiles of the layer in one batched
computation from the layer's own parameters, the default), :class:`ChipTiles` (a grid
of chip tiles: deployment) and :class:`InLoopTiles` (chip tiles forward, model tiles
backward: chip-in-the-loop training). Which one a network uses is chosen when it is
built (:func:`labkit.nn.conversion.with_tiles`), not inside the layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from labkit.measure import measure_baseline
from labkit.model import ArrayModel, tile_physics
from labkit.model import second_order as so
from labkit.model.units import FC, FF, NA, US
from labkit.nn.config import AnalogConfig
from labkit.nn.tileparams import TileParams
from labkit.program import ProgramConfig, WeightWindow, map_weights, program_weights

if TYPE_CHECKING:
    from labkit.nn.layers import AnalogLayer

__all__ = ["Tile", "ModelTile", "ChipTile", "LayerTiles", "ModelTiles", "ChipTiles", "InLoopTiles"]


@runtime_checkable
class Tile(Protocol):
    """One tile of ``rows`` inputs by ``outputs`` signed outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Signed outputs (N, outputs) in units of ``I_scale T`` for pulse inputs ``x``
        (N, rows) in [0, 1]."""

    def parameters(self) -> TileParams:
        """The tile's chip parameters (SI)."""

    def set_weights(self, w: np.ndarray) -> dict:
        """Take normalized weights ``w`` (rows, outputs) in [-1, 1] (NaN: unused cell);
        returns a summary (programming figures for a chip tile)."""


class ModelTile:
    """A hardware-aware model of one tile: ``params`` (chip parameters) at the operating
    point of ``config``, with the tile physics of :mod:`labkit.model.tile_physics`
    (inference: no training noise)."""

    def __init__(self, params: TileParams, config: AnalogConfig = AnalogConfig(), w: np.ndarray | None = None):
        self.config, self._params = config, params
        op = config.operating
        self._w = torch.zeros(op.rows, op.outputs_per_tile)
        if w is not None:
            self.set_weights(w)

    def parameters(self) -> TileParams:
        return self._params

    def set_weights(self, w: np.ndarray) -> dict:
        op = self.config.operating
        w = np.asarray(w, dtype=float)
        if w.shape != (op.rows, op.outputs_per_tile):
            raise ValueError(f"tile weights have shape {w.shape}; expected {(op.rows, op.outputs_per_tile)}")
        self._w = torch.tensor(np.nan_to_num(w, nan=0.0), dtype=torch.float32)
        return {}

    def array_model(self, **switches):
        """The same tile as a :class:`labkit.model.ArrayModel` (the exact slot integration
        of the same equations, as calibration fits it): currents mapped from the weights,
        this tile's parameters; ``switches`` pass through (e.g. ``dtype``, ``quantize``)."""
        op, p = self.config.operating, self._params
        currents = map_weights(self._w.double().numpy(), self.config.window(), op.geometry())
        mix, loss, beta, _ = p.second_order(op.rows, op.cols)  # the TDC bow: corrected where times are read
        return ArrayModel(op.datasheet(), currents_a=currents, eta_per_v=p.eta_per_v, crosstalk_c=p.crosstalk_c,
                          offset_s=p.offset_s, gain_s_per_c=p.gain_s_per_c, mix=mix, width_loss_s=loss,
                          source_per_a=beta, **switches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, op, p = self.config, self.config.operating, self._params
        plus, minus = (np.asarray(v) for v in zip(*op.pairs))
        cols = np.concatenate([plus, minus])
        window = cfg.window()
        lsb_us = op.tdc_lsb_s / US
        i0t = tile_physics.branch_charges(self._w, window.i_min_a / NA, window.i_scale_a / NA,
                                          op.integration_time_s / US).unsqueeze(0)
        f32 = dict(dtype=torch.float32)
        kx = torch.tensor(p.crosstalk_c[:, cols] / FC, **f32).unsqueeze(0)
        col = lambda v: torch.tensor(v[cols], **f32).view(1, 1, -1)  # noqa: E731
        e = col(np.asarray(p.eta_per_v) / (op.bitline_capacitance_f / FF))
        t0c = col(np.asarray(p.offset_s) / US / lsb_us)
        gc = col(np.asarray(p.gain_s_per_c) * (FC / US) / lsb_us)
        opts = (cfg.droop, cfg.quantize, (0.0, 0.0), float(2**op.tdc_bits - 1), 2, cfg.crosstalk, cfg.edge_order)
        xt = x.to(torch.float32).t().contiguous().unsqueeze(0)
        mix, loss, beta, _ = p.second_order(op.rows, op.cols)  # (the TDC bow: corrected where times are read)
        T_us = op.integration_time_s / US
        with torch.no_grad():
            if mix.any() or loss.any() or beta:
                loss_t = torch.tensor(loss / op.integration_time_s, **f32).view(1, -1, 1)
                row_na = i0t.sum(-1, keepdim=True) / T_us if beta else None  # every column of the tile is in cols
                b = torch.tensor(beta * NA, **f32).view(1, 1, 1) if beta else None
                xt, i0t, kx = so.tile_terms(xt, i0t, kx, so.coupling_gather(mix, cols), loss_t, b, row_na)
            y = tile_physics.TileBmm.apply(xt, i0t, kx, e, t0c, gc, opts)
        return y / (window.i_scale_a / NA * op.integration_time_s / US)


class ChipTile:
    """One tile on a backend array (a :class:`~labkit.backend.SafeArray`).

    ``set_weights`` configures the backend to ``config``'s operating point, maps the
    weights onto dual-branch currents (the backend's weight window), programs them by
    program-and-verify (``program``, a :class:`labkit.program.ProgramConfig`; the cells
    of unused rows are left alone, unused outputs of used rows go to I_min) and measures
    the baseline (mean zero-input crossing time per column over ``baseline_repeats`` VMMs). ``forward`` sends the samples with
    any pulse to ``backend.vmm_x`` in batches of ``batch``, averages ``reads`` VMMs per
    sample, and reads a column's charge as ``(t(0) - t(x)) / g`` with the readout gain
    ``gain_s_per_c`` (per column; nominal ``1/I_ref`` when None). ``vmm_count`` counts
    the VMMs run.
    """

    def __init__(self, backend, config: AnalogConfig, program=None, baseline_repeats: int = 32, reads: int = 1,
                 batch: int = 4096, gain_s_per_c: np.ndarray | None = None):
        self.backend, self.config, self.program = backend, config, program
        self.baseline_repeats, self.reads, self.batch = int(baseline_repeats), int(reads), int(batch)
        self.gain_s_per_c = (np.full(backend.geometry.cols, 1.0 / backend.datasheet.reference_current_a)
                             if gain_s_per_c is None else np.asarray(gain_s_per_c, dtype=float))
        self.baseline_s = np.full(backend.geometry.cols, np.nan)
        self.tdc_bow_lsb = 0.0  # INL bow taken out of every measured time (labkit.model.second_order)
        self.summary: dict = {}
        self.vmm_count = 0
        self.state_path = None  # chip-state file set_weights writes (labkit.program.chipstate), or None

    def use_readout(self, params: TileParams) -> None:
        """Read times as the calibration ``params`` of this chip says: its gain per column
        and its TDC bow (before :meth:`set_weights`, which measures the baseline)."""
        self.gain_s_per_c = np.asarray(params.gain_s_per_c, dtype=float)
        self.tdc_bow_lsb = float(params.tdc_bow_lsb)

    @property
    def chip_id(self) -> str:
        return self.backend.identity.chip_id

    def configure(self) -> None:
        """Set the backend to the operating point; ValueError if its geometry differs."""
        op, b = self.config.operating, self.backend
        want = dict(integration_time_s=op.integration_time_s, input_bits=op.input_bits, tdc_bits=op.tdc_bits,
                    tdc_lsb_s=op.tdc_lsb_s)
        if any(getattr(b.settings, k) != v for k, v in want.items()):
            b.configure(**want)
        g = b.geometry
        if g.rows != op.rows or tuple(map(tuple, g.pairs)) != tuple(map(tuple, op.pairs)):
            raise ValueError(f"chip {self.chip_id} is {g.rows}x{g.cols} with pairs {g.pairs}; the network "
                             f"was built for {op.rows} rows and pairs {op.pairs}")

    def parameters(self) -> TileParams:
        """Nominal drain and crosstalk, the measured baseline as offset, the readout gain used."""
        base = TileParams.nominal(self.config.operating)
        return TileParams(base.eta_per_v, base.crosstalk_c, self.baseline_s.copy(), self.gain_s_per_c.copy(),
                          self.chip_id)

    def set_weights(self, w: np.ndarray) -> dict:
        self.configure()
        b, op = self.backend, self.config.operating
        g = b.geometry
        w = np.asarray(w, dtype=float)
        used = np.isfinite(w)  # a tile's unused rows and outputs are its last ones (padding)
        window = WeightWindow.from_datasheet(b.datasheet, op.integration_time_s, g.rows, self.config.mapping.headroom)
        # unused outputs of a used row are programmed to I_min (weight 0): the row is erased,
        # and an erased cell on a pulsed row would conduct ~1 uA, coupling into the next bit
        # line and loading the common source line of every column (docs/physics.md)
        result, _, _ = program_weights(b, np.where(used, w, 0.0), window=window, clip=True,
                                       rows_used=int(used.any(axis=1).sum()),
                                       config=self.program or ProgramConfig(), state_path=self.state_path)
        self.summary = result.summary()
        self.summary.pop("failed", None)
        self.measure_baseline()
        return self.summary

    def measure_baseline(self) -> np.ndarray:
        """Measure the zero-input crossing times again (``baseline_repeats`` VMMs, the TDC
        bow taken out) and read charges against them from now; returns them (s, per column)."""
        self.baseline_s = self._linear(measure_baseline(self.backend, self.baseline_repeats).t0_s)
        return self.baseline_s

    def times(self, x: np.ndarray) -> np.ndarray:
        """Measured crossing times (s) of ``x`` (samples, rows), the TDC bow taken out."""
        return self._linear(self.backend.vmm_x(x))

    def _linear(self, t: np.ndarray) -> np.ndarray:
        st = self.backend.settings
        return so.tdc_linearize(t, self.tdc_bow_lsb, st.tdc_lsb_s, 2**st.tdc_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = self.config.operating
        xn = np.clip(x.detach().double().cpu().numpy(), 0.0, 1.0)
        N = xn.shape[0]
        xr = np.zeros((N, op.rows))
        xr[:, : xn.shape[1]] = xn
        active = np.flatnonzero(xr.any(axis=1))
        times = np.repeat(self.baseline_s[None, :], N, axis=0)
        for a in range(0, len(active), self.batch):
            idx = active[a:a + self.batch]
            times[idx] = np.mean([self.times(xr[idx]) for _ in range(self.reads)], axis=0)
            self.vmm_count += len(idx) * self.reads
        q = (self.baseline_s[None, :] - times) / self.gain_s_per_c[None, :]  # C
        pairs = np.asarray(op.pairs)
        y = (q[:, pairs[:, 0]] - q[:, pairs[:, 1]]) / (self.config.window().i_scale_a * op.integration_time_s)
        return torch.as_tensor(y, dtype=x.dtype)


class LayerTiles(Protocol):
    """The tiles of one analog layer, row tiles summed."""

    def outputs(self, layer: "AnalogLayer", xt: torch.Tensor) -> torch.Tensor:
        """(N, n) summed signed outputs (units of ``I_scale T``) of ``layer``'s tiles for
        transposed pulse inputs ``xt`` (row_tiles * rows, N), zero-padded."""


class ModelTiles:
    """Every tile of a layer as the hardware-aware model, in one batched computation
    (:meth:`labkit.nn.layers.AnalogLayer.model_outputs`)."""

    def outputs(self, layer: "AnalogLayer", xt: torch.Tensor) -> torch.Tensor:
        return layer.model_outputs(xt)


class ChipTiles:
    """A layer's tiles on chips: ``grid[r][c]`` is the :class:`Tile` of row tile ``r``
    and column tile ``c``; the row tiles' outputs are summed digitally."""

    def __init__(self, grid: Sequence[Sequence[Tile]]):
        self.grid = [list(row) for row in grid]

    def outputs(self, layer: "AnalogLayer", xt: torch.Tensor) -> torch.Tensor:
        op = layer.config.operating
        R, P = op.rows, op.outputs_per_tile
        N = xt.shape[1]
        y = torch.zeros(N, layer.col_tiles * P, dtype=torch.float64)
        for r, row in enumerate(self.grid):
            xr = xt[r * R:(r + 1) * R].t()
            for c, tile in enumerate(row):
                y[:, c * P:(c + 1) * P] += tile.forward(xr).double()
        return y[:, : layer.out_features_].to(xt.dtype)


class InLoopTiles:
    """Chip in the loop: the forward value of ``chips``, the gradient of ``model``
    (the model's Jacobian at the measured operating point). Without a gradient to
    compute, only the chips run."""

    def __init__(self, chips: LayerTiles, model: LayerTiles | None = None):
        self.chips, self.model = chips, model or ModelTiles()

    def outputs(self, layer: "AnalogLayer", xt: torch.Tensor) -> torch.Tensor:
        measured = self.chips.outputs(layer, xt.detach())
        if not (torch.is_grad_enabled() and (xt.requires_grad or layer.weight.requires_grad)):
            return measured
        y = self.model.outputs(layer, xt)
        return y + (measured.to(y.dtype) - y).detach()
