"""Calibration end to end: measure a chip, fit its three extractions, report how well they predict.

:func:`calibrate` measures the calibration set (:mod:`labkit.calibrate.calibration_set`)
into a store run, fits the naive, linear and model extractions
(:mod:`labkit.calibrate.fits`) and judges them on the same held-out patterns
(:mod:`labkit.calibrate.report`), so their SERs compare fairly. The result is a
:class:`~labkit.calibrate.file.Calibration` that records the run ids it came from.
Units: SI (seconds, amperes, coulombs) unless a name says otherwise.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from labkit.backend import SafeArray
from labkit.calibrate.calibration_set import CalibrationSet, measure_calibration_set
from labkit.calibrate.config import CalibrationConfig
from labkit.calibrate.file import Calibration
from labkit.calibrate.fits import fit_linear, fit_model, fit_naive, predict_mean_s
from labkit.calibrate.programmed import fit_chip, measure_programmed_states, state_model
from labkit.calibrate.report import programmed_report, ser_report
from labkit.measure import no_progress

__all__ = ["fit_calibration", "fit_programmed", "calibrate"]


def fit_calibration(cs: CalibrationSet, config: CalibrationConfig = CalibrationConfig()) -> Calibration:
    """The three extractions of a measured set and their SER report, as a Calibration."""
    t_start = time.perf_counter()
    naive, linear = fit_naive(cs), fit_linear(cs)
    model, info = fit_model(cs, config.fit_iterations, config.eta_per_cell)
    report = ser_report(cs, {"naive": naive.predict_s, "linear": linear.predict_s,
                             "model": lambda x: predict_mean_s(model, x)})
    report["fit"] = dataclasses.asdict(info)
    report["fit_duration_s"] = time.perf_counter() - t_start
    report["measure_duration_s"] = cs.duration_s
    report["config"] = dataclasses.asdict(config)
    return Calibration(chip_id=cs.chip_id, model=model.to_dict(), naive=naive, linear=linear, report=report,
                       backend_uri=cs.backend_uri, run_ids=list(cs.run_ids), run_uids=list(cs.run_uids),
                       store=cs.store)


def calibrate(backend: SafeArray, config: CalibrationConfig = CalibrationConfig(), run=None,
              progress=no_progress) -> Calibration:
    """Measure (into ``run``, if given) and fit; the SER report goes into the run's result."""
    config.validate()
    cs = measure_calibration_set(backend, config, run, progress)
    cal = fit_calibration(cs, config)
    cal.report["temperature_k"] = backend.temperature_k()
    # the cells' read currents at calibration time: with them a tile model moves each
    # column's ratio of fitted to read current into its readout gain (TileParams)
    cal.read_currents_a = np.mean([backend.read_currents() for _ in range(4)], axis=0)
    if config.programmed_states:
        fit_programmed(cal, measure_programmed_states(backend, config, run, progress), config)
    if run is not None:
        run.put_result({"calibration": cal.report})
        for key in ("currents_a", "eta_per_v", "crosstalk_c", "offset_s", "gain_s_per_c"):
            run.put_array(f"model_{key}", cal.model[key])
    return cal


def fit_programmed(cal: Calibration, states, config: CalibrationConfig) -> Calibration:
    """Fit the chip on its programmed ``states`` (cells at their read currents) and make
    it the calibration's model, at the currents of the last state (what the chip now
    holds). The report's headline becomes the SER on a programmed state held out of a
    first fit (activation-like inputs), the shipped-state figures stay as ``shipped``."""
    t_start = time.perf_counter()
    start = cal.array_model(quantize=False, clip=None)
    judge = states[-1:]
    if len(states) >= 2:  # fitted without the state it is judged on
        held, _, _ = fit_chip(start, states[:-1], config.fit_iterations)
        predict = state_model(held, judge[0].read_currents_a, quantize=False, clip=None)
    chip, l0, l1 = fit_chip(start, states, config.fit_iterations)
    final = state_model(chip, states[-1].read_currents_a)
    if len(states) < 2:
        predict = final
    cal.report = {**cal.report, **programmed_report(judge[0], predict, cal.report, len(states) >= 2)}
    cal.report["chip_fit"] = {"states": len(states), "loss_start": l0, "loss_end": l1,
                              "duration_s": time.perf_counter() - t_start}
    cal.model = final.to_dict()
    cal.read_currents_a = states[-1].read_currents_a
    return cal
