"""The virtual bench: one emulated chip behind a test board and three instruments, all
served on loopback sockets, described by a station file.

``VirtualBench(seed=3)`` starts

- the board firmware emulator on ``socket://127.0.0.1:PORT`` (:mod:`simulator.board_server`),
- a Keithley 2400, a Keysight InfiniiVision and a Lake Shore 336 as SCPI socket servers
  (``TCPIP::127.0.0.1::PORT::SOCKET``, :mod:`simulator.instruments`),

all over ONE :class:`~simulator.emulated.EmulatedArray`, so a cell programmed through the
board reads back through the SMU, and the scope sees the bit lines of the VMMs the board
runs. Once everything listens it writes the station file (``station_out``), so that
``labkit.open_backend("station:FILE")`` drives it with the silicon drivers, unchanged.

The wiring emulated is the one :mod:`drivers.silicon` documents: the SMU sits on the
board's read path, which stays on the cell the board read last; scope channels probe
fixed bit lines and trigger on the board's integration start.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

import yaml

from .board_server import BoardServer
from .emulated import EmulatedArray, chip_from_options
from .faults import FaultConfig
from .firmware import BoardFirmware
from .instruments import (
    THERMAL_TIME_CONSTANT_S,
    InfiniiVisionEmulator,
    Keithley2400Emulator,
    LakeShore336Emulator,
    Wiring,
)
from .scpi_server import ScpiServer

DEFAULT_SCOPE_COLUMNS = {1: 0, 2: 1, 3: 14, 4: 15}
THERMAL_ENV = "LABKIT_SIM_THERMAL_TAU_S"
MODELS = {"smu": "keithley2400", "scope": "infiniivision", "tempctl": "lakeshore336"}


class BenchArray:
    """The chip as wired on the bench: every access serialised by one lock; a cell read
    latches the read path (where the SMU sits); a VMM fires the scope's trigger."""

    def __init__(self, array: EmulatedArray, wiring: Wiring):
        self.array, self.wiring = array, wiring
        self.lock = threading.RLock()
        self.triggers: list = []  # callables(widths_s of the first vector)
        self.clocks: list = []  # callables() that bring time-dependent state (temperature) up to now

    def _tick(self) -> None:
        for tick in self.clocks:
            tick()

    def __getattr__(self, name):  # geometry, identity, datasheet, envelope, chip
        return getattr(self.array, name)

    @property
    def settings(self):
        return self.array.settings

    def configure(self, settings) -> None:
        with self.lock:
            self.array.configure(settings)

    def read_currents(self, cells: np.ndarray) -> np.ndarray:
        self._tick()
        with self.lock:
            out = self.array.read_currents(cells)
            if len(cells):
                self.wiring.smu_cell = (int(cells[-1][0]), int(cells[-1][1]))
            return out

    def route_smu(self, cell: tuple[int, int] | None) -> None:
        """The board's ROUTE command: ``cell`` onto the SMU test port (None: open)."""
        with self.lock:
            self.wiring.smu_cell = cell

    def program_pulses(self, cells, voltage_v, width_s) -> None:
        with self.lock:
            self.array.program_pulses(cells, voltage_v, width_s)

    def erase_rows(self, rows, voltage_v, width_s) -> None:
        with self.lock:
            self.array.erase_rows(rows, voltage_v, width_s)

    def vmm(self, widths_s: np.ndarray) -> np.ndarray:
        self._tick()
        if len(widths_s):  # outside the chip lock: a trigger takes the scope's lock first
            for fire in self.triggers:
                fire(np.asarray(widths_s[0], dtype=float))
        with self.lock:
            return self.array.vmm(widths_s)

    def temperature_k(self) -> float:
        self._tick()
        with self.lock:
            return self.array.temperature_k()

    def set_temperature_k(self, kelvin: float) -> None:
        with self.lock:
            self.array.set_temperature_k(kelvin)

    def id_vg(self, cell, gate_v, compliance_a):
        with self.lock:
            return self.array.id_vg(cell, gate_v, compliance_a)

    def capture_bitline(self, widths_s, col):
        with self.lock:
            return self.array.capture_bitline(widths_s, col)

    def advance_time_s(self, seconds: float) -> None:
        with self.lock:
            self.array.advance_time_s(seconds)

    def provenance(self) -> dict:
        return self.array.provenance()

    def close(self) -> None:
        pass


def wire_instruments(chip: BenchArray, wiring: Wiring, roles=("smu", "scope", "tempctl"),
                     thermal_time_constant_s: float = 20.0) -> dict:
    """The emulated instruments ``roles`` coupled to ``chip`` as on the bench: the SMU on
    the routed cell, the scope triggered by each VMM, the temperature controller's loop
    advanced with the chip's time (``thermal_time_constant_s``, s). Role -> emulator."""
    makers = {"smu": lambda: Keithley2400Emulator(chip, wiring), "scope": lambda: InfiniiVisionEmulator(chip, wiring),
              "tempctl": lambda: LakeShore336Emulator(chip, time_constant_s=thermal_time_constant_s)}
    devices = {role: makers[role]() for role in roles}
    if "scope" in devices:
        chip.triggers.append(devices["scope"].trigger)
    if "tempctl" in devices:
        chip.clocks.append(devices["tempctl"].advance)
    return devices


class VirtualBench:
    """A running virtual bench (context manager). ``chip`` is the hidden truth (tests).

    ``chip_options`` are ``sim://`` query options (``preset``, ``noise``, ...);
    ``faults`` are board fault options (:class:`simulator.faults.FaultConfig`);
    ``baud`` paces the board link like a UART; ``limits`` and ``board_timeout_s`` (the
    host's base deadline per board command) go into the station file;
    ``thermal_time_constant_s`` is the temperature controller's loop time constant
    (default: ``$LABKIT_SIM_THERMAL_TAU_S`` or a realistic 20 s; tests use a short one,
    also for ``labkit sim serve``, which reads the variable).
    """

    def __init__(self, seed: int = 0, *, faults=None, baud: float | None = None,
                 chip_options: dict | None = None, station_out: str | os.PathLike | None = None,
                 scope_columns: dict[int, int] | None = None, limits: dict | None = None,
                 instruments=("smu", "scope", "tempctl"), name: str | None = None,
                 board_timeout_s: float | None = None,
                 thermal_time_constant_s: float | None = None):
        unknown = set(instruments) - set(MODELS)
        if unknown:
            raise ValueError(f"unknown instrument(s) {sorted(unknown)}; expected some of {sorted(MODELS)}")
        self.seed = int(seed)
        self.faults = FaultConfig.coerce(faults)
        self.fault_options = {k: v for k, v in _fault_dict(faults).items()}
        self.baud = baud
        self.board_timeout_s = board_timeout_s
        if thermal_time_constant_s is None:
            thermal_time_constant_s = float(os.environ.get(THERMAL_ENV, THERMAL_TIME_CONSTANT_S))
        self.thermal_time_constant_s = float(thermal_time_constant_s)
        opts = {"seed": str(self.seed)}
        opts.update({k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in (chip_options or {}).items()})
        self.array = EmulatedArray(chip_from_options(opts), uri="virtual-bench")
        self.wiring = Wiring(scope_columns=dict(scope_columns or DEFAULT_SCOPE_COLUMNS))
        self.bench_array = BenchArray(self.array, self.wiring)
        self.firmware = BoardFirmware(self.bench_array, faults=self.faults)
        self.instrument_roles = tuple(instruments)
        self.limits = dict(limits or {})
        self.name = name or f"virtual-bench-seed{self.seed}"
        self.station_out = Path(station_out) if station_out is not None else None
        self.station_text = ""
        self.board_server: BoardServer | None = None
        self.servers: dict[str, ScpiServer] = {}
        self.devices: dict = {}
        self._wrote_station = False

    @property
    def chip(self):
        """The emulated chip (hidden truth: tests only)."""
        return self.array.chip

    def start(self) -> "VirtualBench":
        try:
            self.devices.update(wire_instruments(self.bench_array, self.wiring, self.instrument_roles,
                                                 self.thermal_time_constant_s))
            for role, device in self.devices.items():
                self.servers[role] = ScpiServer(device)
            self.board_server = BoardServer(self.firmware, baud=self.baud).start()
            self.station_text = self._station_text()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def board_url(self) -> str:
        return self.board_server.url

    def station(self) -> dict:
        """The station description (what the station file holds, see drivers.station)."""
        board = {"url": self.board_url}
        if self.baud:
            board["baud"] = int(self.baud)
        if self.board_timeout_s:
            board["timeout_s"] = float(self.board_timeout_s)
        doc = {"name": self.name, "board": board, "instruments": {}}
        for role, server in self.servers.items():
            entry = {"model": MODELS[role], "address": server.resource}
            if role == "scope":
                entry["columns"] = dict(self.wiring.scope_columns)
            doc["instruments"][role] = entry
        if self.limits:
            doc["limits"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.limits.items()}
        if self.fault_options:
            doc["faults"] = dict(self.fault_options)  # provenance: what this bench injects
        return doc

    def _station_text(self) -> str:
        text = yaml.safe_dump(self.station(), sort_keys=False)
        if self.station_out is not None:
            _write_atomically(self.station_out, text)
            self._wrote_station = True
        return text

    def write_station(self, path: str | os.PathLike) -> str:
        """Write (another copy of) the station file; returns its path."""
        _write_atomically(Path(path), yaml.safe_dump(self.station(), sort_keys=False))
        return str(path)

    def stop(self) -> None:
        """Stop every server and remove the station file this bench wrote."""
        if self.board_server is not None:
            self.board_server.stop()
            self.board_server = None
        for server in self.servers.values():
            server.stop()
        self.servers = {}
        if self._wrote_station and self.station_out is not None:
            try:
                if self.station_out.read_text(encoding="utf-8") == self.station_text:
                    self.station_out.unlink()
            except OSError:
                pass
            self._wrote_station = False

    def __enter__(self) -> "VirtualBench":
        return self.start() if self.board_server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _write_atomically(path: Path, text: str) -> None:
    """A reader polling for the file sees nothing or all of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _fault_dict(faults) -> dict:
    if faults is None:
        return {}
    if isinstance(faults, FaultConfig):
        default = FaultConfig()
        return {k: getattr(faults, k) for k in FaultConfig.keys() if getattr(faults, k) != getattr(default, k)}
    return {str(k): _number(v) for k, v in dict(faults).items()}


def _number(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() else f
