"""SiliconBackend: the test board and the bench instruments composed into an ArrayBackend.

``labkit.open_backend("station:bench.yaml")`` reads the station file
(:mod:`drivers.station`), opens the board (:class:`drivers.board.TestBoard`, any
pyserial URL) and the instruments it names (pyvisa, pure-Python backend) and returns
this backend behind ``SafeArray``. The same code runs against a real bench and against
the virtual bench of ``labkit sim serve`` (loopback sockets).

Optional capabilities exist only when their instrument does: with a source-measure unit
the backend is a ``GateSweep``, with an oscilloscope a ``WaveformCapture``, with a
temperature controller a ``TemperatureControl``. Each combination is its own composed
class (``SiliconBackend(board, smu=...)`` picks it), so ``isinstance`` checks and
``SafeArray.capability`` tell the truth.

Bench wiring assumed (and emulated by the virtual bench):

- the SMU sits on the board's analog test port: for an Id-Vg sweep the backend routes
  the cell there with the board's ROUTE command (on a board without that capability it
  reads the cell, whose row/column decoders then stay latched), then the SMU forces
  the gate voltage and measures the drain current;
- each scope channel probes the bit line named in the station file
  (``instruments.scope.columns``); the board's integration-start output drives the
  scope's external trigger;
- the temperature controller's input A sits on the chip socket, output 1 heats it.
"""

from __future__ import annotations

import functools
import signal
import threading
import weakref
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from labkit.backend import Identity, SafetyEnvelope, VmmSettings

from .board import TestBoard
from .protocol import Capability
from .scope import KeysightInfiniiVision
from .smu import Keithley2400
from .station import Station, load_station
from .tempctl import LakeShore336

DRIVERS = {
    "keithley2400": Keithley2400,
    "infiniivision": KeysightInfiniiVision,
    "lakeshore336": LakeShore336,
    "lakeshore335": LakeShore336,
}
SCOPE_POINTS = 1000  # points fetched per captured waveform
DISARM_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))

_open_boards: "weakref.WeakSet[TestBoard]" = weakref.WeakSet()
_installed: dict[int, object] = {}  # signal -> the handler it had before ours


def _disarm_on_signal(signum, frame) -> None:
    """SIGTERM/SIGHUP: send every open board a disarm frame, then leave through
    SystemExit so that ``finally`` blocks and ``close()`` disarm properly too."""
    for board in list(_open_boards):
        board.emergency_disarm()
    raise SystemExit(128 + signum)


def _guard_signals(board: TestBoard) -> None:
    """Install the disarming handler (main thread only, never over a handler of the user's)."""
    _open_boards.add(board)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in DISARM_SIGNALS:
        if sig not in _installed and signal.getsignal(sig) in (signal.SIG_DFL, None):
            _installed[sig] = signal.signal(sig, _disarm_on_signal)


def _release_signals(board: TestBoard) -> None:
    _open_boards.discard(board)
    if _open_boards or threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_installed.items()):
        if signal.getsignal(sig) is _disarm_on_signal:
            signal.signal(sig, previous)
        del _installed[sig]


class SiliconBackend:
    """Raw ArrayBackend over a :class:`TestBoard` and optional instruments (SI units).

    Programming and erase arm the board's high voltage for the pulses only; opening the
    board disarmed it and checked its state (``board_status``: the STATUS read then),
    ``close()`` disarms, and while a backend is open SIGTERM and SIGHUP disarm before
    the process exits. ``envelope`` is the board's limits tightened by the station's;
    the board is told to enforce it too. ``station`` is the station description (text
    included) for provenance.
    """

    def __new__(cls, board, smu=None, scope=None, tempctl=None, **kw):
        if cls is SiliconBackend:
            cls = _composed(smu is not None, scope is not None, tempctl is not None)
        return super().__new__(cls)

    def __init__(self, board: TestBoard, smu: Keithley2400 | None = None, scope: KeysightInfiniiVision | None = None,
                 tempctl: LakeShore336 | None = None, *, limits: dict | None = None,
                 scope_columns: dict[int, int] | None = None, uri: str = "station:",
                 station: Station | None = None):
        self.board, self.smu, self.scope, self.tempctl = board, smu, scope, tempctl
        self.station = station
        self.board_status = board.disarm()  # whatever an earlier (killed?) session left armed
        _guard_signals(board)
        info = board.info
        self.geometry = info.geometry
        self.datasheet = info.datasheet
        envelope = board.limits()
        if limits:
            envelope = board.set_limits(envelope.tightened(**limits))
        self.envelope: SafetyEnvelope = envelope
        self.scope_columns = dict(scope_columns or {})
        instruments = {}
        for role, inst in (("smu", smu), ("scope", scope), ("tempctl", tempctl)):
            if inst is not None:
                instruments[role] = inst.idn
        if smu is not None:
            smu.max_compliance_a = envelope.max_compliance_a
        self.identity = Identity(chip_id=info.chip_id, firmware=info.firmware, backend=uri,
                                 board_serial=info.board_serial, instruments=instruments)

    # -- operating point
    @property
    def settings(self) -> VmmSettings:
        return self.board.settings

    def configure(self, settings: VmmSettings) -> None:
        self.board.configure(settings)

    # -- primitives
    def read_currents(self, cells: np.ndarray) -> np.ndarray:
        return self.board.read_currents(cells)

    def program_pulses(self, cells: np.ndarray, voltage_v: np.ndarray, width_s: np.ndarray) -> None:
        self.board.arm(True)
        try:
            self.board.program_pulses(cells, voltage_v, width_s)
        finally:
            self.board.arm(False)

    def erase_rows(self, rows: np.ndarray, voltage_v: float, width_s: float) -> None:
        self.board.arm(True)
        try:
            self.board.erase_rows(rows, voltage_v, width_s)
        finally:
            self.board.arm(False)

    def vmm(self, widths_s: np.ndarray) -> np.ndarray:
        return self.board.vmm(widths_s)

    def temperature_k(self) -> float | None:
        return self.board.temperature_k()

    def close(self) -> None:
        try:
            self.board.close()  # disarms first
        finally:
            _release_signals(self.board)
            for inst in (self.smu, self.scope, self.tempctl):
                if inst is not None:
                    inst.close()

    def provenance(self) -> dict:
        """The station file as read (path and text)."""
        if self.station is None:
            return {}
        return {"station_file": {"path": str(Path(self.station.path).resolve()), "text": self.station.text}}


class _GateSweepPath:
    """GateSweep through the source-measure unit on the board's read path."""

    def id_vg(self, cell, gate_v, compliance_a) -> np.ndarray:
        """Drain current (A) of ``cell`` at each gate voltage (V); the SMU clips at
        ``compliance_a`` (A), which may not exceed the envelope's ``max_compliance_a``."""
        if self.board.has(Capability.ROUTE):
            self.board.route(tuple(cell))
        else:
            self.board.read_currents(np.array([cell]))  # latches the read path on the cell
        return self.smu.sweep(gate_v, compliance_a)


class _ScopeCapture:
    """WaveformCapture through the oscilloscope probing chosen bit lines."""

    def capture_bitline(self, widths_s, col: int) -> tuple[np.ndarray, np.ndarray]:
        """Bit-line voltage (V) of column ``col`` against time (s) from the start of one
        VMM with input pulse widths ``widths_s`` (s, one per row)."""
        channels = {column: ch for ch, column in self.scope_columns.items()}
        if isinstance(col, bool) or not isinstance(col, (int, np.integer)) or int(col) not in channels:
            raise ValueError(f"col={col!r} is not probed by the scope; probed columns: {sorted(channels)}")
        w, s = widths_s, self.settings
        ch = channels[int(col)]
        v0 = self.datasheet.precharge_v
        self.scope.arm_single(ch, window_s=s.integration_time_s + s.tdc_full_scale_s,
                              volts_per_div=max(0.05, 1.25 * v0 / 8), offset_v=v0 / 2)
        self.board.vmm(w[None, :])  # the board's integration start triggers the scope
        return self.scope.fetch(ch, points=SCOPE_POINTS)


class _ThermalControl:
    """TemperatureControl through the temperature controller on the chip socket."""

    settle_tolerance_k = 0.1
    settle_timeout_s = 900.0

    def set_temperature_k(self, kelvin) -> None:
        """Regulate the chip at ``kelvin`` (K) and wait until it is there."""
        self.tempctl.regulate(kelvin)
        self.tempctl.wait_stable(self.settle_tolerance_k, self.settle_timeout_s, poll_s=0.5)

    def temperature_k(self) -> float | None:
        return self.tempctl.temperature_k


@functools.lru_cache(maxsize=None)
def _composed(gate_sweep: bool, waveform: bool, thermal: bool) -> type:
    mixins = tuple(m for m, on in ((_GateSweepPath, gate_sweep), (_ScopeCapture, waveform),
                                   (_ThermalControl, thermal)) if on)
    if not mixins:
        return SiliconBackend
    name = "SiliconBackend[" + ",".join(m.__name__.strip("_") for m in mixins) + "]"
    return type(name, mixins + (SiliconBackend,), {"__module__": __name__})


# ---------------------------------------------------------------- opening


def open_station(uri: str, opts: dict[str, str]) -> SiliconBackend:
    """Opener of the ``station`` scheme: ``station:PATH.yaml`` (no query options)."""
    path = urlsplit(uri).path
    if not path:
        raise ValueError(f"backend URI {uri!r}; expected station:PATH to a station file")
    if opts:
        raise ValueError(f"unknown station option(s) {sorted(opts)} in {uri!r}; a station URI takes none")
    return open_station_file(path, uri=uri)


def open_station_file(path: str, uri: str | None = None) -> SiliconBackend:
    """Open everything a station file names; on any failure nothing stays open."""
    station = load_station(path)
    opened = []
    try:
        board_kw = {}
        if station.board_baud:
            board_kw["baudrate"] = station.board_baud
        if station.board_timeout_s:
            board_kw["timeout"] = station.board_timeout_s
        board = TestBoard(station.board_url, **board_kw)
        opened.append(board)
        inst = {}
        for role, spec in station.instruments.items():
            driver = DRIVERS[spec.model](spec.address, timeout_s=spec.timeout_s, name=f"{role} ({spec.model})",
                                         read_termination=spec.read_termination,
                                         write_termination=spec.write_termination)
            opened.append(driver)
            driver.errors()  # drain what an earlier session left behind
            inst[role] = driver
        if "smu" in inst:
            inst["smu"].output = False  # a safe start whatever the last session did
        scope_columns = station.instruments["scope"].columns if "scope" in station.instruments else None
        return SiliconBackend(board, inst.get("smu"), inst.get("scope"), inst.get("tempctl"),
                              limits=station.limits, scope_columns=scope_columns,
                              uri=uri or f"station:{path}", station=station)
    except BaseException:
        for thing in reversed(opened):
            try:
                thing.close()
            except Exception:
                pass
        raise
