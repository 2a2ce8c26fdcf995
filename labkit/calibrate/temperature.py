"""Temperature-aware calibration: the chip at any temperature of a calibrated range.

Calibrate at three or more temperatures (through ``TemperatureControl``), then fit
every parameter as a smooth function of T (K):

* cell currents of the fitted model, per cell, in the subthreshold form
  ``ln I = a + b / T`` (the overdrive over ``n k T / q``);
* the cells' intrinsic law, per cell, from current maps at two or more gate offsets
  ``dv`` (V) at each T: ``ln I = alpha + beta / T + gamma dv / T``. ``alpha``
  (``ln I_s`` plus the threshold's temperature coefficient over ``n k / q``) and
  ``gamma`` (``kappa q / (n k)``, K/V) do not depend on how the cell is programmed;
  ``beta`` does. So a cell programmed to ``I0`` at ``T0`` is predicted at any ``T``
  and gate offset (:meth:`CellLaw.log_current`);
* everything else of the model (drain coefficients, crosstalk, readout offset and
  gain, and any further term) linear in T.

File (:data:`FORMAT`, ``.npz``, no pickle): ``format``, ``temperatures_k`` (K,),
``law/alpha``, ``law/beta``, ``law/gamma`` (rows, cols), ``law/reference_v`` and
``law/reference_k``, then each temperature's calibration under ``cal<k>/`` in the
single-temperature layout of :mod:`labkit.calibrate.file`. An old single-temperature
file reads as a calibration at one temperature (:func:`read_temperature_calibration`).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from labkit.backend import SafeArray, TemperatureControl
from labkit.calibrate.file import FORMAT as SINGLE_FORMAT
from labkit.calibrate.file import Calibration, read_calibration, save_calibration
from labkit.errors import UsageError
from labkit.files import FileFormatError, npz_headers, npz_target, read_npz, write_npz
from labkit.measure.currents import cell_current_map

__all__ = ["FORMAT", "CellLaw", "TemperatureCalibration", "OutOfRangeWarning", "measure_cell_law",
           "calibrate_temperatures", "fit_temperature_calibration", "save_temperature_calibration",
           "read_temperature_calibration"]

FORMAT = "labkit.TemperatureCalibration/1"
MAX_TEMPERATURES = 16
MAX_BYTES = 64 * 2**20
GATE_OFFSETS_V = (-0.08, -0.04, 0.0, 0.04)  # V: spans the shifts that hold the currents over 10-60 degC
_FIXED = ("format", "n_tiles", "rows", "cols", "pairs", "eta_per_cell", "precharge_v", "threshold_v",
          "bitline_capacitance_f", "reference_current_a", "integration_time_s", "read_voltage_v", "input_bits",
          "tdc_bits", "tdc_lsb_s")


class OutOfRangeWarning(UserWarning):
    """A temperature outside the calibrated range: the model extrapolates."""


@dataclass
class CellLaw:
    """Per-cell ``ln I = alpha + beta / T + gamma dv / T`` (I in A, T in K, ``dv`` the
    gate offset from ``reference_v`` in V); fitted between ``reference_k`` bounds."""

    alpha: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray  # K/V
    reference_v: float

    def log_current(self, kelvin: float, dv: float = 0.0, programmed_a=None, programmed_k: float | None = None):
        """ln I (rows, cols) at ``kelvin`` and gate offset ``dv`` (V); with
        ``programmed_a`` (A, at ``programmed_k`` and dv = 0) cells programmed since."""
        beta = self.beta
        if programmed_a is not None:
            beta = float(programmed_k) * (np.log(np.maximum(programmed_a, 1e-15)) - self.alpha)
        return self.alpha + (beta + self.gamma * dv) / float(kelvin)

    def gate_shift_v(self, kelvin: float, programmed_a, programmed_k: float, extra_log=0.0,
                     used=None) -> float:
        """Gate offset (V) that holds ``programmed_a`` at ``kelvin`` to first order: least
        squares in current (weights I0^2) over ``used`` cells; ``extra_log`` (ln units,
        rows x cols) adds a predicted change such as retention drift."""
        i0 = np.asarray(programmed_a, dtype=float)
        used = np.isfinite(i0) if used is None else used & np.isfinite(i0)
        i0 = np.where(used, i0, 1e-9)
        err = self.log_current(kelvin, 0.0, i0, programmed_k) + extra_log - np.log(i0)
        g = self.gamma / float(kelvin)
        w = np.where(used, i0**2, 0.0)
        return float(-np.sum(w * err * g) / max(np.sum(w * g * g), 1e-30))


@dataclass
class TemperatureCalibration:
    """Calibrations at ``temperatures_k`` (K, ascending) and the fits between them.

    One temperature (an old file) predicts only there: :meth:`at` returns that
    calibration at any T, with an :class:`OutOfRangeWarning` away from it."""

    temperatures_k: np.ndarray
    calibrations: list[Calibration]
    law: CellLaw | None = None

    @property
    def chip_id(self) -> str:
        return self.calibrations[0].chip_id

    @property
    def range_k(self) -> tuple[float, float]:
        return float(self.temperatures_k.min()), float(self.temperatures_k.max())

    def in_range(self, kelvin: float, margin_k: float = 0.5) -> bool:
        lo, hi = self.range_k
        return lo - margin_k <= float(kelvin) <= hi + margin_k

    def check_range(self, kelvin: float, warn: bool = True) -> str | None:
        """A one-line warning (also issued as :class:`OutOfRangeWarning` with ``warn``)
        when ``kelvin`` is outside the calibrated range, else None."""
        if self.in_range(kelvin):
            return None
        lo, hi = self.range_k
        text = (f"chip {self.chip_id} at {kelvin:.2f} K ({kelvin - 273.15:.1f} degC) is outside its calibrated "
                f"range {lo:.2f}-{hi:.2f} K; the temperature model extrapolates")
        if warn:
            warnings.warn(text, OutOfRangeWarning, stacklevel=2)
        return text

    def at(self, kelvin: float, warn: bool = True) -> Calibration:
        """The calibration predicted at ``kelvin`` (K): model currents by the
        subthreshold law, every other model term linear in T, the read currents by the
        cell law."""
        kelvin = float(kelvin)
        if not np.isfinite(kelvin) or kelvin <= 0:
            raise UsageError(f"temperature {kelvin!r} K; expected a finite temperature > 0 K")
        if warn:
            self.check_range(kelvin)
        cals, T = self.calibrations, self.temperatures_k
        if len(cals) == 1:
            return cals[0]
        model = {}
        for key, v0 in cals[0].model.items():
            v0 = np.asarray(v0)
            if key in _FIXED or v0.dtype.kind != "f":
                model[key] = v0
                continue
            stack = np.stack([np.asarray(c.model[key], dtype=float) for c in cals])
            if key == "currents_a":
                a, b = _fit(1.0 / T, np.log(np.maximum(stack, 1e-15)))
                model[key] = np.exp(a + b / kelvin)
            else:
                a, b = _fit(T, stack)
                model[key] = a + b * kelvin
        out = copy.copy(cals[int(np.argmin(np.abs(T - kelvin)))])
        out = dataclasses.replace(out, model=model, report=dict(out.report, temperature_k=kelvin))
        if self.law is not None:
            out.read_currents_a = np.exp(self.law.log_current(kelvin))
        return out

    def save(self, path) -> Path:
        return save_temperature_calibration(self, path)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares straight line y = a + b x along axis 0 of ``y`` (K, ...)."""
    X = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(X, y.reshape(len(x), -1), rcond=None)
    return coef[0].reshape(y.shape[1:]), coef[1].reshape(y.shape[1:])


def _temperatures(temperatures_k, backend: SafeArray, least: int) -> np.ndarray:
    temps = np.asarray(temperatures_k, dtype=float).reshape(-1)
    lo, hi = backend.envelope.temperature_range_k
    if (len(temps) < least or len(temps) > MAX_TEMPERATURES or not np.all(np.isfinite(temps))
            or len(set(temps.round(3))) != len(temps)):
        raise UsageError(f"temperatures {temps.tolist()} K; expected {least} to {MAX_TEMPERATURES} distinct "
                         "finite temperatures")
    bad = temps[(temps < lo) | (temps > hi)]
    if len(bad):
        raise UsageError(f"temperature {bad[0]:g} K is outside the safety envelope {lo:g}-{hi:g} K")
    return np.sort(temps)


def _control(backend: SafeArray) -> TemperatureControl:
    ctl = backend.capability(TemperatureControl)
    if ctl is None:
        raise UsageError(f"backend {backend.identity.backend!r} has no temperature controller; "
                         "a temperature calibration needs TemperatureControl")
    return ctl


def measure_cell_law(backend: SafeArray, temperatures_k: Sequence[float], gate_offsets_v=GATE_OFFSETS_V,
                     averages: int = 2) -> CellLaw:
    """Current maps at every temperature (K) and gate offset (V) from the configured
    read voltage, fitted per cell to :class:`CellLaw`. Restores temperature and read voltage."""
    temps = _temperatures(temperatures_k, backend, 2)
    offsets = np.asarray(gate_offsets_v, dtype=float).reshape(-1)
    ref = backend.settings.read_voltage_v
    if len(offsets) < 1 or not np.all(np.isfinite(offsets)) or np.any(np.abs(offsets) > 0.2) or np.all(offsets == 0):
        raise UsageError(f"gate offsets {offsets.tolist()} V; expected finite offsets within +-0.2 V, not all zero")
    ctl, start = _control(backend), backend.temperature_k()
    rows, feats = [], []
    try:
        for tk in temps:
            ctl.set_temperature_k(float(tk))
            for dv in offsets:
                backend.configure(read_voltage_v=ref + float(dv))
                rows.append(np.log(np.maximum(cell_current_map(backend, averages=averages, name=""), 1e-15)))
                feats.append((1.0, 1.0 / tk, dv / tk))
    finally:
        backend.configure(read_voltage_v=ref)
        if start is not None:
            ctl.set_temperature_k(float(start))
    X, Y = np.asarray(feats), np.stack(rows)
    coef, *_ = np.linalg.lstsq(X, Y.reshape(len(X), -1), rcond=None)
    shape = Y.shape[1:]
    return CellLaw(coef[0].reshape(shape), coef[1].reshape(shape), coef[2].reshape(shape), float(ref))


def calibrate_temperatures(backend: SafeArray, temperatures_k: Sequence[float], config=None,
                           gate_offsets_v=GATE_OFFSETS_V, run=None) -> TemperatureCalibration:
    """Calibrate ``backend`` at each of three or more temperatures (K) with ``config``
    (a :class:`~labkit.calibrate.CalibrationConfig`, default quick), measure the cell
    law there, and return the :class:`TemperatureCalibration`. Bad temperatures (too
    few, repeated, outside the envelope) are a UsageError before anything is set."""
    from labkit.calibrate.calibration import calibrate
    from labkit.calibrate.config import CalibrationConfig

    temps = _temperatures(temperatures_k, backend, 3)
    cfg = config or CalibrationConfig.quick()
    cfg.validate()
    ctl, start = _control(backend), backend.temperature_k()
    cals = []
    try:
        for tk in temps:
            ctl.set_temperature_k(float(tk))
            cal = calibrate(backend, cfg, run=run)
            cal.report = dict(cal.report, temperature_k=float(backend.temperature_k() or tk))
            cals.append(cal)
    finally:
        if start is not None:
            ctl.set_temperature_k(float(start))
    law = measure_cell_law(backend, temps, gate_offsets_v)
    return TemperatureCalibration(temps, cals, law)


def fit_temperature_calibration(calibrations: Sequence[Calibration], law: CellLaw | None = None) -> TemperatureCalibration:
    """A :class:`TemperatureCalibration` from calibrations whose reports carry
    ``temperature_k`` (K), e.g. read from single-temperature files."""
    cals = list(calibrations)
    if not cals:
        raise UsageError("fit_temperature_calibration needs at least one calibration, got none")
    temps = []
    for c in cals:
        t = c.report.get("temperature_k")
        if not isinstance(t, (int, float)) or not np.isfinite(t):
            raise UsageError(f"calibration of {c.chip_id} has no temperature_k in its report; expected kelvin")
        temps.append(float(t))
    if len({c.chip_id for c in cals}) != 1:
        raise UsageError(f"calibrations of chips {sorted({c.chip_id for c in cals})}; expected one chip")
    order = np.argsort(temps)
    return TemperatureCalibration(np.asarray(temps)[order], [cals[i] for i in order], law)


def save_temperature_calibration(tc: TemperatureCalibration, path) -> Path:
    """Write ``tc`` (:data:`FORMAT`) to ``path`` (``.npz`` appended if missing), atomically."""
    path = npz_target(path, "calibration")
    arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT),
                                     "temperatures_k": np.asarray(tc.temperatures_k, dtype=float)}
    if tc.law is not None:
        arrays.update({"law/alpha": tc.law.alpha, "law/beta": tc.law.beta, "law/gamma": tc.law.gamma,
                       "law/reference_v": np.array(tc.law.reference_v)})
    with tempfile.TemporaryDirectory() as tmp:
        for k, cal in enumerate(tc.calibrations):
            one = save_calibration(cal, Path(tmp) / f"{k}.npz")
            with np.load(one, allow_pickle=False) as z:
                arrays.update({f"cal{k}/{name}": z[name] for name in z.files})
    return write_npz(path, arrays)


def read_temperature_calibration(path, chip_id: str | None = None) -> TemperatureCalibration:
    """Read a temperature calibration (no pickle; sizes, kinds and shapes checked before
    data is read), or an old single-temperature calibration file as a calibration at one
    temperature (its report's ``temperature_k``, else 300 K)."""
    path = Path(path)
    headers = npz_headers(path, "calibration file")
    fmt = ""
    head = headers.get("format")
    if head is not None and head[0] == () and head[1].kind == "U" and head[1].itemsize <= 1024:
        with np.load(path, allow_pickle=False) as z:
            fmt = str(z["format"])
    if fmt == SINGLE_FORMAT:
        cal = read_calibration(path, chip_id)
        t = cal.report.get("temperature_k", 300.0)
        return TemperatureCalibration(np.array([float(t)]), [cal], None)
    if fmt != FORMAT:
        raise FileFormatError(f"calibration file {path} has format {fmt!r}; expected {FORMAT!r} or {SINGLE_FORMAT!r}")

    def check(h):
        t = h.get("temperatures_k")
        if t is None or len(t[0]) != 1 or not 1 <= t[0][0] <= MAX_TEMPERATURES:
            raise FileFormatError(f"calibration file {path}: temperatures_k: shape {None if t is None else t[0]}; "
                                  f"expected 1 to {MAX_TEMPERATURES} temperatures")
        for name, (shape, _) in h.items():
            if name.startswith("law/") and (len(shape) > 2 or any(n > 1024 for n in shape)):
                raise FileFormatError(f"calibration file {path}: {name}: shape {shape}; expected (rows, cols) "
                                      "of at most 1024 each")
            if not (name in ("format", "temperatures_k") or name.startswith("law/")
                    or name.split("/", 1)[0] in {f"cal{k}" for k in range(t[0][0])}):
                raise FileFormatError(f"calibration file {path}: unexpected entry {name!r}")

    kinds = {k: "U" for k in headers if k == "format" or k.startswith("cal") and k.split("/", 1)[1] in (
        "format", "chip_id", "backend_uri", "store", "report_json", "run_uids", "model/format")}
    d = read_npz(path, "calibration file", max_bytes=MAX_BYTES, kinds=kinds, check=check)
    temps = np.asarray(d["temperatures_k"], dtype=float)
    if not np.all(np.isfinite(temps)) or np.any(temps <= 0) or np.any(np.diff(temps) <= 0):
        raise FileFormatError(f"calibration file {path}: temperatures_k {temps.tolist()}; expected ascending "
                              "finite temperatures > 0 K")
    cals = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(len(temps)):
            prefix = f"cal{k}/"
            part = {n[len(prefix):]: v for n, v in d.items() if n.startswith(prefix)}
            if not part:
                raise FileFormatError(f"calibration file {path}: no calibration {prefix}; expected one per temperature")
            one = Path(tmp) / f"{k}.npz"
            np.savez(one, **part)
            cals.append(read_calibration(one, chip_id))
    law = None
    if "law/alpha" in d:
        shape = np.shape(cals[0].model["currents_a"])[-2:]
        parts = [np.asarray(d.get(f"law/{k}"), dtype=float) for k in ("alpha", "beta", "gamma")]
        if any(p.shape != shape or not np.all(np.isfinite(p)) for p in parts) or "law/reference_v" not in d:
            raise FileFormatError(f"calibration file {path}: law/*: expected finite (rows, cols) = {shape} arrays "
                                  "and law/reference_v")
        law = CellLaw(*parts, float(d["law/reference_v"]))
    if len({c.chip_id for c in cals}) != 1:
        raise FileFormatError(f"calibration file {path} holds calibrations of several chips; expected one")
    return TemperatureCalibration(temps, cals, law)
