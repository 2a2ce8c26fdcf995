"""Run-time temperature (and retention) compensation of deployed chip tiles.

A :class:`CompensatedTile` wraps a programmed :class:`labkit.nn.ChipTile`. At each
batch it reads the chip's temperature and, with ``read-voltage`` compensation:

1. predicts every used cell's current at that temperature (the cell law of its
   :class:`~labkit.calibrate.temperature.TemperatureCalibration`, from the currents
   read right after programming) and, with a retention model, its drift since;
2. shifts the read (word-line) voltage by the one gate offset that holds those
   currents to first order (least squares in current), clipped to the envelope;
3. corrects each column's readout for what the shift leaves (the slope ``n k T / q``
   compresses current ratios): the intended currents as a straight line of the
   predicted ones per column (least squares over its used cells), its slope a readout
   gain (times the calibrated readout gain's own change with T), its intercept an offset
   current times the summed pulse inputs, added digitally.

The network is not reprogrammed. Every batch is recorded (:attr:`log`): temperature
(K), read voltage (V), age (s) and a warning when the temperature is outside the
calibrated range. ``off`` records the temperature and changes nothing. ``reprogram``
is ``read-voltage`` plus programming the tile again (at the reference read voltage)
once the chip is more than ``reprogram_k`` (K) from the temperature it was programmed
at: the shift cannot undo the compression of current ratios (``n k T / q`` grows with
T: ln-current differences scale by ``T0 / T``), a program at the new temperature does.
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

METHODS = ("off", "read-voltage", "reprogram")
REPROGRAM_K = 5.0  # ``reprogram``: program the tile again when it is this far (K) from its programming temperature


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


def programmed_state(chip, at_s: float = 0.0) -> dict:
    """The state of a just-programmed chip tile that compensation refers to: temperature
    (K), read voltage (V), read currents (A, rows x cols, 4 reads averaged), readout
    gain (s/C), baseline (s) and the deployment time ``at_s`` (s)."""
    b = chip.backend
    return {"temperature_k": float(b.temperature_k() or 300.0), "read_voltage_v": float(b.settings.read_voltage_v),
            "currents_a": cell_current_map(b, averages=4, name=""),
            "gain_s_per_c": np.asarray(chip.gain_s_per_c, dtype=float).copy(),
            "baseline_s": np.asarray(chip.baseline_s, dtype=float).copy(), "at_s": float(at_s)}


class CompensatedTile:
    """A chip tile whose operating point follows its temperature (see module docs).

    ``used`` (rows, cols) bool: the cells the tile's weights use. ``clock``: a callable
    returning the deployment's time (s), for the retention age."""

    def __init__(self, chip, method: str = "read-voltage", calibration: TemperatureCalibration | None = None,
                 retention=None, used: np.ndarray | None = None, clock=None, log: list | None = None,
                 rebaseline_k: float = 1.0, programmed: dict | None = None, weights: np.ndarray | None = None,
                 reprogram_k: float = REPROGRAM_K, design_age_s: float | None = None):
        self.chip, self.method = chip, check_method(method)
        if self.method != "off" and (calibration is None or calibration.law is None):
            raise UsageError(f"read-voltage compensation of chip {chip.chip_id} needs a temperature calibration "
                             "with a cell law (labkit.calibrate.temperature.calibrate_temperatures)")
        self.calibration, self.retention = calibration, retention
        g = chip.backend.geometry
        self.used = np.ones((g.rows, g.cols), bool) if used is None else np.asarray(used, bool)
        self.clock = clock or (lambda: 0.0)
        self.log = [] if log is None else log
        self.rebaseline_k, self.reprogram_k, self.weights = rebaseline_k, float(reprogram_k), weights
        if self.method == "reprogram" and weights is None:
            raise UsageError(f"reprogram compensation of chip {chip.chip_id} needs the tile's weights")
        self.reprograms, self.reprogram_pulses = 0, 0
        self.design_age_s = design_age_s
        if design_age_s is not None and (retention is None or not np.isfinite(design_age_s) or design_age_s <= 0):
            raise UsageError(f"design_age_s={design_age_s!r} s needs a retention model and a finite age > 0 s")
        g = chip.backend.geometry
        self.offset = np.zeros((g.rows, g.cols))  # ln pre-distortion programmed into the cells (0: none)
        self.offset_a = np.zeros(g.cols)  # A per column: the affine part of the readout correction
        self._state: tuple | None = None
        self.reference(programmed)

    @property
    def chip_id(self) -> str:
        return self.chip.chip_id

    @property
    def backend(self):
        return self.chip.backend

    def reference(self, programmed: dict | None = None) -> None:
        """Take the programmed state as the reference: ``programmed`` (what
        :func:`programmed_state` recorded right after programming: temperature (K), read
        voltage (V), read currents (A), readout gain (s/C), baseline (s), deployment time
        (s)), or measured now (right after programming)."""
        p = programmed or programmed_state(self.chip, self.clock())
        self.programmed_k, self.read_v = p["temperature_k"], p["read_voltage_v"]
        self.programmed_a, self.base_gain = p["currents_a"], p["gain_s_per_c"].copy()
        self.programmed_at_s = p["at_s"]
        self.offset = p.get("offset", np.zeros_like(p["currents_a"]))
        self.base_baseline = p["baseline_s"].copy()
        self.chip.baseline_s = p["baseline_s"].copy()
        self.chip.gain_s_per_c = self.base_gain.copy()  # an earlier compensation's changes undone
        if self.backend.settings.read_voltage_v != self.read_v:
            self.backend.configure(read_voltage_v=self.read_v)
        self._state = None

    def state(self) -> dict:
        """The programmed state referred to (as :func:`programmed_state` gives it)."""
        return {"temperature_k": self.programmed_k, "read_voltage_v": self.read_v, "currents_a": self.programmed_a,
                "gain_s_per_c": self.base_gain.copy(), "baseline_s": self.base_baseline.copy(),
                "at_s": self.programmed_at_s, "offset": self.offset.copy()}

    def parameters(self):
        return self.chip.parameters()

    def set_weights(self, w: np.ndarray) -> dict:
        """Program ``w`` at the reference read voltage and gain, and refer to it from now.
        With ``design_age_s`` the cells are programmed drift-aware: each target is raised
        by its predicted drift at that age (at the present temperature) less that of its
        column's slowest cell (the readout gain takes the common part), so the cells meet
        their targets, relative to each other, then."""
        self.backend.configure(read_voltage_v=self.read_v)
        self.chip.gain_s_per_c = self.base_gain.copy()
        if self.design_age_s is None:
            summary = self.chip.set_weights(w)
            self.reference()
            return summary
        summary, offset = self._program_drift_aware(w)
        self.reference()
        self.offset = offset
        return summary

    def _program_drift_aware(self, w: np.ndarray) -> tuple[dict, np.ndarray]:
        from labkit.program import ProgramConfig, WeightWindow, plan_weights, program_array

        chip, b = self.chip, self.backend
        chip.configure()
        op = chip.config.operating
        w = np.asarray(w, dtype=float)
        used = np.isfinite(w)
        window = WeightWindow.from_datasheet(b.datasheet, op.integration_time_s, b.geometry.rows,
                                             chip.config.mapping.headroom)
        # as a chip tile does: unused outputs of used rows to I_min (labkit.nn.tiles.ChipTile)
        plan = plan_weights(b, np.where(used, w, 0.0), window=window, clip=True,
                            rows_used=int(used.any(axis=1).sum()))
        kelvin = float(b.temperature_k() or self.programmed_k)
        drift = self.retention.log_drift(self.design_age_s, kelvin)
        cells = np.isfinite(plan.targets_a)
        # raised only (never below the window's zero current): against the column's slowest cell
        col = np.array([drift[cells[:, j], j].max() if cells[:, j].any() else 0.0 for j in range(drift.shape[1])])
        offset = np.where(cells, col[None, :] - drift, 0.0)
        lo, hi = b.datasheet.cell_current_range_a
        targets = np.clip(plan.targets_a * np.exp(offset), lo, hi)  # NaN (cells left alone) stays NaN
        offset = np.where(cells, np.log(targets / plan.targets_a), 0.0)
        result = program_array(b, targets, config=chip.program or ProgramConfig(),
                               weights=plan.weights, window=plan.window.to_dict())
        chip.summary = result.summary()
        chip.summary.pop("failed", None)
        chip.baseline_s = measure_baseline(b, chip.baseline_repeats).t0_s
        return chip.summary, offset

    def operating_point(self, kelvin: float, age_s: float = 0.0) -> tuple[float, np.ndarray]:
        """(read voltage (V), readout gain (s/C) per column) that hold the programmed
        currents at ``kelvin`` (K) after ``age_s`` (s) of retention."""
        law = self.calibration.law
        drift = 0.0 if self.retention is None else self.retention.log_drift(age_s, kelvin)
        # against the intended currents (programmed_a exp(-offset))
        dv = law.gate_shift_v(kelvin, self.programmed_a, self.programmed_k, drift + self.offset, self.used)
        lo, hi = self.backend.envelope.read_voltage_range_v
        v = float(np.clip(self.read_v + dv, lo, hi))
        ln_now = law.log_current(kelvin, v - self.read_v, self.programmed_a, self.programmed_k) + drift
        i0 = np.where(self.used, self.programmed_a * np.exp(-self.offset), 0.0)
        now = np.where(self.used, np.exp(ln_now), 0.0)
        # per column, the intended currents as an affine function of the ones flowing now
        # (least squares over the used cells): I0 = now / ratio + offset_a
        ratio, self.offset_a = np.ones(i0.shape[1]), np.zeros(i0.shape[1])
        for j in range(i0.shape[1]):
            u = self.used[:, j]
            if u.sum() >= 2 and np.ptp(now[u, j]) > 0:
                slope, icpt = np.polyfit(now[u, j], i0[u, j], 1)
                if slope > 0:
                    ratio[j], self.offset_a[j] = 1.0 / slope, icpt
                    continue
            if u.any():
                ratio[j] = now[u, j].sum() / max(i0[u, j].sum(), 1e-30)
        readout = 1.0
        if len(self.calibration.calibrations) > 1:
            g_t = np.asarray(self.calibration.at(kelvin, warn=False).model["gain_s_per_c"], dtype=float)
            g_p = np.asarray(self.calibration.at(self.programmed_k, warn=False).model["gain_s_per_c"], dtype=float)
            readout = g_t / g_p
        return v, self.base_gain * ratio * readout

    def update(self) -> BatchRecord:
        """Read the temperature, adjust the operating point, record the batch."""
        b = self.backend
        kelvin = float(b.temperature_k() or self.programmed_k)
        age = max(float(self.clock()) - self.programmed_at_s, 0.0)
        warning = self.calibration.check_range(kelvin, warn=False) if self.calibration is not None else None
        v = float(b.settings.read_voltage_v)
        if self.method == "reprogram" and abs(kelvin - self.programmed_k) > self.reprogram_k:
            summary = self.set_weights(self.weights)  # at the reference read voltage, then read-voltage from here
            self.reprograms += 1
            self.reprogram_pulses += int(summary.get("pulses_total", 0))
            age = 0.0
        if self.method in ("read-voltage", "reprogram"):
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
        y = self.chip.forward(x)
        if self.method == "off" or not np.any(self.offset_a):
            return y
        # the affine part of the readout correction: offset current times the summed pulse inputs
        op = self.chip.config.operating
        pairs = np.asarray(op.pairs)
        d = (self.offset_a[pairs[:, 0]] - self.offset_a[pairs[:, 1]]) / self.chip.config.window().i_scale_a
        s = np.clip(x.detach().double().cpu().numpy(), 0.0, 1.0).sum(axis=1)
        return y + torch.as_tensor(s[:, None] * d[None, :], dtype=y.dtype)
