"""The ArrayBackend contract: the physical primitives every 16x16 array offers.

Silicon (``drivers.silicon.SiliconBackend``) and the emulated chip
(``simulator.emulated.EmulatedArray``) both implement :class:`ArrayBackend`. Users never
hold a raw backend: :func:`open_backend` wraps it in :class:`SafeArray`, the one choke
point where every request is validated against shapes and the :class:`SafetyEnvelope`
before anything reaches the chip.

All values are SI (amperes, volts, seconds, kelvin). Cells are ``(N, 2)`` integer arrays
of ``(row, column)``. Output of a VMM is the comparator crossing time of every column,
in seconds, on the TDC grid: a larger dot product gives an earlier crossing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from labkit.errors import SafetyError


@dataclass(frozen=True)
class Geometry:
    """Array size and the dual-branch pairing of columns: ``pairs[k] = (plus, minus)``."""

    rows: int = 16
    cols: int = 16
    pairs: tuple[tuple[int, int], ...] = tuple((2 * k, 2 * k + 1) for k in range(8))

    @property
    def signed_outputs(self) -> int:
        return len(self.pairs)


@dataclass(frozen=True)
class Identity:
    """Who is on the other end: chip, board firmware, instruments (name -> *IDN?)."""

    chip_id: str
    firmware: str
    backend: str
    board_serial: str = ""
    instruments: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Datasheet:
    """Nominal (design) values of the array; the real chip deviates from them."""

    precharge_v: float = 0.9  # bit-line precharge V_D0
    threshold_v: float = 0.5  # comparator threshold
    bitline_capacitance_f: float = 0.5e-12
    reference_current_a: float = 0.2e-6  # readout discharge current
    cell_current_range_a: tuple[float, float] = (1e-9, 1e-6)  # programmable window
    erased_current_a: float = 1e-6

    @property
    def full_scale_charge_c(self) -> float:
        """Charge that moves a bit line from precharge to threshold (C)."""
        return self.bitline_capacitance_f * (self.precharge_v - self.threshold_v)


@dataclass(frozen=True)
class SafetyEnvelope:
    """Hard limits; a request outside them is a :class:`SafetyError` before any action."""

    max_program_voltage_v: float = 6.5
    max_erase_voltage_v: float = 14.0
    program_width_range_s: tuple[float, float] = (10e-9, 1e-3)
    erase_width_range_s: tuple[float, float] = (1e-6, 0.1)
    read_voltage_range_v: tuple[float, float] = (0.0, 2.5)
    integration_time_range_s: tuple[float, float] = (0.1e-6, 10e-6)
    max_compliance_a: float = 10e-6
    temperature_range_k: tuple[float, float] = (233.15, 398.15)  # -40 to 125 degC
    max_sweep_points: int = 10_000  # gate-sweep points per call
    max_time_advance_s: float = 3.2e9  # one virtual-clock step (about 100 years)

    def tightened(self, **limits) -> "SafetyEnvelope":
        """A copy with some limits lowered (a station file may only tighten)."""
        new = dataclasses.replace(self, **limits)
        for f in dataclasses.fields(self):
            old, val = getattr(self, f.name), getattr(new, f.name)
            if isinstance(old, tuple):
                loose = val[0] < old[0] or val[1] > old[1]
            else:
                loose = val > old
            if loose:
                raise SafetyError(f"limit {f.name}={val} is looser than the chip's {old}")
        return new


@dataclass(frozen=True)
class VmmSettings:
    """Operating point of a VMM and of cell reads."""

    integration_time_s: float = 1e-6  # T: pulse widths are d_i = x_i * T
    read_voltage_v: float = 1.8  # word-line high level (also the read gate voltage)
    input_bits: int = 8  # input pulse-width quantization (clock = T / 2**bits)
    tdc_bits: int = 10
    tdc_lsb_s: float = 1.25e-9

    @property
    def tdc_full_scale_s(self) -> float:
        return self.tdc_lsb_s * (2**self.tdc_bits - 1)


@runtime_checkable
class ArrayBackend(Protocol):
    """Physical primitives of one array. Implementations need not validate input:
    :class:`SafeArray` does that once for all of them."""

    geometry: Geometry
    identity: Identity
    datasheet: Datasheet
    envelope: SafetyEnvelope

    @property
    def settings(self) -> VmmSettings: ...

    def configure(self, settings: VmmSettings) -> None:
        """Apply a new operating point."""

    def read_currents(self, cells: np.ndarray) -> np.ndarray:
        """Drain current (A) of each ``(row, col)`` cell at the configured read voltage."""

    def program_pulses(self, cells: np.ndarray, voltage_v: np.ndarray, width_s: np.ndarray) -> None:
        """One programming pulse per listed cell, in order (lowers its current).

        Not idempotent: must never be repeated by a retry."""

    def erase_rows(self, rows: np.ndarray, voltage_v: float, width_s: float) -> None:
        """One Fowler-Nordheim erase pulse on each listed row (raises currents)."""

    def vmm(self, widths_s: np.ndarray) -> np.ndarray:
        """A batch of VMMs: pulse widths ``(B, rows)`` in s -> crossing times ``(B, cols)`` in s."""

    def temperature_k(self) -> float | None:
        """Chip temperature (K), or None where it cannot be measured."""

    def provenance(self) -> dict:
        """What this backend adds to a run's provenance (JSON values; e.g. the station
        file's text). SafeArray.provenance adds identity, settings and limits."""

    def close(self) -> None: ...


# Optional capabilities: a backend has them when it implements the protocol. Each has a
# validating guard in labkit.backend.guards, which SafeArray.capability hands out.


@runtime_checkable
class TemperatureControl(Protocol):
    """Regulate the chip's temperature (K) and return when it is there."""

    def set_temperature_k(self, kelvin: float) -> None: ...


@runtime_checkable
class VirtualClock(Protocol):
    """Let time pass (s) without waiting for it (emulated chips)."""

    def advance_time_s(self, seconds: float) -> None: ...


@runtime_checkable
class GateSweep(Protocol):
    """Id-Vg of single cells through a source-measure path."""

    def id_vg(self, cell: tuple[int, int], gate_v: np.ndarray, compliance_a: float) -> np.ndarray: ...


@runtime_checkable
class WaveformCapture(Protocol):
    """Bit-line voltage waveform of one column during one VMM (times s, volts)."""

    def capture_bitline(self, widths_s: np.ndarray, col: int) -> tuple[np.ndarray, np.ndarray]: ...
