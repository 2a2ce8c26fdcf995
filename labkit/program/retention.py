"""Retention: each cell's predicted drift over time and temperature, and when to refresh.

A floating gate loses charge logarithmically in time, faster when hot. Per cell::

    ln I(age, T) - ln I(0, T) = -r_ij (T_ref / T) a(T) log10(1 + age / 1 s)
    a(T) = exp(-E_a / k (1 / T - 1 / T_ref))        (Arrhenius, a(T_ref) = 1)

``r_ij`` (ln I per decade at ``T_ref``) and ``E_a`` (eV) come from
:func:`characterize_retention` (current maps on the virtual clock at two or more
temperatures). The factor ``T_ref / T`` turns the gate-referred drift into current at T
(subthreshold, ``n k T / q``). The drift is taken at the present temperature.

:func:`refresh_plan` predicts when a programmed tile leaves tolerance: the rms relative
current error of its used cells after a per-column readout gain (the part a gate shift
and readout scale cannot hold), and what a refresh of it costs (cells, row erases,
program pulses on the rate of its last programming).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from labkit.backend import SafeArray, TemperatureControl, VirtualClock
from labkit.errors import UsageError
from labkit.files import FileFormatError, read_npz
from labkit.measure.currents import cell_current_map

__all__ = ["FORMAT", "RetentionModel", "characterize_retention", "RefreshPlan", "refresh_plan",
           "read_retention_model", "YEAR_S"]

FORMAT = "labkit.RetentionModel/1"
K_B_EV = 8.617333262e-5  # eV/K
YEAR_S = 365.25 * 86400.0
ERASE_ROWS_V = 13.0
ERASE_ROWS_S = 10e-3


@dataclass
class RetentionModel:
    """``per_decade`` (rows, cols): ln I lost per decade of age at ``reference_k`` (K);
    ``activation_ev``: Arrhenius activation energy (eV)."""

    per_decade: np.ndarray
    reference_k: float
    activation_ev: float
    chip_id: str = ""

    def acceleration(self, kelvin: float) -> float:
        return float(np.exp(-self.activation_ev / K_B_EV * (1.0 / float(kelvin) - 1.0 / self.reference_k)))

    def log_drift(self, age_s, kelvin: float) -> np.ndarray:
        """Predicted change of ln I (rows, cols; <= 0) after ``age_s`` (s) at ``kelvin`` (K)."""
        age = np.maximum(np.asarray(age_s, dtype=float), 0.0)
        return -self.per_decade * (self.reference_k / float(kelvin)) * self.acceleration(kelvin) * np.log10(1.0 + age)

    def save(self, path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        np.savez(path, format=np.array(FORMAT), per_decade=self.per_decade, reference_k=np.array(self.reference_k),
                 activation_ev=np.array(self.activation_ev), chip_id=np.array(self.chip_id))
        return path


def read_retention_model(path) -> RetentionModel:
    """Read a retention-model file (no pickle; shapes and values checked)."""
    kinds = {"format": "U", "chip_id": "U"}
    d = read_npz(path, "retention model", max_bytes=2**20, kinds=kinds)
    if str(d.get("format", "")) != FORMAT:
        raise FileFormatError(f"retention model {path} has format {str(d.get('format', ''))!r}; expected {FORMAT!r}")
    r, tk, ea = d.get("per_decade"), d.get("reference_k"), d.get("activation_ev")
    if r is None or r.ndim != 2 or tk is None or tk.shape != () or ea is None or ea.shape != ():
        raise FileFormatError(f"retention model {path}: expected per_decade (rows, cols), reference_k and activation_ev")
    if not (np.all(np.isfinite(r)) and np.isfinite(tk) and tk > 0 and np.isfinite(ea) and 0 <= ea < 5):
        raise FileFormatError(f"retention model {path}: values not finite or out of range "
                              f"(reference_k={float(tk)!r} K, activation_ev={float(ea)!r} eV; expected > 0 K, 0-5 eV)")
    return RetentionModel(np.asarray(r, dtype=float), float(tk), float(ea), str(d.get("chip_id", "")))


def characterize_retention(backend: SafeArray, temperatures_k: Sequence[float] = (300.0, 330.0),
                           decades: Sequence[float] = (1, 2, 3, 4, 5), averages: int = 4,
                           read_offset_v: float = -0.25) -> RetentionModel:
    """Erase every row (age 0), then map the currents at ages ``10**decades`` s on the
    virtual clock at the first temperature, and at the next decades at each further
    temperature. Maps are read ``read_offset_v`` (V) below the read voltage, where
    erased cells are subthreshold. Destructive: program the chip afterwards."""
    temps = np.asarray(temperatures_k, dtype=float).reshape(-1)
    dec = np.asarray(decades, dtype=float).reshape(-1)
    lo, hi = backend.envelope.temperature_range_k
    if len(temps) < 2 or not np.all(np.isfinite(temps)) or np.any((temps < lo) | (temps > hi)):
        raise UsageError(f"retention temperatures {temps.tolist()} K; expected >= 2 within the envelope {lo:g}-{hi:g} K")
    if len(dec) < 2 or np.any(np.diff(dec) <= 0) or dec[0] < 0 or dec[-1] + len(temps) - 1 > 9:
        raise UsageError(f"retention decades {dec.tolist()}; expected >= 2 increasing decades of seconds, 0-9")
    clock, ctl = backend.capability(VirtualClock), backend.capability(TemperatureControl)
    if clock is None or ctl is None:
        raise UsageError(f"backend {backend.identity.backend!r} lacks a virtual clock or temperature controller; "
                         "retention characterization needs both")
    g = backend.geometry
    start_k, ref_v = backend.temperature_k(), backend.settings.read_voltage_v
    slopes, age = [], 0.0
    backend.erase_rows(np.arange(g.rows), ERASE_ROWS_V, ERASE_ROWS_S)
    try:
        for k, tk in enumerate(temps):
            ctl.set_temperature_k(float(tk))
            logs, xs = [], []
            for d in dec + k * (dec[-1] - dec[0]):
                clock.advance_time_s(max(10.0 ** d - age, 0.0))
                age = max(age, 10.0 ** d)
                i = cell_current_map(backend, read_voltage_v=ref_v + read_offset_v, averages=averages, name="")
                logs.append(np.log(np.maximum(i, 1e-15)))
                xs.append(np.log10(1.0 + age))
            slopes.append(-np.polyfit(np.asarray(xs), np.stack(logs).reshape(len(xs), -1), 1)[0].reshape(g.rows, g.cols))
    finally:
        if start_k is not None:
            ctl.set_temperature_k(float(start_k))
    r0 = np.maximum(slopes[0], 0.0)
    # ratio of drift rates per kelvin step, in current at each T: r_k = r0 (T0 / T_k) a(T_k)
    x = np.array([1.0 / temps[0] - 1.0 / t for t in temps[1:]])
    y = np.array([np.log(max(np.median(s) / max(np.median(slopes[0]), 1e-12) * t / temps[0], 1e-6))
                  for s, t in zip(slopes[1:], temps[1:])])
    ea = float(max(np.sum(x * y) / np.sum(x * x) * K_B_EV, 0.0))
    return RetentionModel(r0, float(temps[0]), ea, backend.identity.chip_id)


@dataclass
class RefreshPlan:
    """When a tile leaves tolerance and what refreshing it costs."""

    chip_id: str
    temperature_k: float
    tolerance: float
    leaves_tolerance_after_s: float  # age (s) at which the rms error after gain reaches tolerance; inf: never in 100 y
    error_now: float
    age_now_s: float
    cells: int  # cells out of tolerance at that age
    rows_erased: int
    pulses: int  # estimated program pulses of the refresh

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in vars(self).items()}


def residual_error(model: RetentionModel, currents_a: np.ndarray, used: np.ndarray, age_s: float,
                   kelvin: float, offset=0.0) -> tuple[float, np.ndarray]:
    """(rms, per-cell) relative current error of ``used`` cells after ``age_s`` at
    ``kelvin``, once each column's readout gain takes its mean (current-weighted) drift.
    ``offset`` (ln, rows x cols): a drift-aware pre-distortion programmed into the cells."""
    i0 = np.where(used, currents_a, 0.0)
    now = i0 * np.exp(model.log_drift(age_s, kelvin) + offset)
    scale = np.sum(i0, axis=0) / np.maximum(np.sum(now, axis=0), 1e-30)
    rel = np.where(used, now * scale[None, :] / np.maximum(i0, 1e-30) - 1.0, 0.0)
    n = max(int(used.sum()), 1)
    return float(np.sqrt(np.sum(rel**2) / n)), rel


def refresh_plan(model: RetentionModel, currents_a, kelvin: float, tolerance: float, age_now_s: float = 0.0,
                 pulses_per_cell: float = 10.0, used=None, chip_id: str = "", offset=0.0) -> RefreshPlan:
    """Predict when the intended ``currents_a`` (A, rows x cols; NaN: unused) leave
    ``tolerance`` (rms relative current error after a per-column gain) at ``kelvin`` (K):
    the first age past the smallest error where it exceeds ``tolerance`` (``offset``: the
    ln pre-distortion of a drift-aware programming), and the cost of refreshing then
    (``pulses_per_cell`` from the last programming)."""
    i0 = np.asarray(currents_a, dtype=float)
    if i0.shape != model.per_decade.shape:
        raise UsageError(f"currents have shape {i0.shape}; the retention model is {model.per_decade.shape}")
    if not (0 < float(tolerance) < 1):
        raise UsageError(f"refresh tolerance {tolerance!r}; expected a fraction in (0, 1), e.g. 0.02")
    if not (np.isfinite(kelvin) and kelvin > 0):
        raise UsageError(f"temperature {kelvin!r} K; expected a finite temperature > 0 K")
    used = np.isfinite(i0) if used is None else (used & np.isfinite(i0))
    i0 = np.where(used, i0, 0.0)
    ages = np.logspace(0, np.log10(100 * YEAR_S), 400)
    errs = np.array([residual_error(model, i0, used, a, kelvin, offset)[0] for a in ages])
    best = int(np.argmin(errs))
    over = best + np.flatnonzero(errs[best:] > tolerance)
    leave = float(ages[over[0]]) if len(over) else float("inf")
    at = leave if np.isfinite(leave) else ages[-1]
    _, rel = residual_error(model, i0, used, at, kelvin, offset)
    bad = used & (np.abs(rel) > tolerance)
    rows = np.flatnonzero(bad.any(axis=1))
    refresh_cells = int(used[rows].sum())  # a drifted cell is below target: its row is erased and redone
    return RefreshPlan(chip_id or model.chip_id, float(kelvin), float(tolerance), leave,
                       residual_error(model, i0, used, age_now_s, kelvin, offset)[0], float(age_now_s),
                       refresh_cells, int(len(rows)), int(round(refresh_cells * pulses_per_cell)))
