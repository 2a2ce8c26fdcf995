"""Calibration: measure a chip, fit its hardware-aware model, report how well it predicts.

Three extractions of the same measured data (naive, linear, model; docs/physics.md,
section 3) are compared on the same held-out patterns with the same output convention
``y = t(x=0) - t(x)`` (s), so their SERs compare fairly. Modules, by job:
:mod:`~labkit.calibrate.config` (:class:`CalibrationConfig`),
:mod:`~labkit.calibrate.calibration_set` (the measured data, measured or read from the
store), :mod:`~labkit.calibrate.fits` (the three fits; L-BFGS for the model),
:mod:`~labkit.calibrate.report` (the SER report), :mod:`~labkit.calibrate.calibration`
(end to end: :func:`calibrate`) and :mod:`~labkit.calibrate.file` (the calibration file).
"""

from labkit.calibrate.calibration import calibrate, fit_calibration
from labkit.calibrate.calibration_set import CalibrationSet, load_calibration_set, measure_calibration_set
from labkit.calibrate.config import METHODS, CalibrationConfig
from labkit.calibrate.file import (FORMAT, Calibration, CalibrationMismatch, LinearFit, load_calibration,
                                   load_calibrations, read_calibration, save_calibration)
from labkit.calibrate.fits import ETA_START_PER_V, FitInfo, fit_linear, fit_model, fit_naive, predict_mean_s
from labkit.calibrate.report import ser_report

__all__ = [
    "METHODS", "CalibrationConfig", "CalibrationSet", "Calibration", "LinearFit", "FitInfo", "ETA_START_PER_V",
    "measure_calibration_set", "load_calibration_set",
    "fit_naive", "fit_linear", "fit_model", "predict_mean_s", "ser_report", "fit_calibration",
    "calibrate", "FORMAT", "load_calibration", "load_calibrations", "read_calibration", "save_calibration",
    "CalibrationMismatch",
]
