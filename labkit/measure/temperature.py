"""Temperature dependence of the cell currents (needs a TemperatureControl capability).

Temperatures in K, currents in A. Table ``temperature`` (``set_k``, ``measured_k``,
``cell_current_a`` (rows, cols)).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from labkit.backend import SafeArray, TemperatureControl
from labkit.errors import UsageError
from labkit.measure.currents import cell_current_map
from labkit.measure.progress import Progress, no_progress
from labkit.units import si

__all__ = ["TemperatureSweep", "temperature_sweep"]


@dataclass
class TemperatureSweep:
    """Current maps ``currents_a`` (K, rows, cols) at set temperatures (K).

    ``log_slope_per_k`` (rows, cols): d ln(I) / dT (1/K), a straight-line fit."""

    set_k: np.ndarray
    measured_k: np.ndarray
    currents_a: np.ndarray
    log_slope_per_k: np.ndarray


def temperature_sweep(backend: SafeArray, temperatures_k: Sequence[float], averages: int = 2,
                      tolerance_k: float = 0.5, settle_timeout_s: float = 600.0, poll_s: float = 1.0,
                      run=None, progress: Progress = no_progress) -> TemperatureSweep:
    """Current map at each temperature (needs a TemperatureControl; the starting
    temperature is restored afterwards). Waits until the chip reads within
    ``tolerance_k`` of each set point (at most ``settle_timeout_s``). Table ``temperature``."""
    ctl = backend.capability(TemperatureControl)
    if ctl is None:
        raise UsageError(f"backend {backend.identity.backend!r} has no temperature controller")
    temps = np.asarray([float(si(t, "K", "temperature")) for t in np.atleast_1d(temperatures_k)])
    if len(temps) < 2 or not np.all(np.isfinite(temps)) or temps.min() <= 0:
        raise UsageError(f"temperatures {temps.tolist()} K; expected >= 2 finite temperatures > 0 K")
    start = backend.temperature_k()
    measured, maps = [], []
    try:
        with progress("temperature sweep", len(temps)) as bar:
            for tk in temps:
                ctl.set_temperature_k(float(tk))
                now = _settle(backend, float(tk), tolerance_k, settle_timeout_s, poll_s)
                i = cell_current_map(backend, averages=averages, name="")
                measured.append(now)
                maps.append(i)
                if run is not None:
                    run.add_points("temperature", set_k=[tk], measured_k=[now], cell_current_a=i[None])
                bar.advance(1)
    finally:
        if start is not None:
            with contextlib.suppress(Exception):
                ctl.set_temperature_k(float(start))
    cur = np.array(maps)
    logs = np.log(np.maximum(cur, 1e-15)).reshape(len(temps), -1)
    slope = np.polyfit(temps, logs, 1)[0].reshape(cur.shape[1:])
    return TemperatureSweep(temps, np.array(measured, dtype=float), cur, slope)


def _settle(backend: SafeArray, target: float, tol: float, timeout: float, poll: float) -> float:
    t_end = time.monotonic() + timeout
    while True:
        now = backend.temperature_k()
        if now is None or abs(now - target) <= tol:
            return math.nan if now is None else float(now)
        if time.monotonic() > t_end:
            raise TimeoutError(f"chip temperature {now:.2f} K did not reach {target:.2f} K within {timeout:g} s")
        time.sleep(poll)
