"""Configuration of the analog layers, in the three parts it mixes (SI units):

* :class:`OperatingPoint`: the chip's operating point (integration window, input clock,
  TDC, bit-line capacitance, reference current, voltages, current range, tile geometry),
  taken from a backend by :meth:`OperatingPoint.from_backend`;
* :class:`WeightMapping`: how weights become currents (the weight window's headroom) and
  what happens to negative activations (``signed_inputs``);
* :class:`TrainingNoise`: what training adds on top of the physics (readout noise floor
  and relative part, per-pass parameter jitter).

:class:`AnalogConfig` holds one of each and the model tiles' physics switches
(``quantize``, ``droop``, ``crosstalk``, ``edge_order``). Checkpoints store
:meth:`AnalogConfig.to_dict` (nested by part); :meth:`AnalogConfig.from_dict` also reads
the earlier flat layout.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from labkit.backend import Datasheet, Geometry, VmmSettings
from labkit.program.mapping import WeightWindow

__all__ = ["OperatingPoint", "WeightMapping", "TrainingNoise", "AnalogConfig"]


@dataclass(frozen=True)
class OperatingPoint:
    """The chip's operating point the tiles run at (datasheet, VMM settings, geometry)."""

    integration_time_s: float = VmmSettings.integration_time_s
    input_bits: int = VmmSettings.input_bits
    tdc_bits: int = VmmSettings.tdc_bits
    tdc_lsb_s: float = VmmSettings.tdc_lsb_s
    bitline_capacitance_f: float = Datasheet.bitline_capacitance_f
    reference_current_a: float = Datasheet.reference_current_a
    precharge_v: float = Datasheet.precharge_v
    threshold_v: float = Datasheet.threshold_v
    i_min_a: float = Datasheet.cell_current_range_a[0]
    i_max_limit_a: float = Datasheet.cell_current_range_a[1]
    rows: int = 16
    pairs: tuple[tuple[int, int], ...] = Geometry.pairs

    def __post_init__(self):
        if self.rows < 1 or len(self.pairs) < 1:
            raise ValueError(f"rows={self.rows}, pairs={self.pairs}; expected a non-empty tile")

    @classmethod
    def from_backend(cls, backend) -> "OperatingPoint":
        """The operating point of ``backend`` (its datasheet, settings and geometry)."""
        ds, st, g = backend.datasheet, backend.settings, backend.geometry
        return cls(integration_time_s=st.integration_time_s, input_bits=st.input_bits, tdc_bits=st.tdc_bits,
                   tdc_lsb_s=st.tdc_lsb_s, bitline_capacitance_f=ds.bitline_capacitance_f,
                   reference_current_a=ds.reference_current_a, precharge_v=ds.precharge_v,
                   threshold_v=ds.threshold_v, i_min_a=ds.cell_current_range_a[0],
                   i_max_limit_a=ds.cell_current_range_a[1], rows=g.rows, pairs=tuple(tuple(p) for p in g.pairs))

    @property
    def outputs_per_tile(self) -> int:
        return len(self.pairs)

    @property
    def cols(self) -> int:
        return 1 + max(max(p) for p in self.pairs)

    def datasheet(self) -> Datasheet:
        return Datasheet(precharge_v=self.precharge_v, threshold_v=self.threshold_v,
                         bitline_capacitance_f=self.bitline_capacitance_f,
                         reference_current_a=self.reference_current_a,
                         cell_current_range_a=(self.i_min_a, self.i_max_limit_a))

    def geometry(self) -> Geometry:
        return Geometry(rows=self.rows, cols=self.cols, pairs=self.pairs)


@dataclass(frozen=True)
class WeightMapping:
    """Weights -> currents and activations -> pulses. ``headroom``: of the weight window
    (:mod:`labkit.program.mapping`); ``signed_inputs``: ``"split"`` (negative activations
    run as a second VMM on the same tiles, subtracted digitally) or ``"error"``."""

    headroom: float = 0.9
    signed_inputs: str = "split"

    def __post_init__(self):
        if self.signed_inputs not in ("split", "error"):
            raise ValueError(f"signed_inputs={self.signed_inputs!r}; expected 'split' or 'error'")


@dataclass(frozen=True)
class TrainingNoise:
    """What training adds to the tile physics (training mode only).

    ``noise_std_s``: readout noise per column (the calibration's measured ``noise_std_s``
    is about 4 ns on the emulated chips); ``noise_relative``: a further part proportional
    to the column's output (time shift), added in quadrature, as the calibration's
    ``noise_floor_s`` and ``noise_relative`` describe a chip (about 2.5 ns and 1.4 % on
    the emulated ones). ``jitter``: every forward pass perturbs the tile parameters by
    this relative spread (crosstalk and drain coefficient by ``jitter``, readout gain by
    ``jitter / 5``, cell currents by ``jitter / 10``, i.e. programming error), so the
    network does not rely on the calibration being exact.
    """

    noise_std_s: float = 4e-9
    noise_relative: float = 0.0
    jitter: float = 0.0

    def __post_init__(self):
        if not (0 <= self.jitter < 1):
            raise ValueError(f"jitter={self.jitter!r}; expected a relative spread in [0, 1)")
        if not (self.noise_std_s >= 0 and math.isfinite(self.noise_std_s)):
            raise ValueError(f"noise_std_s={self.noise_std_s!r}; expected a finite value >= 0 s")
        if not (0 <= self.noise_relative < 1):
            raise ValueError(f"noise_relative={self.noise_relative!r}; expected a fraction of the output in [0, 1)")


_PARTS = {"operating": OperatingPoint, "mapping": WeightMapping, "noise": TrainingNoise}


@dataclass(frozen=True)
class AnalogConfig:
    """An operating point, a weight mapping, training noise, and the physics switches of
    the model tiles (input clock and TDC quantization, bit-line droop, crosstalk, its
    edge-order term)."""

    operating: OperatingPoint = field(default_factory=OperatingPoint)
    mapping: WeightMapping = field(default_factory=WeightMapping)
    noise: TrainingNoise = field(default_factory=TrainingNoise)
    quantize: bool = True
    droop: bool = True
    crosstalk: bool = True
    edge_order: bool = True

    def __post_init__(self):
        for name, kind in _PARTS.items():
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"AnalogConfig.{name}={getattr(self, name)!r}; expected a {kind.__name__}")
        self.window()  # validates the current window

    @classmethod
    def from_backend(cls, backend, **changes) -> "AnalogConfig":
        """The operating point of ``backend``; ``changes``: the other fields."""
        return cls(operating=OperatingPoint.from_backend(backend), **changes)

    def window(self) -> WeightWindow:
        """The weight window (currents of w = 0 and full scale) of this operating point."""
        op = self.operating
        return WeightWindow.from_datasheet(op.datasheet(), op.integration_time_s, op.rows, self.mapping.headroom)

    def with_noise(self, **changes) -> "AnalogConfig":
        """A copy with :class:`TrainingNoise` fields changed."""
        return dataclasses.replace(self, noise=dataclasses.replace(self.noise, **changes))

    def to_dict(self) -> dict:
        """Plain data (nested by part), as stored in checkpoints."""
        d = dataclasses.asdict(self)
        d["operating"]["pairs"] = [list(p) for p in self.operating.pairs]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AnalogConfig":
        """From :meth:`to_dict`, or from the earlier flat layout (one dict of all fields);
        unknown keys are ignored."""
        d = dict(d)
        parts = {}
        for name, kind in _PARTS.items():
            known = {f.name for f in dataclasses.fields(kind)}
            sub = d.get(name) if isinstance(d.get(name), dict) else {k: v for k, v in d.items() if k in known}
            sub = {k: v for k, v in sub.items() if k in known}
            if "pairs" in sub:
                sub["pairs"] = tuple(tuple(int(v) for v in p) for p in sub["pairs"])
            parts[name] = kind(**sub)
        switches = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name not in _PARTS and f.name in d}
        return cls(**parts, **switches)
