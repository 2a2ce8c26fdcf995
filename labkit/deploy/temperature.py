"""Run-time temperature (and retention) compensation of deployed chip tiles.

A :class:`CompensatedTile` wraps a programmed :class:`labkit.nn.ChipTile`. At each
batch it reads the chip's temperature and, with ``read-voltage`` compensation:

1. predicts every used cell's current at that temperature (the cell law of its
   :class:`~labkit.calibrate.temperature.TemperatureCalibration`, from the currents
   read right after programming) and, with a retention model, its drift since;
2. shifts the read (word-line) voltage by the one gate offset that holds those
   currents to first order (least squares in current), clipped to the envelope;
3. scales each column's readout gain by its predicted current ratio (what the shift
   leaves: the slope ``n k T / q`` compresses current ratios), times the calibrated
   readout gain's own change with T.

The network is not reprogrammed. Every batch is recorded (:attr:`log`): temperature
(K), read voltage (V), age (s) and a warning when the temperature is outside the
calibrated range. ``off`` records the temperature and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from labkit.calibrate.temperature import TemperatureCalibration
from labkit.errors import UsageError
from labkit.measure import measure_baseline
from labkit.measure.currents import cell_current_map

__all__ = ["METHODS", "BatchRecord", "CompensatedTile", "check_method"]

METHODS = ("off", "read-voltage")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UsageError(f"temperature compensation {method!r}; expected one of {', '.join(METHODS)}")
    return method


@dataclass
class BatchRecord:
    chip_id: str
    temperature_k: float
    read_voltage_v: float
    age_s: float
    warning: str | None = None


class CompensatedTile:
    """A chip tile whose operating point follows its temperature (see module docs).

    ``used`` (rows, cols) bool: the cells the tile's weights use. ``clock``: a callable
    returning the deployment's time (s), for the retention age."""

    def __init__(self, chip, method: str = "read-voltage", calibration: TemperatureCalibration | None = None,
                 retention=None, used: np.ndarray | None = None, clock=None, log: list | None = None,
                 rebaseline_k: float = 1.0):
        self.chip, self.method = chip, check_method(method)
        if self.method != "off" and (calibration is None or calibration.law is None):
            raise UsageError(f"read-voltage compensation of chip {chip.chip_id} needs a temperature calibration "
                             "with a cell law (labkit.calibrate.temperature.calibrate_temperatures)")
        self.calibration, self.retention = calibration, retention
        g = chip.backend.geometry
        self.used = np.ones((g.rows, g.cols), bool) if used is None else np.asarray(used, bool)
        self.clock = clock or (lambda: 0.0)
        self.log = [] if log is None else log
        self.rebaseline_k = rebaseline_k
        self._state: tuple | None = None
        self.reference()

    @property
    def chip_id(self) -> str:
        return self.chip.chip_id

    @property
    def backend(self):
        return self.chip.backend

    def reference(self) -> None:
        """Take the programmed state as the reference: temperature, read voltage, read
        currents (A), readout gain and the deployment time it was programmed at."""
        b = self.chip.backend
        self.programmed_k = float(b.temperature_k() or 300.0)
        self.read_v = float(b.settings.read_voltage_v)
        self.programmed_a = cell_current_map(b, averages=4, name="") if self.method != "off" else None
        self.base_gain = np.asarray(self.chip.gain_s_per_c, dtype=float).copy()
        self.base_baseline = np.asarray(self.chip.baseline_s, dtype=float).copy()
        self.programmed_at_s = float(self.clock())
        self._state = None

    def parameters(self):
        return self.chip.parameters()

    def set_weights(self, w: np.ndarray) -> dict:
        self.backend.configure(read_voltage_v=self.read_v)
        summary = self.chip.set_weights(w)
        self.reference()
        return summary

    def operating_point(self, kelvin: float, age_s: float = 0.0) -> tuple[float, np.ndarray]:
        """(read voltage (V), readout gain (s/C) per column) that hold the programmed
        currents at ``kelvin`` (K) after ``age_s`` (s) of retention."""
        law = self.calibration.law
        drift = 0.0 if self.retention is None else self.retention.log_drift(age_s, kelvin)
        dv = law.gate_shift_v(kelvin, self.programmed_a, self.programmed_k, drift, self.used)
        lo, hi = self.backend.envelope.read_voltage_range_v
        v = float(np.clip(self.read_v + dv, lo, hi))
        ln_now = law.log_current(kelvin, v - self.read_v, self.programmed_a, self.programmed_k) + drift
        i0 = np.where(self.used, self.programmed_a, 0.0)
        now = np.where(self.used, np.exp(ln_now), 0.0)
        ratio = np.where(i0.sum(axis=0) > 0, now.sum(axis=0) / np.maximum(i0.sum(axis=0), 1e-30), 1.0)
        readout = 1.0
        if len(self.calibration.calibrations) > 1:
            g_t = np.asarray(self.calibration.at(kelvin).model["gain_s_per_c"], dtype=float)
            g_p = np.asarray(self.calibration.at(self.programmed_k).model["gain_s_per_c"], dtype=float)
            readout = g_t / g_p
        return v, self.base_gain * ratio * readout

    def update(self) -> BatchRecord:
        """Read the temperature, adjust the operating point, record the batch."""
        b = self.backend
        kelvin = float(b.temperature_k() or self.programmed_k)
        age = max(float(self.clock()) - self.programmed_at_s, 0.0)
        warning = self.calibration.check_range(kelvin) if self.calibration is not None else None
        v = float(b.settings.read_voltage_v)
        if self.method == "read-voltage":
            key = (round(kelvin, 2), round(np.log10(1.0 + age), 3))
            if key != self._state:
                v, gain = self.operating_point(kelvin, age)
                if v != b.settings.read_voltage_v:
                    b.configure(read_voltage_v=v)
                self.chip.gain_s_per_c = gain
                last = None if self._state is None else self._state[0]
                if last is None or abs(kelvin - last) > self.rebaseline_k:
                    self.chip.baseline_s = measure_baseline(b, self.chip.baseline_repeats).t0_s
                self._state = key
        rec = BatchRecord(self.chip_id, kelvin, v, age, warning)
        self.log.append(rec)
        return rec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.update()
        return self.chip.forward(x)
