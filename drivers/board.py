"""TestBoard: the host driver of the chip test board, over any pyserial URL.

``TestBoard("/dev/ttyACM0")``, ``TestBoard("socket://127.0.0.1:5025")`` (the virtual
bench) and ``TestBoard("labkitemu://?seed=3")`` (the in-process firmware emulator) take
one code path: ``serial.serial_for_url``. One method per protocol command, in SI units.

Reliability rules:

- every command has a deadline: ``timeout`` plus twice the wire time of request and
  reply at ``baudrate`` plus twice the time the board needs (pulse widths, VMM windows);
- a lost, garbled, BUSY or BAD_CRC answer makes the host send the identical frame again
  (same sequence number, up to ``retries`` times). Idempotent commands are simply
  repeated. A PROGRAM or ERASE frame is only ever re-sent under its one sequence number:
  the board answers a repeated sequence number from its reply cache without pulsing
  again, and before such a re-send the host checks (STATUS) that the board has not
  restarted and lost that cache. A pulse is therefore applied at most once;
- after ``retries`` failures: a ping, a resynchronisation (flush, lone delimiter), then a
  :class:`~drivers.protocol.LinkError` that says what happened, never a hang;
- VMM batches are split to the board's ``max_payload`` and pipelined (``window`` frames
  in flight) so that both directions of the link stay busy.

Safety rules: opening a board disarms its high voltage (whatever an earlier, perhaps
killed, session left behind) and checks that it is disarmed; :meth:`close` disarms;
:meth:`emergency_disarm` sends a disarm frame without waiting (for signal handlers).
A command whose capability bit HELLO did not announce is refused on the host.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from importlib.metadata import entry_points

import numpy as np
import serial

from labkit.backend import SafetyEnvelope, VmmSettings

from . import protocol as p
from .protocol import Command, LinkError, Status

POLL_S = 0.005  # port read timeout; deadlines are checked between reads
BITS_PER_BYTE = 10  # 8N1
READ_CHUNK = 1 << 16
VMM_MIN_CHUNK = 32  # vectors per VMM frame below which batches are not split further


def register_url_handlers() -> None:
    """Add the pyserial URL handler packages named by ``labkit.serial_handlers`` entry
    points (e.g. ``labkitemu = "simulator.urlhandler"``) to pyserial's search list."""
    for ep in entry_points(group="labkit.serial_handlers"):
        if ep.value not in serial.protocol_handler_packages:
            serial.protocol_handler_packages.append(ep.value)


class _Lost(Exception):
    """No usable answer before the deadline (reason in args[0])."""


@dataclass
class _Request:
    seq: int
    command: Command
    wire: bytes
    idempotent: bool
    deadline_s: float
    sent_at: float = 0.0
    garbled_seen: int = 0


class TestBoard:
    """Host side of the board protocol (see module docstring). Values in SI units.

    ``info`` (a :class:`~drivers.protocol.BoardInfo`: firmware, board serial, chip id,
    capabilities, max payload, geometry, datasheet) is read by HELLO on open;
    ``settings`` is the board's current :class:`~labkit.backend.VmmSettings`.
    ``stats`` counts retries, timeouts, garbled frames and busy answers.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 921600,
        timeout: float = 0.5,
        retries: int = 4,
        window: int = 4,
    ):
        if not timeout > 0:
            raise ValueError(f"timeout={timeout!r}; expected seconds > 0")
        if not (isinstance(retries, int) and retries >= 0):
            raise ValueError(f"retries={retries!r}; expected an integer >= 0")
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f"window={window!r}; expected an integer >= 1")
        self.url = url
        self.baudrate = int(baudrate)
        self.timeout = float(timeout)
        self.retries = retries
        self.window = window
        self.stats: Counter[str] = Counter()
        self._decoder = p.FrameDecoder()
        self._seq = random.randrange(p.SEQ_MODULO)
        self._outstanding: dict[int, _Request] = {}
        self._inbox: dict[int, p.Frame] = {}
        self._garbled = 0
        self._lock = threading.RLock()  # one transaction at a time (e.g. a live view thread)
        register_url_handlers()
        try:
            self.port = serial.serial_for_url(url, baudrate=self.baudrate, timeout=POLL_S, write_timeout=None)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open the test board at {url!r}: {exc}") from None
        try:
            self.resync()
            self.info = self.hello()
            self.opened_status = self.disarm()
            self._settings = self.get_config()
        except BaseException:
            self.port.close()
            raise

    def has(self, capability: p.Capability) -> bool:
        """Whether the board announced ``capability`` in HELLO."""
        return bool(self.info.capabilities & capability)

    def _require(self, command: Command) -> None:
        need = p.REQUIRES.get(command)
        if need is not None and not self.has(need):
            raise p.UnknownCommandError(
                f"the test board at {self.url!r} does not offer {command.name} (capability {need.name} not announced)",
                Status.UNKNOWN_COMMAND, command)

    # ------------------------------------------------------------- commands

    def hello(self) -> p.BoardInfo:
        """Protocol and firmware versions, board serial, chip id, capabilities, limits of
        the frame size, geometry and datasheet values."""
        info = p.decode_hello_reply(self._call(Command.HELLO, reply_size=256).payload)
        if info.protocol_version != p.PROTOCOL_VERSION:
            raise p.VersionError(f"board speaks protocol {info.protocol_version}; this host speaks {p.PROTOCOL_VERSION}")
        self.info = info
        return info

    def disarm(self) -> p.BoardStatus:
        """Drop the programming high voltage and check the board says so; returns STATUS."""
        if self.arm(False):
            raise p.HardwareFaultError(f"the test board at {self.url!r} stays armed after ARM 0",
                                       Status.HARDWARE_FAULT, Command.ARM)
        st = self.status()
        if st.armed:
            raise p.HardwareFaultError(f"the test board at {self.url!r} reports armed after ARM 0",
                                       Status.HARDWARE_FAULT, Command.STATUS)
        return st

    def emergency_disarm(self) -> None:
        """Send ARM 0 now without waiting for the answer (safe inside a signal handler:
        one write, after a delimiter that ends any frame half sent)."""
        try:
            self.port.write(p.DELIMITER + p.request(self._next_seq(), Command.ARM, p.encode_flag(False)))
            self.port.flush()
        except Exception:  # the link may be gone; the board's arm time-out still holds
            pass

    def route(self, cell) -> tuple[int, int] | None:
        """Connect ``(row, col)`` to the SMU test port (``None``: disconnect); returns the
        board's answer."""
        self._require(Command.ROUTE)
        return p.decode_route(self._call(Command.ROUTE, p.encode_route(cell), reply_size=2).payload)

    def reset(self) -> p.BoardInfo:
        """Restart the board (new boot id, disarmed, reply cache gone); returns the new HELLO."""
        self._require(Command.RESET)
        self._call(Command.RESET)
        return self.hello()

    def ping(self, data: bytes = b"") -> float:
        """Round-trip time (s) of an echo of ``data``."""
        t0 = time.monotonic()
        echo = self._call(Command.PING, bytes(data), reply_size=len(data)).payload
        if echo != bytes(data):
            raise LinkError(f"ping echo differs from what was sent ({len(echo)} vs {len(data)} bytes)")
        return time.monotonic() - t0

    def status(self) -> p.BoardStatus:
        """Arm state, boot id, pulse counters, frame and CRC-error counts, uptime."""
        return p.decode_status_reply(self._call(Command.STATUS, reply_size=32).payload)

    @property
    def settings(self) -> VmmSettings:
        """The board's operating point as last read or applied."""
        return self._settings

    def get_config(self) -> VmmSettings:
        self._settings = p.decode_settings(self._call(Command.GET_CONFIG, reply_size=26).payload)
        return self._settings

    def configure(self, settings: VmmSettings) -> VmmSettings:
        """Apply an operating point; returns what the board applied."""
        payload = p.encode_settings(settings)
        self._settings = p.decode_settings(self._call(Command.CONFIGURE, payload, reply_size=26).payload)
        return self._settings

    def read_currents(self, cells) -> np.ndarray:
        """Drain current (A) of each ``(row, col)`` cell at the configured read voltage."""
        self._require(Command.READ)
        a = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        per = max(1, (self.info.max_payload - 2) // 8)
        out = []
        for k in range(0, len(a), per):
            chunk = a[k : k + per]
            frame = self._call(Command.READ, p.encode_cells(chunk), reply_size=2 + 8 * len(chunk), exec_s=1e-4 * len(chunk))
            currents = p.decode_currents(frame.payload)
            if len(currents) != len(chunk):
                raise LinkError(f"READ answered {len(currents)} currents for {len(chunk)} cells")
            out.append(currents)
        return np.concatenate(out) if out else np.zeros(0)

    def program_pulses(self, cells, voltage_v, width_s) -> int:
        """One programming pulse per cell, in order; voltages (V) and widths (s) broadcast
        over the cells. Needs the board armed. Returns the pulses applied (never more
        than one per listed cell, whatever the link does)."""
        self._require(Command.PROGRAM)
        a = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        v = np.broadcast_to(np.asarray(voltage_v, dtype=float), (len(a),))
        w = np.broadcast_to(np.asarray(width_s, dtype=float), (len(a),))
        per = max(1, (self.info.max_payload - 2) // 18)
        applied = 0
        for k in range(0, len(a), per):
            payload = p.encode_program_request(a[k : k + per], v[k : k + per], w[k : k + per])
            exec_s = float(np.sum(w[k : k + per])) + 20e-6 * len(a[k : k + per])
            n, _total = p.decode_applied(self._call(Command.PROGRAM, payload, reply_size=6, exec_s=exec_s).payload)
            applied += n
        return applied

    def erase_rows(self, rows, voltage_v: float, width_s: float) -> int:
        """One erase pulse (V, s) on each listed row. Needs the board armed."""
        self._require(Command.ERASE)
        r = np.asarray(rows, dtype=np.int64).ravel()
        payload = p.encode_erase_request(r, voltage_v, width_s)
        exec_s = float(width_s) * len(r) + 1e-4
        n, _total = p.decode_applied(self._call(Command.ERASE, payload, reply_size=6, exec_s=exec_s).payload)
        return n

    def vmm(self, widths_s) -> np.ndarray:
        """Crossing times (s) ``(B, cols)`` for input pulse widths (s) ``(B, rows)`` (or
        ``(rows,)`` -> ``(cols,)``); widths are rounded to the input clock."""
        w = np.asarray(widths_s, dtype=float)
        single = w.ndim == 1
        ticks = p.widths_to_ticks(w[None, :] if single else w, self._settings)
        times = p.counts_to_times(self.vmm_counts(ticks), self._settings)
        return times[0] if single else times

    def vmm_counts(self, ticks) -> np.ndarray:
        """Raw VMM: input ticks ``(B, rows)`` (u16) -> TDC counts ``(B, cols)`` (u16).

        Split into frames of at most ``max_payload`` and pipelined ``window`` deep."""
        self._require(Command.VMM)
        ticks = np.asarray(ticks)
        g, s = self.info.geometry, self._settings
        if ticks.ndim != 2 or ticks.shape[1] != g.rows:
            raise ValueError(f"ticks of shape {ticks.shape}; expected (B, {g.rows})")
        limit = p.vmm_batch_limit(self.info.max_payload, g.rows, g.cols)
        if limit < 1:
            raise LinkError(f"board max payload {self.info.max_payload} cannot carry one VMM vector")
        # enough frames that the pipeline fills (both directions busy), full frames when long
        per = min(limit, max(VMM_MIN_CHUNK, -(-len(ticks) // (4 * self.window))))
        if not len(ticks):
            return np.zeros((0, g.cols), np.uint16)
        one_s = s.integration_time_s + s.tdc_full_scale_s + 1e-6  # board time per vector
        with self._lock:
            return np.concatenate(self._pipeline(ticks, per, one_s))

    def _pipeline(self, ticks: np.ndarray, per: int, one_s: float) -> list[np.ndarray]:
        """VMM frames of ``per`` vectors, ``window`` in flight; answers in order."""
        g = self.info.geometry
        starts = list(range(0, len(ticks), per))
        results: list[np.ndarray] = [None] * len(starts)  # type: ignore[list-item]
        inflight: deque[tuple[int, _Request]] = deque()
        nxt = 0
        try:
            while nxt < len(starts) or inflight:
                while nxt < len(starts) and len(inflight) < self.window:
                    chunk = ticks[starts[nxt] : starts[nxt] + per]
                    payload = p.encode_vmm_request(chunk)
                    req = self._request(
                        Command.VMM,
                        payload,
                        reply_size=3 + 2 * g.cols * len(chunk),
                        exec_s=one_s * len(chunk),
                        queued=len(inflight),
                    )
                    self._send(req)
                    inflight.append((nxt, req))
                    nxt += 1
                k, req = inflight.popleft()
                counts = p.decode_vmm_reply(self._complete(req).payload)
                if counts.shape != (len(ticks[starts[k] : starts[k] + per]), g.cols):
                    raise LinkError(f"VMM answer of shape {counts.shape} for a batch of {per}")
                results[k] = counts
        finally:
            for _, req in inflight:  # on error: later answers are stale
                self._outstanding.pop(req.seq, None)
                self._inbox.pop(req.seq, None)
        return results

    def arm(self, on: bool = True) -> bool:
        """Arm (or disarm) the programming high voltage; returns the board's state."""
        return p.decode_flag(self._call(Command.ARM, p.encode_flag(on), reply_size=1).payload)

    def limits(self) -> SafetyEnvelope:
        """The board's own safety limits."""
        return p.decode_limits(self._call(Command.GET_LIMITS, reply_size=88).payload)

    def set_limits(self, envelope: SafetyEnvelope) -> SafetyEnvelope:
        """Tighten the board's limits (looser than its hardware limits: OutOfRangeError)."""
        return p.decode_limits(self._call(Command.SET_LIMITS, p.encode_limits(envelope), reply_size=88).payload)

    def temperature_k(self) -> float | None:
        """Chip temperature (K), or None where the board has no sensor."""
        if not self.has(p.Capability.TEMPERATURE):
            return None
        return p.decode_temperature(self._call(Command.TEMPERATURE, reply_size=8).payload)

    # --------------------------------------------------------------- link

    def resync(self) -> None:
        """Drop everything half-received on both ends: flush input, send a lone delimiter."""
        try:
            self.port.reset_input_buffer()
            self.port.write(p.DELIMITER)
            self.port.flush()
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"link to the test board at {self.url!r} lost: {exc}") from None
        self._decoder.reset()
        self._inbox.clear()

    def close(self) -> None:
        """Disarm (best effort: a dead link is left to the board's arm time-out), then close."""
        if self.port.is_open:
            retries, self.retries = self.retries, min(self.retries, 1)  # a dead link: no long wait
            try:
                self.arm(False)
            except (p.BoardError, serial.SerialException, OSError):
                self.emergency_disarm()
            finally:
                self.retries = retries
        try:
            self.port.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self) -> "TestBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------- transactions

    def _next_seq(self) -> int:
        while True:
            self._seq = (self._seq + 1) % p.SEQ_MODULO
            if self._seq not in self._outstanding:
                return self._seq

    def _request(self, command: Command, payload: bytes = b"", *, reply_size: int = 0, exec_s: float = 0.0, queued: int = 0) -> _Request:
        seq = self._next_seq()
        wire = p.request(seq, command, payload)
        wire_s = (len(wire) + p.wire_size(reply_size)) * BITS_PER_BYTE / self.baudrate
        deadline = self.timeout + (1 + queued) * (2 * wire_s + 2 * exec_s)
        return _Request(seq, command, wire, command in p.IDEMPOTENT, deadline)

    def _call(self, command: Command, payload: bytes = b"", *, reply_size: int = 0, exec_s: float = 0.0) -> p.Frame:
        with self._lock:
            req = self._request(command, payload, reply_size=reply_size, exec_s=exec_s)
            self._send(req)
            return self._complete(req)

    def _send(self, req: _Request, resend: bool = False) -> None:
        self._outstanding[req.seq] = req
        req.sent_at = time.monotonic()
        req.garbled_seen = self._garbled
        # a re-send starts with a delimiter, which ends any garbage the board holds
        self._write(p.DELIMITER + req.wire if resend else req.wire)

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"link to the test board at {self.url!r} lost: {exc}") from None

    def _read_some(self) -> None:
        try:
            data = self.port.read(1)  # waits up to POLL_S for the first byte
            if data:  # then takes whatever else has arrived, without waiting
                self.port.timeout = 0
                try:
                    data += self.port.read(READ_CHUNK)
                finally:
                    self.port.timeout = POLL_S
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"link to the test board at {self.url!r} lost: {exc}") from None
        if not data:
            return
        for item in self._decoder.feed(data):
            if isinstance(item, p.FrameError):
                self._garbled += 1
                self.stats["garbled"] += 1
            elif item.reply and item.seq in self._outstanding and item.seq not in self._inbox:
                self._inbox[item.seq] = item
            else:
                self.stats["stale"] += 1

    def _wait(self, req: _Request) -> p.Frame:
        while req.seq not in self._inbox:
            if self._garbled > req.garbled_seen:
                raise _Lost("garbled answer")
            if time.monotonic() - req.sent_at > req.deadline_s:
                raise _Lost("timeout")
            self._read_some()
        return self._inbox.pop(req.seq)

    def _complete(self, req: _Request) -> p.Frame:
        """Wait for the answer to ``req``, re-sending the identical frame on failure."""
        reasons: list[str] = []
        try:
            while True:
                try:
                    frame = self._wait(req)
                except _Lost as lost:
                    reasons.append(lost.args[0])
                else:
                    if frame.status == Status.BUSY:
                        reasons.append("busy")
                        time.sleep(min(0.05, 0.001 * 2 ** len(reasons)))
                    elif frame.status in (Status.BAD_CRC, Status.BAD_FRAME):
                        reasons.append("board received a garbled frame")
                    else:
                        if not frame.ok:
                            raise frame.error()
                        if reasons:
                            self.stats["recovered"] += 1
                        return frame
                self.stats[reasons[-1]] += 1
                if len(reasons) > self.retries:
                    self._give_up(req, reasons)
                if not req.idempotent and reasons[-1] == "timeout":
                    self._check_boot(req, reasons)
                self.stats["resent"] += 1
                self._send(req, resend=True)
        finally:
            self._outstanding.pop(req.seq, None)
            self._inbox.pop(req.seq, None)

    def _check_boot(self, req: _Request, reasons: list[str]) -> None:
        """Before re-sending a pulse: the board's reply cache must still be there."""
        try:
            boot = self.status().boot_id
        except LinkError:
            self._give_up(req, reasons + ["no answer to STATUS"])
        if boot != self.info.boot_id:
            raise LinkError(
                f"the test board restarted while {req.command.name} (seq {req.seq}) was in flight; "
                "whether that pulse was applied is unknown: read the cells before going on"
            )

    def _give_up(self, req: _Request, reasons: list[str]) -> None:
        self._outstanding.pop(req.seq, None)
        summary = ", ".join(f"{n} x {r}" for r, n in Counter(reasons).items())
        if all(r == "busy" for r in reasons):
            raise p.BusyError(f"test board stayed busy for {req.command.name} after {len(reasons)} tries", Status.BUSY, req.command)
        ping = self._try_ping()
        self.resync()
        text = (
            f"test board at {self.url!r} did not complete {req.command.name} (seq {req.seq}) "
            f"after {len(reasons)} attempts ({summary}); ping {'answered' if ping else 'got no answer'}; "
            "link resynchronised"
        )
        if not req.idempotent:
            text += "; the pulse was only ever sent under one sequence number, so it was applied at most once"
        raise LinkError(text, None, req.command)

    def _try_ping(self) -> bool:
        req = self._request(Command.PING, b"")
        try:
            self._send(req, resend=True)
            return self._wait(req).ok
        except (_Lost, LinkError):
            return False
        finally:
            self._outstanding.pop(req.seq, None)
            self._inbox.pop(req.seq, None)
