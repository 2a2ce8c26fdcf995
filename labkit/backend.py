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

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable, Iterator, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from .units import si


class BackendError(RuntimeError):
    """The backend could not do what was asked (link, instrument or chip fault)."""


class SafetyError(ValueError):
    """A request outside the SafetyEnvelope; nothing was applied."""


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

    def close(self) -> None: ...


# Optional capabilities: a backend has them when it implements the protocol.


@runtime_checkable
class TemperatureControl(Protocol):
    def set_temperature_k(self, kelvin: float) -> None: ...


@runtime_checkable
class VirtualClock(Protocol):
    def advance_time_s(self, seconds: float) -> None: ...


@runtime_checkable
class GateSweep(Protocol):
    """Id-Vg of single cells through a source-measure path."""

    def id_vg(self, cell: tuple[int, int], gate_v: np.ndarray, compliance_a: float) -> np.ndarray: ...


@runtime_checkable
class WaveformCapture(Protocol):
    """Bit-line voltage waveform of one column during one VMM (times s, volts)."""

    def capture_bitline(self, widths_s: np.ndarray, col: int) -> tuple[np.ndarray, np.ndarray]: ...


def _finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        bad = a[~np.isfinite(a)].ravel()[0]
        raise ValueError(f"{name} contains {bad}; expected finite values")


class SafeArray:
    """The validated face of a backend: every call is checked here, once, for all backends.

    Bad shapes, NaN, unknown cells or values outside the SafetyEnvelope raise
    ``ValueError`` (or :class:`SafetyError`) naming the value, and nothing is applied.
    """

    def __init__(self, inner: ArrayBackend):
        self.inner = inner

    # identity and geometry pass through
    geometry = property(lambda self: self.inner.geometry)
    identity = property(lambda self: self.inner.identity)
    datasheet = property(lambda self: self.inner.datasheet)
    envelope = property(lambda self: self.inner.envelope)
    settings = property(lambda self: self.inner.settings)

    def capability(self, protocol: type) -> object | None:
        """The backend as ``protocol`` (e.g. TemperatureControl), or None if it lacks it."""
        return self.inner if isinstance(self.inner, protocol) else None

    def configure(self, settings: VmmSettings | None = None, **changes) -> VmmSettings:
        """Change the operating point; keyword values may be pint Quantities."""
        units = {"integration_time_s": "s", "read_voltage_v": "V", "tdc_lsb_s": "s"}
        base = settings or self.inner.settings
        try:
            new = dataclasses.replace(
                base, **{k: si(v, units[k], k) if k in units else v for k, v in changes.items()}
            )
        except TypeError as exc:
            raise ValueError(f"unknown setting in {sorted(changes)}: {exc}") from None
        env = self.envelope
        _in_range("integration_time_s", new.integration_time_s, env.integration_time_range_s, "s")
        _in_range("read_voltage_v", new.read_voltage_v, env.read_voltage_range_v, "V")
        for name, lo, hi in (("input_bits", 1, 12), ("tdc_bits", 4, 16)):
            value = getattr(new, name)
            if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                raise ValueError(f"{name}={value!r}; expected an integer in [{lo}, {hi}]")
        if not new.tdc_lsb_s > 0:
            raise ValueError(f"tdc_lsb_s={new.tdc_lsb_s}; expected > 0 s")
        self.inner.configure(new)
        return new

    def cells(self, cells=None) -> np.ndarray:
        """Validated ``(N, 2)`` int array; ``None`` means every cell in row-major order."""
        g = self.geometry
        if cells is None:
            r, c = np.divmod(np.arange(g.rows * g.cols), g.cols)
            return np.stack([r, c], axis=1)
        a = np.asarray(cells)
        if a.ndim == 1 and a.shape == (2,):
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"cells has shape {a.shape}; expected (N, 2) of (row, col)")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise ValueError(f"cells must be integers, got {a.ravel()[:4]}")
            a = a.astype(int)
        bad = (a[:, 0] < 0) | (a[:, 0] >= g.rows) | (a[:, 1] < 0) | (a[:, 1] >= g.cols)
        if np.any(bad):
            raise ValueError(
                f"unknown cell {tuple(a[bad][0].tolist())}; expected row in [0, {g.rows}) and col in [0, {g.cols})"
            )
        return a.astype(np.int64)

    def read_currents(self, cells=None) -> np.ndarray:
        """Cell currents (A): ``(rows, cols)`` for all cells, ``(N,)`` for a list."""
        a = self.cells(cells)
        out = np.asarray(self.inner.read_currents(a), dtype=float)
        return out.reshape(self.geometry.rows, self.geometry.cols) if cells is None else out

    def program_pulses(self, cells, voltage_v, width_s) -> None:
        """One programming pulse per cell (voltages and widths broadcast over cells)."""
        a = self.cells(cells)
        v = np.broadcast_to(np.asarray(si(voltage_v, "V", "voltage_v"), dtype=float), (len(a),))
        w = np.broadcast_to(np.asarray(si(width_s, "s", "width_s"), dtype=float), (len(a),))
        env = self.envelope
        _finite("voltage_v", v)
        _finite("width_s", w)
        _all_in_range("program voltage_v", v, (0.0, env.max_program_voltage_v), "V")
        _all_in_range("program width_s", w, env.program_width_range_s, "s")
        if len(a):
            self.inner.program_pulses(a, v.copy(), w.copy())

    def erase_rows(self, rows, voltage_v, width_s) -> None:
        """One erase pulse on each listed row."""
        r = np.atleast_1d(np.asarray(rows))
        if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
            raise ValueError(f"rows={rows!r}; expected a list of integer row indices")
        if np.any((r < 0) | (r >= self.geometry.rows)):
            raise ValueError(f"unknown row in {r.tolist()}; expected [0, {self.geometry.rows})")
        v = float(si(voltage_v, "V", "voltage_v"))
        w = float(si(width_s, "s", "width_s"))
        _in_range("erase voltage_v", v, (0.0, self.envelope.max_erase_voltage_v), "V")
        _in_range("erase width_s", w, self.envelope.erase_width_range_s, "s")
        if r.size:
            self.inner.erase_rows(r.astype(np.int64), v, w)

    def vmm(self, widths_s) -> np.ndarray:
        """Crossing times (s), ``(B, cols)``, for pulse widths ``(B, rows)`` in s (or ``(rows,)``)."""
        w = np.asarray(si(widths_s, "s", "widths_s"), dtype=float)
        single = w.ndim == 1
        w2 = w[None, :] if single else w
        if w2.ndim != 2 or w2.shape[1] != self.geometry.rows:
            raise ValueError(f"widths_s has shape {w.shape}; expected (B, {self.geometry.rows})")
        _finite("widths_s", w2)
        _all_in_range("pulse width", w2, (0.0, self.settings.integration_time_s), "s")
        out = np.asarray(self.inner.vmm(np.ascontiguousarray(w2)), dtype=float)
        return out[0] if single else out

    def vmm_x(self, x) -> np.ndarray:
        """VMM from normalized inputs ``x`` in [0, 1] (pulse width = x * T)."""
        x = np.asarray(x, dtype=float)
        _finite("x", x)
        _all_in_range("input x", x, (0.0, 1.0), "")
        return self.vmm(x * self.settings.integration_time_s)

    def temperature_k(self) -> float | None:
        return self.inner.temperature_k()

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> "SafeArray":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _in_range(name: str, value: float, rng: tuple[float, float], unit: str) -> None:
    if not (math.isfinite(value) and rng[0] <= value <= rng[1]):
        raise SafetyError(f"{name}={value:g} {unit} is outside the allowed [{rng[0]:g}, {rng[1]:g}] {unit}")


def _all_in_range(name: str, values: np.ndarray, rng: tuple[float, float], unit: str) -> None:
    bad = (values < rng[0]) | (values > rng[1])
    if np.any(bad):
        _in_range(name, float(values[bad].ravel()[0]), rng, unit)


# ---------------------------------------------------------------- opening backends

Opener = Callable[[str, dict[str, str]], ArrayBackend]
_schemes: dict[str, Opener] = {}


def register_scheme(scheme: str, opener: Opener) -> None:
    """Make ``scheme:`` URIs open with ``opener(uri, options)`` (options from the query)."""
    _schemes[scheme] = opener


def schemes() -> dict[str, Opener]:
    """Every known URI scheme: registered ones plus the ``labkit.backends`` entry points."""
    found = {ep.name: ep for ep in entry_points(group="labkit.backends")}
    return {**{k: (lambda ep=ep: ep.load()) for k, ep in found.items()}, **{k: (lambda o=o: o) for k, o in _schemes.items()}}


def parse_uri(uri: str) -> tuple[str, dict[str, str]]:
    """Split ``scheme://...?a=1&b=2`` or ``scheme:PATH`` into scheme and query options."""
    if not isinstance(uri, str) or ":" not in uri:
        raise ValueError(f"backend URI {uri!r}; expected e.g. 'sim://' or 'station:bench.yaml'")
    parts = urlsplit(uri)
    try:
        opts = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError:
        raise ValueError(f"backend URI {uri!r} has a malformed query {parts.query!r}") from None
    return parts.scheme, opts


@contextlib.contextmanager
def open_backend(uri: str) -> Iterator[SafeArray]:
    """Open the backend named by ``uri`` (``sim://?seed=3``, ``station:bench.yaml``)."""
    scheme, opts = parse_uri(uri)
    known = schemes()
    if scheme not in known:
        raise ValueError(f"unknown backend scheme {scheme!r} in {uri!r}; known: {sorted(known)}")
    opener = known[scheme]()
    with SafeArray(opener(uri, opts)) as backend:
        yield backend
