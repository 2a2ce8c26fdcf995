"""Chip parameters of tiles (SI): :class:`TileParams` of one tile (from a calibration,
nominal, or sampled), :class:`ChipSpread` to sample tiles without a calibration, and
:func:`tile_sources` that turns what a user passes (None, a spread, a calibration, a
list) into one TileParams per tile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from labkit.nn.config import OperatingPoint

__all__ = ["TileParams", "ChipSpread", "tile_sources"]


@dataclass
class TileParams:
    """One tile's chip parameters (SI): drain coefficient per column (1/V), crosstalk
    charge per falling edge per cell (C), crossing time at zero charge per column (s),
    readout gain per column (s/C). ``chip_id`` names the chip they describe."""

    eta_per_v: np.ndarray
    crosstalk_c: np.ndarray
    offset_s: np.ndarray
    gain_s_per_c: np.ndarray
    chip_id: str = ""
    # second-order terms (labkit.model.second_order; None / 0: none): bit-line coupling
    # per adjacent column pair (cols - 1,), pulse width lost per row (rows,) s, source-line
    # factor 1/A, TDC INL bow LSB (corrected digitally when a chip tile reads times)
    mix: np.ndarray | None = None
    width_loss_s: np.ndarray | None = None
    source_per_a: float = 0.0
    tdc_bow_lsb: float = 0.0

    def second_order(self, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """``(mix, width_loss_s, source_per_a, tdc_bow_lsb)`` with zeros for missing terms."""
        mix = np.zeros(cols - 1) if self.mix is None else np.asarray(self.mix, dtype=float).reshape(cols - 1)
        loss = np.zeros(rows) if self.width_loss_s is None else np.asarray(self.width_loss_s, float).reshape(rows)
        return mix, loss, float(np.ravel(self.source_per_a)[0]), float(np.ravel(self.tdc_bow_lsb)[0])

    @classmethod
    def nominal(cls, op: OperatingPoint = OperatingPoint(), eta_per_v: float = 0.5,
                crosstalk_c: float = 0.5e-15) -> "TileParams":
        """Datasheet values: the same for every column and cell."""
        R, C = op.rows, op.cols
        q_fs = op.datasheet().full_scale_charge_c
        return cls(np.full(C, eta_per_v), np.full((R, C), crosstalk_c),
                   np.full(C, q_fs / op.reference_current_a), np.full(C, 1.0 / op.reference_current_a),
                   "nominal")

    @classmethod
    def from_model(cls, model, read_currents_a=None, chip_id: str = "") -> "TileParams":
        """From a fitted :class:`~labkit.model.ArrayModel` (one array, e.g. a chip's
        calibration). ``read_currents_a`` (rows, cols): the cells' read currents when the
        calibration was measured; with them, each column's ratio of fitted to read current
        (capacitance and reference-current spread the fit folds into the currents) moves
        into the readout gain, so that currents programmed by read-verify predict right."""
        eta = np.asarray(model.eta_per_v(), dtype=float)
        if eta.ndim == 2:  # per-cell drain coefficients: the column mean
            eta = eta.mean(axis=0)
        kxt = np.asarray(model.crosstalk_c(), dtype=float)
        gain = np.asarray(model.gain_s_per_c(), dtype=float)
        if eta.ndim != 1 or kxt.ndim != 2:
            raise ValueError("TileParams.from_model expects a single-array ArrayModel (n_tiles=None)")
        if read_currents_a is not None:
            read = np.asarray(read_currents_a, dtype=float)
            fit = model.currents_a()
            if read.shape != fit.shape:
                raise ValueError(f"read_currents_a has shape {read.shape}; expected {fit.shape}")
            rho = np.median(fit / np.maximum(read, 1e-15), axis=0)
            eta, kxt, gain = eta * rho, kxt / rho[None, :], gain * rho
        so = model.second_order_si() if hasattr(model, "second_order_si") else {}
        return cls(eta, kxt, np.asarray(model.offset_s(), dtype=float), gain, chip_id,
                   so.get("mix"), so.get("width_loss_s"), float(np.ravel(so.get("source_per_a", 0.0))[0]),
                   float(np.ravel(so.get("tdc_bow_lsb", 0.0))[0]))

    @classmethod
    def from_calibration(cls, cal, read_currents_a=None) -> "TileParams":
        """From a :class:`labkit.calibrate.calibration.Calibration` (or a calibration file path); the
        read currents default to those stored with the calibration."""
        if isinstance(cal, (str, bytes)) or hasattr(cal, "__fspath__"):
            from labkit.calibrate.file import read_calibration

            cal = read_calibration(cal)
        if read_currents_a is None:
            read_currents_a = getattr(cal, "read_currents_a", None)
        return cls.from_model(cal.array_model(), read_currents_a, chip_id=cal.chip_id)


@dataclass(frozen=True)
class ChipSpread:
    """Chip-to-chip spread of the tile parameters, to sample tiles without a calibration.

    Defaults are datasheet-level ranges (docs/physics.md): drain coefficient 0.3-0.7 /V per
    column, crosstalk 0.2-1.2 fC per edge (coupling 0.1-0.5 fF at 1.8 V word-line swing)
    with a 30 % cell spread, comparator offset of up to tens of mV (offset spread 40 ns at
    0.5 pF / 0.2 uA) plus 4 ns of delay spread, readout gain 3 % per column.
    :meth:`from_tiles` fits the spread to the tiles of measured chips instead.
    """

    eta_range_per_v: tuple[float, float] = (0.3, 0.7)
    crosstalk_mean_c: float = 0.6e-15
    crosstalk_rel_std: float = 0.3
    offset_std_s: float = 40e-9
    gain_rel_std: float = 0.03

    @classmethod
    def from_tiles(cls, tiles: Sequence[TileParams]) -> "ChipSpread":
        """Spread of measured tiles (e.g. calibrations of a few chips)."""
        if not tiles:
            raise ValueError("ChipSpread.from_tiles needs at least one TileParams")
        eta = np.concatenate([t.eta_per_v for t in tiles])
        k = np.concatenate([t.crosstalk_c.ravel() for t in tiles])
        off = np.concatenate([t.offset_s for t in tiles])
        gain = np.concatenate([t.gain_s_per_c for t in tiles])
        lo, hi = np.percentile(eta, [5, 95])
        return cls((float(lo), float(max(hi, lo + 1e-6))), float(np.mean(k)), float(np.std(k) / abs(np.mean(k))),
                   float(np.std(off)), float(np.std(gain) / np.mean(gain)))

    def sample(self, op: OperatingPoint = OperatingPoint(), seed: int = 0) -> TileParams:
        """One tile drawn from the spread (deterministic given ``seed``)."""
        rng = np.random.default_rng([int(seed), 0x711E])
        base = TileParams.nominal(op)
        R, C = op.rows, op.cols
        return TileParams(
            rng.uniform(*self.eta_range_per_v, size=C),
            self.crosstalk_mean_c * np.clip(1 + self.crosstalk_rel_std * rng.standard_normal((R, C)), 0.1, 3.0),
            base.offset_s + self.offset_std_s * rng.standard_normal(C),
            base.gain_s_per_c * (1 + self.gain_rel_std * rng.standard_normal(C)),
            f"spread-{seed}",
        )


def tile_sources(tiles, n: int, op: OperatingPoint) -> list[TileParams]:
    """``n`` TileParams from a source: None (nominal), ChipSpread (sampled, seeds
    0..n-1), one TileParams / ArrayModel (for all), a sequence (exactly ``n``), or an
    iterator (takes ``n``)."""
    def is_model(t) -> bool:  # an ArrayModel (duck-typed: labkit.model is optional here)
        return all(hasattr(t, a) for a in ("eta_per_v", "crosstalk_c", "offset_s", "gain_s_per_c"))

    def one(t):
        if isinstance(t, TileParams):
            return t
        if is_model(t):
            return TileParams.from_model(t)
        raise ValueError(f"tile source {t!r}; expected TileParams or ArrayModel")

    if tiles is None:
        return [TileParams.nominal(op)] * n
    if isinstance(tiles, ChipSpread):
        return [tiles.sample(op, seed=i) for i in range(n)]
    if isinstance(tiles, TileParams) or is_model(tiles):
        return [one(tiles)] * n
    if isinstance(tiles, Iterator):
        out = []
        for _ in range(n):
            try:
                out.append(one(next(tiles)))
            except StopIteration:
                raise ValueError("tile source ran out of tiles") from None
        return out
    tiles = list(tiles)
    if len(tiles) != n:
        raise ValueError(f"{len(tiles)} tiles given for a layer of {n} tiles")
    return [one(t) for t in tiles]
