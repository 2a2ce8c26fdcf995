"""Validating guards for the optional capabilities: what SafeArray.capability hands out.

Each guard checks its request against the shapes and the SafetyEnvelope, then calls the
backend with plain SI values. A capability protocol with no guard here is never handed
out (``TypeError``), so nothing reaches a chip around the envelope.
"""

from __future__ import annotations

import numpy as np

from labkit.backend.contract import GateSweep, TemperatureControl, VirtualClock, WaveformCapture
from labkit.errors import SafetyError, UsageError
from labkit.units import si
from labkit.validate import all_in_range, finite, in_range

GUARDS: dict[type, type] = {}


def guards(protocol: type):
    """Class decorator: the decorated class guards ``protocol``."""
    def register(cls: type) -> type:
        GUARDS[protocol] = cls
        return cls
    return register


def guard_for(safe, protocol: type):
    """The guard of ``protocol`` in front of ``safe``'s backend."""
    try:
        cls = GUARDS[protocol]
    except KeyError:
        raise TypeError(f"capability {protocol.__name__} has no safety guard in labkit.backend.guards") from None
    return cls(safe)


class _Guard:
    def __init__(self, safe):
        self._safe = safe
        self._inner = safe.inner

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._safe.identity.chip_id}>"


@guards(TemperatureControl)
class TemperatureGuard(_Guard):
    def set_temperature_k(self, kelvin) -> None:
        """Regulate the chip at ``kelvin`` (K), within ``envelope.temperature_range_k``."""
        k = float(si(kelvin, "K", "kelvin"))
        in_range("temperature", k, self._safe.envelope.temperature_range_k, "K")
        self._inner.set_temperature_k(k)


@guards(VirtualClock)
class ClockGuard(_Guard):
    def advance_time_s(self, seconds) -> None:
        """Let ``seconds`` (s, >= 0, at most ``envelope.max_time_advance_s``) pass."""
        s = float(si(seconds, "s", "seconds"))
        in_range("virtual clock step", s, (0.0, self._safe.envelope.max_time_advance_s), "s")
        self._inner.advance_time_s(s)


@guards(GateSweep)
class GateSweepGuard(_Guard):
    def id_vg(self, cell, gate_v, compliance_a) -> np.ndarray:
        """Drain current (A) of one ``(row, col)`` cell at each gate voltage (V), clipped
        at ``compliance_a`` (A); voltages within the envelope's read range."""
        cells = self._safe.cells(cell)
        if len(cells) != 1:
            raise UsageError(f"cell {cell!r}; expected one (row, col)")
        v = np.atleast_1d(np.asarray(si(gate_v, "V", "gate_v"), dtype=float))
        env = self._safe.envelope
        if v.ndim != 1 or not 0 < v.size <= env.max_sweep_points:
            raise UsageError(f"gate_v has shape {v.shape}; expected 1 to {env.max_sweep_points} voltages")
        finite("gate_v", v)
        all_in_range("gate voltage", v, env.read_voltage_range_v, "V")
        comp = float(si(compliance_a, "A", "compliance_a"))
        if not 0 < comp <= env.max_compliance_a:
            raise SafetyError(f"compliance_a={comp:g} A is outside the allowed (0, {env.max_compliance_a:g}] A")
        r, c = (int(k) for k in cells[0])
        return np.asarray(self._inner.id_vg((r, c), v.copy(), comp), dtype=float)


@guards(WaveformCapture)
class WaveformGuard(_Guard):
    def capture_bitline(self, widths_s, col) -> tuple[np.ndarray, np.ndarray]:
        """Bit-line voltage (V) of column ``col`` against time (s) during one VMM with
        pulse widths ``widths_s`` (s, one per row, within [0, T])."""
        w = self._safe.widths(widths_s, rows_only=True)
        cols = self._safe.geometry.cols
        if isinstance(col, bool) or not isinstance(col, (int, np.integer)) or not 0 <= col < cols:
            raise UsageError(f"col={col!r}; expected an integer column in [0, {cols})")
        return self._inner.capture_bitline(w, int(col))
