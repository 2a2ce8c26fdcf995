"""The test-board firmware emulator: a pure state machine, bytes in, bytes out.

:class:`BoardFirmware` speaks the device side of :mod:`drivers.protocol` over a raw
ArrayBackend (the EmulatedArray). Like a real board it enforces its own safety limits
and arm state, answers every error with a status code, and keeps the replies of recent
requests: a request repeated with the same sequence number (and the same bytes) gets
the cached reply again and is not executed again, so a programming pulse is never
applied twice by a host retry.

Time comes from an injected ``clock`` (s); faults (:mod:`simulator.faults`) are drawn
from a seeded generator. Transports (:mod:`simulator.serial_handler`,
:mod:`simulator.board_server`) move bytes; they call :meth:`feed`, then :meth:`poll`
for delayed replies, and close the link when :attr:`disconnected` turns true.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import zlib
from collections import OrderedDict
from typing import Callable

import numpy as np

from drivers import protocol as p
from labkit.backend import ArrayBackend, SafeArray, SafetyEnvelope, SafetyError

from .faults import FaultConfig, FaultInjector

FIRMWARE_VERSION = "labkit-emu-fw 1.0.0"
MAX_PAYLOAD = 8192
REPLAY_CACHE = 16  # replies kept for replay


class _Refusal(Exception):
    def __init__(self, status: p.Status, message: str):
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
    answered from the reply cache; ``faults.stats`` counts injected faults.
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
    ):
        self.array = array
        self.clock = clock
        self.faults = FaultInjector(FaultConfig.coerce(faults))
        self.max_payload = int(max_payload)
        self.board_serial = board_serial or f"EMU-{zlib.crc32(array.identity.chip_id.encode()):08X}"
        self.hard_limits = array.envelope
        self.limits = array.envelope
        self.lock = threading.RLock()  # transports serialise feed/poll through it
        self._guard = _BoardGuard(array, lambda: self.limits)
        self._decoder = p.FrameDecoder(2 * self.max_payload)
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._outbox: list[tuple[float, bytes]] = []
        self.program_pulses = 0
        self.erase_pulses = 0
        self.frames = 0
        self.crc_errors = 0
        self.replays = 0
        self.disconnected = False
        self._boot(boot_id)
        self._handlers = {
            p.Command.HELLO: self._hello,
            p.Command.PING: lambda data: bytes(data),
            p.Command.STATUS: self._status,
            p.Command.GET_CONFIG: lambda data: p.encode_settings(self.array.settings),
            p.Command.CONFIGURE: self._configure,
            p.Command.READ: self._read,
            p.Command.VMM: self._vmm,
            p.Command.PROGRAM: self._program,
            p.Command.ERASE: self._erase,
            p.Command.ARM: self._arm,
            p.Command.GET_LIMITS: lambda data: p.encode_limits(self.limits),
            p.Command.SET_LIMITS: self._set_limits,
            p.Command.TEMPERATURE: lambda data: p.encode_temperature(self.array.temperature_k()),
        }

    def _boot(self, boot_id: int | None) -> None:
        self.boot_time = self.clock()
        self.boot_id = random.Random(boot_id).getrandbits(32) if boot_id is None else boot_id
        self.armed = False
        self._cache.clear()
        self._outbox.clear()
        self._decoder.reset()

    # ------------------------------------------------------------ transport side

    def feed(self, data: bytes) -> bytes:
        """Bytes received from the host -> bytes to send back now."""
        with self.lock:
            if self.disconnected:
                return b""
            out = bytearray()
            for item in self._decoder.feed(self.faults.maybe_corrupt(bytes(data))):
                if self.disconnected:
                    break
                out += self._handle(item)
            return bytes(out)

    def poll(self) -> bytes:
        """Delayed replies whose time has come."""
        if not self._outbox:  # fast path without the lock (transports poll often)
            return b""
        with self.lock:
            now = self.clock()
            due = [b for t, b in self._outbox if t <= now]
            self._outbox = [(t, b) for t, b in self._outbox if t > now]
            return b"".join(due)

    def next_due(self) -> float | None:
        """Clock time of the next delayed reply, or None."""
        if not self._outbox:
            return None
        with self.lock:
            return min((t for t, _ in self._outbox), default=None)

    def reset_link(self) -> None:
        """A new connection (re-plugged cable): drop partial input and re-enable the link."""
        with self.lock:
            self._decoder.reset()
            self._outbox.clear()
            self.disconnected = False

    def reboot(self, boot_id: int | None = None) -> None:
        """Power cycle: disarm, forget the reply cache, new boot id (counters are kept)."""
        with self.lock:
            self._boot(boot_id)

    # ------------------------------------------------------------------ frames

    def _handle(self, item: p.Frame | p.FrameError) -> bytes:
        if isinstance(item, p.FrameError):
            self.crc_errors += 1
            if item.seq is None or item.reason not in ("crc", "length"):
                return b""  # nothing trustworthy to answer to
            status = p.Status.BAD_CRC if item.reason == "crc" else p.Status.BAD_FRAME
            return self._emit(p.error_reply(item.seq, item.command, status, f"{item.reason} error"))
        if item.reply:
            return b""  # a reply is not for the board
        self.frames += 1
        cfg = self.faults.config
        if cfg.disconnect_after and self.frames > cfg.disconnect_after:
            self.disconnected = True
            return b""
        if self.faults.happens("drop_request"):
            return b""
        seq, cmd = item.seq, item.command
        if item.version != p.PROTOCOL_VERSION:
            return self._emit(
                p.error_reply(seq, cmd, p.Status.BAD_VERSION, f"version {item.version}; board speaks {p.PROTOCOL_VERSION}")
            )
        if self.faults.happens("busy"):
            return self._emit(p.error_reply(seq, cmd, p.Status.BUSY, "busy"))
        key = (seq, cmd, zlib.crc32(item.payload), len(item.payload))
        if key in self._cache:
            self.replays += 1
            self._cache.move_to_end(key)
            return self._emit(self._cache[key])
        if self.faults.happens("hw_fault"):
            return self._emit(p.error_reply(seq, cmd, p.Status.HARDWARE_FAULT, "injected hardware fault"))
        wire = self._execute(item)
        self._cache[key] = wire
        while len(self._cache) > REPLAY_CACHE:
            self._cache.popitem(last=False)
        return self._emit(wire)

    def _execute(self, frame: p.Frame) -> bytes:
        seq, cmd = frame.seq, frame.command
        handler = self._handlers.get(cmd)
        if handler is None:
            return p.error_reply(seq, cmd, p.Status.UNKNOWN_COMMAND, f"unknown command 0x{cmd:02x}")
        try:
            payload = handler(frame.payload)
        except _Refusal as exc:
            return p.error_reply(seq, cmd, exc.status, str(exc))
        except SafetyError as exc:
            return p.error_reply(seq, cmd, p.Status.OUT_OF_RANGE, str(exc))
        except ValueError as exc:  # PayloadError included
            return p.error_reply(seq, cmd, p.Status.BAD_ARGUMENT, str(exc))
        except Exception as exc:  # the chip side failed: report, never crash
            return p.error_reply(seq, cmd, p.Status.HARDWARE_FAULT, f"{type(exc).__name__}: {exc}")
        if len(payload) > self.max_payload:
            return p.error_reply(seq, cmd, p.Status.BAD_ARGUMENT, f"reply of {len(payload)} bytes exceeds {self.max_payload}")
        return p.reply(seq, cmd, payload)

    def _emit(self, wire: bytes) -> bytes:
        if self.faults.happens("drop"):
            return b""
        wire = self.faults.maybe_corrupt(wire)
        delay = self.faults.reply_delay()
        if delay > 0:
            self._outbox.append((self.clock() + delay, wire))
            return b""
        return wire

    # ---------------------------------------------------------------- commands

    def info(self) -> p.BoardInfo:
        caps = p.Capability.READ | p.Capability.VMM | p.Capability.PROGRAM | p.Capability.ERASE
        if self.array.temperature_k() is not None:
            caps |= p.Capability.TEMPERATURE
        return p.BoardInfo(
            protocol_version=p.PROTOCOL_VERSION,
            firmware=FIRMWARE_VERSION,
            board_serial=self.board_serial,
            chip_id=self.array.identity.chip_id,
            capabilities=caps,
            max_payload=self.max_payload,
            geometry=self.array.geometry,
            datasheet=self.array.datasheet,
            boot_id=self.boot_id,
        )

    def status(self) -> p.BoardStatus:
        return p.BoardStatus(
            armed=self.armed,
            boot_id=self.boot_id,
            program_pulses=self.program_pulses,
            erase_pulses=self.erase_pulses,
            frames=self.frames,
            crc_errors=self.crc_errors,
            uptime_s=self.clock() - self.boot_time,
        )

    def _hello(self, data: bytes) -> bytes:
        return p.encode_hello_reply(self.info())

    def _status(self, data: bytes) -> bytes:
        return p.encode_status_reply(self.status())

    def _configure(self, data: bytes) -> bytes:
        self._guard.configure(p.decode_settings(data))
        return p.encode_settings(self.array.settings)

    def _read(self, data: bytes) -> bytes:
        cells = p.decode_cells(data)
        if not len(cells):
            return p.encode_currents([])
        return p.encode_currents(self._guard.read_currents(cells))

    def _vmm(self, data: bytes) -> bytes:
        ticks = p.decode_vmm_request(data)
        g, s = self.array.geometry, self.array.settings
        if ticks.shape[1] != g.rows:
            raise ValueError(f"VMM vectors of {ticks.shape[1]} inputs; the array has {g.rows} rows")
        if 3 + 2 * g.cols * len(ticks) > self.max_payload:
            raise ValueError(f"VMM batch of {len(ticks)} vectors does not fit a reply of {self.max_payload} bytes")
        if ticks.size and int(ticks.max()) > 2**s.input_bits:
            raise SafetyError(f"input tick {int(ticks.max())} exceeds 2**input_bits = {2**s.input_bits}")
        if not len(ticks):
            return p.encode_vmm_reply(np.zeros((0, g.cols), np.uint16))
        times = self._guard.vmm(p.ticks_to_widths(ticks, s))
        return p.encode_vmm_reply(p.times_to_counts(times, s))

    def _require_armed(self, what: str) -> None:
        if not self.armed:
            raise _Refusal(p.Status.NOT_ARMED, f"{what} refused: high voltage not armed")

    def _program(self, data: bytes) -> bytes:
        cells, v, w = p.decode_program_request(data)
        self._require_armed("programming")
        if len(cells):
            self._guard.program_pulses(cells, v, w)  # validates all before applying any
        self.program_pulses += len(cells)
        return p.encode_applied(len(cells), self.program_pulses)

    def _erase(self, data: bytes) -> bytes:
        rows, v, w = p.decode_erase_request(data)
        self._require_armed("erase")
        if len(rows):
            self._guard.erase_rows(rows, v, w)
        self.erase_pulses += len(rows)
        return p.encode_applied(len(rows), self.erase_pulses)

    def _arm(self, data: bytes) -> bytes:
        self.armed = p.decode_flag(data)
        return p.encode_flag(self.armed)

    def _set_limits(self, data: bytes) -> bytes:
        wanted = p.decode_limits(data)
        if not np.all(np.isfinite(np.frombuffer(data, "<f8"))):
            raise ValueError("limits must be finite numbers")
        self.limits = self.hard_limits.tightened(**{f.name: getattr(wanted, f.name) for f in dataclasses.fields(wanted)})
        return p.encode_limits(self.limits)
