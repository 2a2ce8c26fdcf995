"""The test-board firmware emulator: a pure state machine, bytes in, bytes out.

:class:`BoardFirmware` implements the board side of ``docs/board-protocol.md`` over a
raw ArrayBackend (the EmulatedArray), with its own codec (:mod:`simulator.wire`, no
code shared with the host driver). Like a real board it enforces its own safety
limits and arm state, answers every error with a status code, keeps the replies of
recent requests (a request repeated with the same sequence number, command and payload
gets the cached reply again and is not executed again, so a programming pulse is never
applied twice by a host retry), and disarms the high voltage by itself once
``arm_timeout_s`` passes without a valid frame from the host.

Time comes from an injected ``clock`` (s); faults (:mod:`simulator.faults`) are drawn
from a seeded generator. Transports (:mod:`simulator.serial_handler`,
:mod:`simulator.board_server`) move bytes; they call :meth:`feed`, then :meth:`poll`
for delayed replies (which also runs the arm watchdog), and close the link when
:attr:`disconnected` turns true.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
import zlib
from struct import error as struct_error
from collections import OrderedDict
from typing import Callable

import numpy as np

from labkit.backend import ArrayBackend, SafeArray, SafetyEnvelope, SafetyError, VmmSettings

from . import wire as w
from .faults import FaultConfig, FaultInjector

FIRMWARE_VERSION = "labkit-emu-fw 1.1.0"
MAX_PAYLOAD = 8192
REPLAY_CACHE = 16  # replies kept for replay
ARM_TIMEOUT_S = 1.0  # the high voltage drops after this long without a valid frame


class _Refusal(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _BoardGuard(SafeArray):
    """The board's own validation: SafeArray's checks against the board's limits."""

    def __init__(self, inner: ArrayBackend, limits: Callable[[], SafetyEnvelope]):
        super().__init__(inner)
        self._limits = limits

    envelope = property(lambda self: self._limits())


class BoardFirmware:
    """Device side of the board protocol over ``array`` (a raw ArrayBackend).

    ``program_pulses`` / ``erase_pulses`` count the pulses actually applied to the chip
    (the proof, in tests, that a retry never pulses twice); ``replays`` counts requests
    answered from the reply cache; ``watchdog_disarms`` counts arm time-outs;
    ``faults.stats`` counts injected faults. ``wire`` is the codec (a subclass of
    :class:`simulator.wire.Wire` makes a deliberately wrong board for tests).
    """

    def __init__(
        self,
        array: ArrayBackend,
        *,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultConfig | dict | None = None,
        board_serial: str | None = None,
        max_payload: int = MAX_PAYLOAD,
        boot_id: int | None = None,
        arm_timeout_s: float = ARM_TIMEOUT_S,
        wire: w.Wire | None = None,
    ):
        if not (math.isfinite(arm_timeout_s) and 0 < arm_timeout_s < 4e6):
            raise ValueError(f"arm_timeout_s={arm_timeout_s!r}; expected seconds in (0, 4e6)")
        self.array = array
        self.clock = clock
        self.wire = wire or w.Wire()
        self.faults = FaultInjector(FaultConfig.coerce(faults))
        self.max_payload = int(max_payload)
        self.arm_timeout_s = float(arm_timeout_s)
        self.board_serial = board_serial or f"EMU-{zlib.crc32(array.identity.chip_id.encode()):08X}"
        self.hard_limits = array.envelope
        self.limits = array.envelope
        self.lock = threading.RLock()  # transports serialise feed/poll through it
        self._guard = _BoardGuard(array, lambda: self.limits)
        self._splitter = w.StreamSplitter(2 * (self.max_payload + 11) + 2)
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._outbox: list[tuple[float, bytes]] = []
        self.program_pulses = 0
        self.erase_pulses = 0
        self.frames = 0
        self.crc_errors = 0
        self.replays = 0
        self.watchdog_disarms = 0
        self.routed: tuple[int, int] | None = None
        self.disconnected = False
        self._boot(boot_id)
        self._handlers = {
            w.HELLO: self._hello,
            w.PING: lambda data: bytes(data),
            w.STATUS: self._status,
            w.GET_CONFIG: lambda data: self._settings(self.array.settings),
            w.CONFIGURE: self._configure,
            w.RESET: self._reset,
            w.READ: self._read,
            w.VMM: self._vmm,
            w.ROUTE: self._route,
            w.PROGRAM: self._program,
            w.ERASE: self._erase,
            w.ARM: self._arm,
            w.GET_LIMITS: lambda data: self._limits(self.limits),
            w.SET_LIMITS: self._set_limits,
            w.TEMPERATURE: self._temperature,
        }

    def _boot(self, boot_id: int | None) -> None:
        self.boot_time = self.clock()
        self.last_frame_time = self.boot_time
        old = getattr(self, "boot_id", None)
        self.boot_id = random.getrandbits(32) if boot_id is None else boot_id
        while boot_id is None and self.boot_id == old:
            self.boot_id = random.getrandbits(32)
        self.armed = False
        self.routed = None
        self._reboot_pending = False
        self._cache.clear()
        self._outbox.clear()
        self._splitter.reset()

    # ------------------------------------------------------------ transport side

    def feed(self, data: bytes) -> bytes:
        """Bytes received from the host -> bytes to send back now."""
        with self.lock:
            self.watchdog()
            if self.disconnected:
                return b""
            out = bytearray()
            for chunk in self._splitter.feed(self.faults.maybe_corrupt(bytes(data))):
                if self.disconnected:
                    break
                out += self._handle(chunk)
            return bytes(out)

    def poll(self) -> bytes:
        """Delayed replies whose time has come (and the arm watchdog)."""
        if self.armed:
            with self.lock:
                self.watchdog()
        if not self._outbox:  # fast path without the lock (transports poll often)
            return b""
        with self.lock:
            now = self.clock()
            due = [b for t, b in self._outbox if t <= now]
            self._outbox = [(t, b) for t, b in self._outbox if t > now]
            return b"".join(due)

    def watchdog(self) -> bool:
        """Disarm if armed and no valid frame came for ``arm_timeout_s``; True if it did."""
        with self.lock:
            if self.armed and self.clock() - self.last_frame_time >= self.arm_timeout_s:
                self.armed = False
                self.watchdog_disarms += 1
                return True
            return False

    def next_due(self) -> float | None:
        """Clock time of the next delayed reply, or None."""
        if not self._outbox:
            return None
        with self.lock:
            return min((t for t, _ in self._outbox), default=None)

    def reset_link(self) -> None:
        """A new connection (re-plugged cable): drop partial input and re-enable the link."""
        with self.lock:
            self._splitter.reset()
            self._outbox.clear()
            self.disconnected = False

    def reboot(self, boot_id: int | None = None) -> None:
        """Power cycle: disarm, forget the reply cache, new boot id (counters are kept)."""
        with self.lock:
            self._boot(boot_id)

    # ------------------------------------------------------------------ frames

    def _handle(self, chunk: bytes | None) -> bytes:
        wire = self.wire
        item = w.Garbled(None) if chunk is None else wire.parse(chunk)
        if isinstance(item, w.Garbled):
            self.crc_errors += 1
            if item.status is None:
                return b""  # nothing trustworthy to answer to
            what = "crc" if item.status == w.BAD_CRC else "length"
            return self._emit(wire.error(item.seq, item.command, item.status, f"{what} error"))
        if item.is_reply:
            return b""  # a reply is not for the board
        self.frames += 1
        self.last_frame_time = self.clock()
        cfg = self.faults.config
        if cfg.disconnect_after and self.frames > cfg.disconnect_after:
            self.disconnected = True
            return b""
        if self.faults.happens("drop_request"):
            return b""
        seq, cmd = item.seq, item.command
        if item.version != w.VERSION:
            return self._emit(wire.error(seq, cmd, w.BAD_VERSION, f"version {item.version}; board speaks {w.VERSION}"))
        if self.faults.happens("busy"):
            return self._emit(wire.error(seq, cmd, w.BUSY, "busy"))
        key = (seq, cmd, item.crc, len(item.payload))
        if key in self._cache:
            self.replays += 1
            self._cache.move_to_end(key)
            return self._emit(self._cache[key])
        if self.faults.happens("hw_fault"):
            return self._emit(wire.error(seq, cmd, w.HARDWARE_FAULT, "injected hardware fault"))
        reply = self._execute(item)
        self._cache[key] = reply
        while len(self._cache) > REPLAY_CACHE:
            self._cache.popitem(last=False)
        out = self._emit(reply)
        if self._reboot_pending:
            self._boot(None)
        return out

    def _execute(self, frame: w.Request) -> bytes:
        seq, cmd, wire = frame.seq, frame.command, self.wire
        handler = self._handlers.get(cmd)
        if handler is None:
            return wire.error(seq, cmd, w.UNKNOWN_COMMAND, f"unknown command 0x{cmd:02x}")
        try:
            payload = handler(frame.payload)
        except _Refusal as exc:
            return wire.error(seq, cmd, exc.status, str(exc))
        except SafetyError as exc:
            return wire.error(seq, cmd, w.OUT_OF_RANGE, str(exc))
        except (ValueError, struct_error) as exc:  # Malformed included
            return wire.error(seq, cmd, w.BAD_ARGUMENT, str(exc))
        except Exception as exc:  # the chip side failed: report, never crash
            return wire.error(seq, cmd, w.HARDWARE_FAULT, f"{type(exc).__name__}: {exc}")
        if len(payload) > self.max_payload:
            return wire.error(seq, cmd, w.BAD_ARGUMENT, f"reply of {len(payload)} bytes exceeds {self.max_payload}")
        return wire.reply(seq, cmd, w.OK, payload)

    def _emit(self, reply: bytes) -> bytes:
        if self.faults.happens("drop"):
            return b""
        reply = self.faults.maybe_corrupt(reply)
        delay = self.faults.reply_delay()
        if delay > 0:
            self._outbox.append((self.clock() + delay, reply))
            return b""
        return reply

    # ---------------------------------------------------------------- commands

    @property
    def capabilities(self) -> int:
        caps = w.CAP_READ | w.CAP_VMM | w.CAP_PROGRAM | w.CAP_ERASE | w.CAP_RESET | w.CAP_ROUTE
        if self.array.temperature_k() is not None:
            caps |= w.CAP_TEMPERATURE
        return caps

    def _hello(self, data: bytes) -> bytes:
        wire, g, d = self.wire, self.array.geometry, self.array.datasheet
        head = wire.pack("BIIHBBB", w.VERSION, self.boot_id, self.capabilities, self.max_payload,
                         g.rows, g.cols, len(g.pairs))
        pairs = bytes(v for pair in g.pairs for v in pair)
        texts = wire.text(FIRMWARE_VERSION) + wire.text(self.board_serial) + wire.text(self.array.identity.chip_id)
        sheet = wire.pack("7d", d.precharge_v, d.threshold_v, d.bitline_capacitance_f, d.reference_current_a,
                          *d.cell_current_range_a, d.erased_current_a)
        return head + pairs + texts + sheet + wire.pack("I", round(self.arm_timeout_s * 1000))

    def _status(self, data: bytes) -> bytes:
        m = 0xFFFFFFFF
        return self.wire.pack("BIIIIId", int(self.armed), self.boot_id & m, self.program_pulses & m,
                              self.erase_pulses & m, self.frames & m, self.crc_errors & m,
                              self.clock() - self.boot_time)

    def _settings(self, s: VmmSettings) -> bytes:
        return self.wire.pack("ddBBd", s.integration_time_s, s.read_voltage_v, s.input_bits, s.tdc_bits, s.tdc_lsb_s)

    def _configure(self, data: bytes) -> bytes:
        t, v, ib, tb, lsb = self.wire.exact(data, "ddBBd", "CONFIGURE")
        if not (1 <= ib <= 15 and 1 <= tb <= 16):
            raise w.Malformed(f"input_bits={ib}, tdc_bits={tb}; expected 1..15 and 1..16")
        if not (math.isfinite(lsb) and lsb > 0):
            raise w.Malformed(f"tdc_lsb_s={lsb!r}; expected a finite number > 0")
        self._guard.configure(VmmSettings(integration_time_s=t, read_voltage_v=v, input_bits=ib, tdc_bits=tb,
                                          tdc_lsb_s=lsb))
        return self._settings(self.array.settings)

    def _reset(self, data: bytes) -> bytes:
        if data:
            raise w.Malformed("RESET takes no payload")
        self._reboot_pending = True
        return b""

    def _cells(self, data: bytes) -> np.ndarray:
        (n,), at = self.wire.counted(data, "H", 2, "READ")
        return np.frombuffer(data, np.uint8, 2 * n, at).reshape(n, 2).astype(np.int64)

    def _read(self, data: bytes) -> bytes:
        cells = self._cells(data)
        if 2 + 8 * len(cells) > self.max_payload:
            raise w.Malformed(f"READ of {len(cells)} cells does not fit a reply of {self.max_payload} bytes")
        currents = self._guard.read_currents(cells) if len(cells) else np.zeros(0)
        return self.wire.pack("H", len(cells)) + np.asarray(currents, self.wire.ORDER + "f8").tobytes()

    def _vmm(self, data: bytes) -> bytes:
        wire = self.wire
        if len(data) < 3:
            raise w.Malformed("VMM payload shorter than its header")
        b, n = wire.unpack("HB", data)
        if len(data) != 3 + 2 * b * n:
            raise w.Malformed(f"VMM payload of {len(data)} bytes; B x rows says {3 + 2 * b * n}")
        g, s = self.array.geometry, self.array.settings
        if n != g.rows:
            raise w.Malformed(f"VMM vectors of {n} inputs; the array has {g.rows} rows")
        if 3 + 2 * g.cols * b > self.max_payload:
            raise w.Malformed(f"VMM batch of {b} vectors does not fit a reply of {self.max_payload} bytes")
        ticks = np.frombuffer(data, wire.ORDER + "u2", b * n, 3).reshape(b, n)
        if ticks.size and int(ticks.max()) > 2**s.input_bits:
            raise SafetyError(f"input tick {int(ticks.max())} exceeds 2**input_bits = {2**s.input_bits}")
        counts = np.zeros((b, g.cols), np.uint16)
        if b:
            clock = s.integration_time_s / 2**s.input_bits
            times = self._guard.vmm(ticks.astype(float) * clock)
            c = np.rint(np.nan_to_num(np.asarray(times, float) / s.tdc_lsb_s, nan=0xFFFF))
            counts = np.clip(c, 0, 0xFFFF).astype(np.uint16)
        return wire.pack("HB", b, g.cols) + counts.astype(wire.ORDER + "u2").tobytes()

    def _route(self, data: bytes) -> bytes:
        row, col = self.wire.exact(data, "BB", "ROUTE")
        g = self.array.geometry
        cell = None if (row, col) == (255, 255) else (row, col)
        if cell is not None and not (row < g.rows and col < g.cols):
            raise w.Malformed(f"cell ({row}, {col}) outside the {g.rows} x {g.cols} array")
        route = getattr(self.array, "route_smu", None)  # the bench wiring, where there is one
        if route is not None:
            route(cell)
        self.routed = cell
        return bytes([row, col])

    def _require_armed(self, what: str) -> None:
        if not self.armed:
            raise _Refusal(w.NOT_ARMED, f"{what} refused: high voltage not armed")

    def _applied(self, n: int, total: int) -> bytes:
        return self.wire.pack("HI", n, total & 0xFFFFFFFF)

    def _program(self, data: bytes) -> bytes:
        (n,), at = self.wire.counted(data, "H", 18, "PROGRAM")
        rec = np.frombuffer(data, np.dtype([("row", "u1"), ("col", "u1"), ("v", self.wire.ORDER + "f8"),
                                            ("w", self.wire.ORDER + "f8")]), n, at)
        self._require_armed("programming")
        if n:
            cells = np.stack([rec["row"], rec["col"]], axis=1).astype(np.int64)
            self._guard.program_pulses(cells, rec["v"].astype(float), rec["w"].astype(float))  # all checked first
        self.program_pulses += n
        return self._applied(n, self.program_pulses)

    def _erase(self, data: bytes) -> bytes:
        (v, width, n), at = self.wire.counted(data, "ddH", 1, "ERASE")
        rows = np.frombuffer(data, np.uint8, n, at).astype(np.int64)
        self._require_armed("erase")
        if n:
            self._guard.erase_rows(rows, v, width)
        self.erase_pulses += n
        return self._applied(n, self.erase_pulses)

    def _arm(self, data: bytes) -> bytes:
        (flag,) = self.wire.exact(data, "B", "ARM")
        if flag > 1:
            raise w.Malformed(f"ARM flag {flag}; expected 0 or 1")
        self.armed = bool(flag)
        return bytes([int(self.armed)])

    def _limits(self, e: SafetyEnvelope) -> bytes:
        return self.wire.pack("11d", e.max_program_voltage_v, e.max_erase_voltage_v, *e.program_width_range_s,
                              *e.erase_width_range_s, *e.read_voltage_range_v, *e.integration_time_range_s,
                              e.max_compliance_a)

    def _set_limits(self, data: bytes) -> bytes:
        v = self.wire.exact(data, "11d", "SET_LIMITS")
        if not all(math.isfinite(x) for x in v):
            raise w.Malformed("limits must be finite numbers")
        wanted = SafetyEnvelope(v[0], v[1], (v[2], v[3]), (v[4], v[5]), (v[6], v[7]), (v[8], v[9]), v[10])
        for f in dataclasses.fields(wanted):
            val = getattr(wanted, f.name)
            if isinstance(val, tuple) and val[0] > val[1]:
                raise SafetyError(f"limit {f.name}={val}: lower end above the upper end")
        self.limits = self.hard_limits.tightened(**{f.name: getattr(wanted, f.name) for f in dataclasses.fields(wanted)})
        return self._limits(self.limits)

    def _temperature(self, data: bytes) -> bytes:
        k = self.array.temperature_k()
        return self.wire.pack("d", math.nan if k is None else float(k))

