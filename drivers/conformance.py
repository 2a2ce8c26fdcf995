"""Board conformance suite: does a test board speak ``docs/board-protocol.md``?

``run_conformance(url)`` opens any pyserial URL (a USB-serial board, a pseudo-terminal
of the reference firmware's host build, ``socket://`` of the virtual bench,
``labkitemu://``) and checks every command and every error path, framing edge cases and
corrupt CRCs, replay without a second pulse (by the board's pulse counter), the boot-id
change after RESET, limits enforced on the board, the arm time-out, and VMM throughput
against the link rate. It speaks through the host codec (:mod:`drivers.protocol`) with
raw frames, so it sees exactly what the board sends.

The suite applies a few programming and erase pulses (nominal values, within the
board's limits); run it on a test chip. It leaves the board disarmed with its limits as
it found them.
"""

from __future__ import annotations

import math
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import serial

from labkit.backend import SafetyEnvelope, VmmSettings

from . import protocol as p
from .board import TestBoard, register_url_handlers
from .protocol import Capability, Command, Status

C, S = Command, Status


@dataclass
class CheckResult:
    name: str
    ok: bool | None  # None: not applicable to this board
    detail: str
    seconds: float


@dataclass
class Report:
    url: str
    info: dict = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok is not False for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.ok is False]

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "passed": self.passed,
            "failed": self.failed,
            "board": self.info,
            "figures": self.figures,
            "checks": [{"name": c.name, "result": verdict(c.ok), "detail": c.detail, "seconds": round(c.seconds, 4)}
                       for c in self.checks],
        }

    def rows(self) -> list[tuple[str, str, str]]:
        return [(c.name, verdict(c.ok), c.detail) for c in self.checks]


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


class Failed(AssertionError):
    """A check's expectation did not hold (message says which)."""


def need(cond: bool, message: str) -> None:
    if not cond:
        raise Failed(message)


class NotApplicable(Exception):
    pass


# ------------------------------------------------------------------ raw link


class RawLink:
    """Raw frames over a pyserial port: send bytes, collect the replies to a sequence number."""

    def __init__(self, url: str, baudrate: int, timeout: float):
        register_url_handlers()
        self.port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.005, write_timeout=None)
        self.timeout = timeout
        self.decoder = p.FrameDecoder()
        self.seq = int.from_bytes(os.urandom(2), "little")
        self.received: list[p.Frame | p.FrameError] = []
        self.latency_s: list[float] = []

    def close(self) -> None:
        self.port.close()

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) % p.SEQ_MODULO
        return self.seq

    def write(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def pump(self) -> None:
        data = self.port.read(1)
        if data:
            self.port.timeout = 0
            data += self.port.read(1 << 16)
            self.port.timeout = 0.005
            self.received += self.decoder.feed(data)

    def replies(self, seq: int, wait_s: float, count: int = 1) -> list[p.Frame]:
        """Replies carrying ``seq`` that arrive within ``wait_s`` (stops at ``count``)."""
        t0 = time.monotonic()
        got: list[p.Frame] = []
        while time.monotonic() - t0 < wait_s:
            self.pump()
            keep = []
            for item in self.received:
                if isinstance(item, p.Frame) and item.reply and item.seq == seq:
                    got.append(item)
                else:
                    keep.append(item)
            self.received = keep
            if len(got) >= count:
                self.latency_s.append(time.monotonic() - t0)
                break
        return got

    def drain(self, wait_s: float = 0.05) -> list[p.Frame | p.FrameError]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < wait_s:
            self.pump()
        out, self.received = self.received, []
        return out

    def ask(self, command: int, payload: bytes = b"", *, seq: int | None = None, wire: bytes | None = None,
            wait_s: float | None = None) -> p.Frame:
        """Send one request (or the given ``wire`` bytes under ``seq``) and return its one reply."""
        seq = self.next_seq() if seq is None else seq
        self.write(wire if wire is not None else p.request(seq, command, payload))
        got = self.replies(seq, self.timeout if wait_s is None else wait_s)
        need(len(got) == 1, f"{p.command_name(command)}: no reply within {self.timeout:g} s")
        reply = got[0]
        need(reply.command == command & 0x7F,
             f"{p.command_name(command)}: reply carries command 0x{reply.command:02x}")
        need(reply.version == p.PROTOCOL_VERSION, f"{p.command_name(command)}: reply in version {reply.version}")
        return reply

    def ok(self, command: int, payload: bytes = b"") -> bytes:
        reply = self.ask(command, payload)
        need(reply.ok, f"{p.command_name(command)}: status {_status(reply.status)}: {p.decode_text(reply.payload)}")
        return reply.payload

    def refused(self, command: int, payload: bytes, status: Status, what: str) -> None:
        reply = self.ask(command, payload)
        need(reply.status == status, f"{what}: expected {status.name}, got {_status(reply.status)}")

    def silent(self, seq: int, wait_s: float = 0.15) -> bool:
        return not self.replies(seq, wait_s)


def _status(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return f"unknown status {code}"


def raw_frame(seq: int, command: int, payload: bytes = b"", *, version: int = p.PROTOCOL_VERSION,
              length: int | None = None, crc_xor: int = 0) -> bytes:
    """A request with chosen defects: another version, a wrong length field, a wrong CRC."""
    n = len(payload) if length is None else length
    body = struct.pack("<BHBBH", version, seq, command, 0, n) + payload
    return p.cobs_encode(body + struct.pack("<I", zlib.crc32(body) ^ crc_xor)) + p.DELIMITER


# ---------------------------------------------------------------- the suite


class Suite:
    """The checks, in order; each one leaves the board disarmed."""

    def __init__(self, link: RawLink, url: str, baudrate: int, link_baud: float | None, timeout: float,
                 vectors: int):
        self.link, self.url, self.baudrate, self.link_baud = link, url, baudrate, link_baud
        self.timeout, self.vectors = timeout, vectors
        self.info: p.BoardInfo | None = None
        self.figures: dict = {}

    # helpers
    def status(self) -> p.BoardStatus:
        return p.decode_status_reply(self.link.ok(C.STATUS))

    def arm(self, on: bool) -> None:
        need(p.decode_flag(self.link.ok(C.ARM, p.encode_flag(on))) == on, f"ARM {int(on)} not applied")

    def has(self, cap: Capability) -> bool:
        return bool(self.info.capabilities & cap)

    def limits(self) -> SafetyEnvelope:
        return p.decode_limits(self.link.ok(C.GET_LIMITS))

    def nominal_pulse(self) -> tuple[float, float]:
        env = self.limits()
        lo, hi = env.program_width_range_s
        return min(5.5, env.max_program_voltage_v), min(max(1e-6, lo), hi)

    def nominal_erase(self) -> tuple[float, float]:
        env = self.limits()
        lo, hi = env.erase_width_range_s
        return min(13.0, env.max_erase_voltage_v), min(max(1e-3, lo), hi)

    def program_frame(self, seq: int, cells=((0, 0),)) -> bytes:
        v, w = self.nominal_pulse()
        return p.request(seq, C.PROGRAM, p.encode_program_request(np.array(cells), v, w))

    # -- checks --------------------------------------------------------------

    def check_hello(self) -> str:
        reply = self.link.ask(C.HELLO)
        need(reply.ok and reply.reply, f"HELLO status {_status(reply.status)}")
        info = p.decode_hello_reply(reply.payload)
        need(info.protocol_version == p.PROTOCOL_VERSION, f"protocol version {info.protocol_version}; expected 1")
        need(64 <= info.max_payload <= p.MAX_LENGTH, f"max_payload {info.max_payload}; expected 64..65535")
        g = info.geometry
        need(1 <= g.rows <= 255 and 1 <= g.cols <= 255, f"geometry {g.rows} x {g.cols}")
        need(all(0 <= c < g.cols for pair in g.pairs for c in pair), "a column pair names a column outside the array")
        need(p.vmm_batch_limit(info.max_payload, g.rows, g.cols) >= 1, "max_payload cannot carry one VMM vector")
        unknown = reply.payload and (struct.unpack_from("<I", reply.payload, 5)[0] & ~int(sum(Capability)))
        need(not unknown, f"unknown capability bits 0x{unknown:x} announced")
        self.info = info
        return (f"{info.firmware!r}, serial {info.board_serial!r}, chip {info.chip_id!r}, {g.rows}x{g.cols}, "
                f"max payload {info.max_payload}, capabilities " + "+".join(c.name for c in Capability if info.capabilities & c))

    def check_ping(self) -> str:
        rng = np.random.default_rng(1)
        for data in (b"", b"\x00" * 10, bytes(range(256)), rng.bytes(self.info.max_payload)):
            echo = self.link.ok(C.PING, data)
            need(echo == data, f"PING of {len(data)} bytes echoed {len(echo)} bytes, differing")
        return f"echoes up to max_payload = {self.info.max_payload} bytes, zeros included"

    def check_status(self) -> str:
        self.arm(False)
        a = self.status()
        b = self.status()
        need(a.boot_id == self.info.boot_id, f"STATUS boot id {a.boot_id:#x}; HELLO said {self.info.boot_id:#x}")
        need(not a.armed, "STATUS says armed after ARM 0")
        need(b.frames > a.frames, "the valid-frame counter does not advance")
        need(math.isfinite(a.uptime_s) and b.uptime_s >= a.uptime_s >= 0, "uptime not monotone")
        return f"boot id {a.boot_id:#010x}, uptime {a.uptime_s:.3f} s, frames counted"

    def check_config(self) -> str:
        s = p.decode_settings(self.link.ok(C.GET_CONFIG))
        back = p.decode_settings(self.link.ok(C.CONFIGURE, p.encode_settings(s)))
        need(back == s, f"CONFIGURE with the current settings returned {back}")
        lo, hi = self.limits().read_voltage_range_v
        bad = VmmSettings(s.integration_time_s, hi + 1.0, s.input_bits, s.tdc_bits, s.tdc_lsb_s)
        self.link.refused(C.CONFIGURE, p.encode_settings(bad), S.OUT_OF_RANGE, "read voltage above the limit")
        self.link.refused(C.CONFIGURE, p.encode_settings(s)[:-1], S.BAD_ARGUMENT, "CONFIGURE one byte short")
        need(p.decode_settings(self.link.ok(C.GET_CONFIG)) == s, "a refused CONFIGURE changed the settings")
        return f"T = {s.integration_time_s:g} s, read {s.read_voltage_v:g} V; refusals change nothing"

    def check_limits(self) -> str:
        env = self.limits()
        try:
            tight = SafetyEnvelope(**{**env.__dict__, "max_program_voltage_v": env.max_program_voltage_v - 0.5})
            got = p.decode_limits(self.link.ok(C.SET_LIMITS, p.encode_limits(tight)))
            need(got == tight, f"SET_LIMITS applied {got}")
            need(self.limits() == tight, "GET_LIMITS does not report the tightened limits")
            loose = SafetyEnvelope(**{**env.__dict__, "max_erase_voltage_v": env.max_erase_voltage_v + 5})
            self.link.refused(C.SET_LIMITS, p.encode_limits(loose), S.OUT_OF_RANGE, "limits looser than the hardware's")
            nan = p.encode_limits(env)[:8] + struct.pack("<d", math.nan) + p.encode_limits(env)[16:]
            reply = self.link.ask(C.SET_LIMITS, nan)
            need(reply.status in (S.BAD_ARGUMENT, S.OUT_OF_RANGE), f"NaN limit: {_status(reply.status)}")
            self.link.refused(C.SET_LIMITS, p.encode_limits(env)[:80], S.BAD_ARGUMENT, "SET_LIMITS 8 bytes short")
        finally:
            self.link.ok(C.SET_LIMITS, p.encode_limits(env))
        need(self.limits() == env, "limits not restored")
        return f"tighten applied, loosening and NaN refused; max program {env.max_program_voltage_v:g} V"

    def check_read(self) -> str:
        g = self.info.geometry
        cells = np.array([(r, c) for r in range(g.rows) for c in range(g.cols)])
        per = (self.info.max_payload - 2) // 8
        currents = np.concatenate([p.decode_currents(self.link.ok(C.READ, p.encode_cells(cells[k:k + per])))
                                   for k in range(0, len(cells), per)])
        need(len(currents) == len(cells), "READ answered a different number of currents")
        need(np.all(np.isfinite(currents)) and np.all(currents >= 0), "a cell current is negative or not finite")
        need(len(p.decode_currents(self.link.ok(C.READ, p.encode_cells(np.zeros((0, 2), int))))) == 0,
             "READ of no cells is not an empty answer")
        self.link.refused(C.READ, p.encode_cells([[g.rows, 0]]), S.BAD_ARGUMENT, "READ of a row outside the array")
        self.link.refused(C.READ, p.encode_cells([[0, 0], [1, 1]])[:-1], S.BAD_ARGUMENT, "READ count/length mismatch")
        if 2 + 2 * (per + 1) <= self.info.max_payload:
            self.link.refused(C.READ, p.encode_cells(np.resize(cells, (per + 1, 2))), S.BAD_ARGUMENT,
                              "READ whose answer exceeds max_payload")
        return f"{len(cells)} cells, median {np.median(currents):.3g} A"

    def check_vmm(self) -> str:
        g = self.info.geometry
        s = p.decode_settings(self.link.ok(C.GET_CONFIG))
        top = 2**s.input_bits
        ticks = np.random.default_rng(2).integers(0, top + 1, (4, g.rows))
        counts = p.decode_vmm_reply(self.link.ok(C.VMM, p.encode_vmm_request(ticks)))
        need(counts.shape == (4, g.cols), f"VMM answer of shape {counts.shape}; expected (4, {g.cols})")
        zero = p.decode_vmm_reply(self.link.ok(C.VMM, p.encode_vmm_request(np.zeros((0, g.rows), int))))
        need(zero.shape == (0, g.cols), "VMM of no vectors is not an empty answer")
        bad = ticks[:1].copy()
        bad[0, 0] = top + 1
        self.link.refused(C.VMM, p.encode_vmm_request(bad), S.OUT_OF_RANGE, "input tick above 2**input_bits")
        self.link.refused(C.VMM, p.encode_vmm_request(ticks[:, :-1]), S.BAD_ARGUMENT, "vectors one row short")
        self.link.refused(C.VMM, p.encode_vmm_request(ticks)[:-2], S.BAD_ARGUMENT, "VMM count/length mismatch")
        return f"4 vectors -> counts in [{counts.min()}, {counts.max()}]"

    def check_program_needs_arm(self) -> str:
        self.arm(False)
        before = self.status().program_pulses
        self.link.refused(C.PROGRAM, p.decode_frame(self.program_frame(0)[:-1]).payload, S.NOT_ARMED,
                          "PROGRAM while disarmed")
        v, w = self.nominal_erase()
        self.link.refused(C.ERASE, p.encode_erase_request([0], v, w), S.NOT_ARMED, "ERASE while disarmed")
        need(self.status().program_pulses == before, "a refused PROGRAM was counted as applied")
        return "PROGRAM and ERASE refused with NOT_ARMED, no pulse counted"

    def check_program(self) -> str:
        before = self.status()
        self.arm(True)
        try:
            v, w = self.nominal_pulse()
            n, total = p.decode_applied(self.link.ok(C.PROGRAM, p.encode_program_request([[0, 1], [1, 0]], v, w)))
            need(n == 2, f"PROGRAM of 2 cells answered {n} applied")
            after = self.status()
            need(after.program_pulses == before.program_pulses + 2 == total,
                 f"pulse counter {before.program_pulses} -> {after.program_pulses} (reply total {total}); expected +2")
            ve, we = self.nominal_erase()
            n, total = p.decode_applied(self.link.ok(C.ERASE, p.encode_erase_request([0, 1], ve, we)))
            need(n == 2 and self.status().erase_pulses == before.erase_pulses + 2 == total, "ERASE counters wrong")
            empty = p.decode_applied(self.link.ok(C.PROGRAM, p.encode_program_request(np.zeros((0, 2), int), v, w)))
            need(empty[0] == 0, "PROGRAM of no cells applied something")
        finally:
            self.arm(False)
        return f"2 program pulses at {v:g} V / {w:g} s and 2 row erases at {ve:g} V / {we:g} s counted exactly"

    def check_board_limits(self) -> str:
        g = self.info.geometry
        env = self.limits()
        v, w = self.nominal_pulse()
        ve, we = self.nominal_erase()
        before = self.status()
        self.arm(True)
        try:
            cases = [
                (C.PROGRAM, p.encode_program_request([[0, 0], [0, 1]], [v, env.max_program_voltage_v + 0.5], w),
                 S.OUT_OF_RANGE, "second pulse above the program voltage limit"),
                (C.PROGRAM, p.encode_program_request([[0, 0]], v, env.program_width_range_s[1] * 2), S.OUT_OF_RANGE,
                 "program width above the limit"),
                (C.PROGRAM, p.encode_program_request([[0, 0]], math.nan, w), S.OUT_OF_RANGE, "NaN voltage"),
                (C.PROGRAM, p.encode_program_request([[0, 0], [0, g.cols]], v, w), S.BAD_ARGUMENT,
                 "a cell outside the array"),
                (C.PROGRAM, p.encode_program_request([[0, 0]], v, w)[:-1], S.BAD_ARGUMENT, "PROGRAM 1 byte short"),
                (C.ERASE, p.encode_erase_request([0], env.max_erase_voltage_v + 1, we), S.OUT_OF_RANGE,
                 "erase voltage above the limit"),
                (C.ERASE, p.encode_erase_request([0], ve, env.erase_width_range_s[1] * 2), S.OUT_OF_RANGE,
                 "erase width above the limit"),
                (C.ERASE, p.encode_erase_request([g.rows], ve, we), S.BAD_ARGUMENT, "a row outside the array"),
            ]
            for cmd, payload, status, what in cases:
                reply = self.link.ask(cmd, payload)
                if status == S.OUT_OF_RANGE and "NaN" in what:
                    need(reply.status in (S.OUT_OF_RANGE, S.BAD_ARGUMENT), f"{what}: {_status(reply.status)}")
                else:
                    need(reply.status == status, f"{what}: expected {status.name}, got {_status(reply.status)}")
            # limits set by the host are enforced on the board as well
            tight = SafetyEnvelope(**{**env.__dict__, "max_program_voltage_v": v - 0.25})
            self.link.ok(C.SET_LIMITS, p.encode_limits(tight))
            try:
                self.link.refused(C.PROGRAM, p.encode_program_request([[0, 0]], v, w), S.OUT_OF_RANGE,
                                  "a pulse above limits tightened by SET_LIMITS")
            finally:
                self.link.ok(C.SET_LIMITS, p.encode_limits(env))
        finally:
            self.arm(False)
        after = self.status()
        need((after.program_pulses, after.erase_pulses) == (before.program_pulses, before.erase_pulses),
             "a refused request applied pulses (counters moved)")
        return f"{len(cases) + 1} refusals, 0 pulses applied"

    def check_replay(self) -> str:
        before = self.status().program_pulses
        self.arm(True)
        try:
            seq = self.link.next_seq()
            frame = self.program_frame(seq, [(2, 3)])
            first = self.link.ask(C.PROGRAM, seq=seq, wire=frame)
            need(first.ok, f"PROGRAM: {_status(first.status)}")
            again = [self.link.ask(C.PROGRAM, seq=seq, wire=frame) for _ in range(3)]
            need(all(r == first for r in again), "a replayed PROGRAM got a different answer")
            self.link.write(frame + frame)  # two copies in one write
            need(len(self.link.replies(seq, self.timeout, 2)) == 2, "two copies in one write: not two answers")
            after = self.status().program_pulses
            need(after == before + 1, f"pulse counter {before} -> {after}: the replay pulsed again")
            other = self.link.ask(C.PROGRAM, seq=seq, wire=self.program_frame(seq, [(3, 2)]))
            need(other.ok and self.status().program_pulses == before + 2,
                 "same sequence number, other payload: not executed as a new request")
            v, w = self.nominal_erase()
            eseq = self.link.next_seq()
            ewire = p.request(eseq, C.ERASE, p.encode_erase_request([2], v, w))
            e0 = self.status().erase_pulses
            r1, r2 = self.link.ask(C.ERASE, seq=eseq, wire=ewire), self.link.ask(C.ERASE, seq=eseq, wire=ewire)
            need(r1 == r2 and self.status().erase_pulses == e0 + 1, "a replayed ERASE pulsed again")
        finally:
            self.arm(False)
        return "6 repeats of one PROGRAM seq -> 1 pulse, identical answers; a repeated ERASE -> 1 erase"

    def check_arm(self) -> str:
        self.link.refused(C.ARM, b"\x02", S.BAD_ARGUMENT, "ARM 2")
        self.link.refused(C.ARM, b"", S.BAD_ARGUMENT, "ARM without a payload")
        need(not self.status().armed, "a refused ARM armed the board")
        self.arm(True)
        need(self.status().armed, "STATUS does not say armed after ARM 1")
        self.arm(False)
        need(not self.status().armed, "STATUS says armed after ARM 0")
        return "ARM 0/1 reported by STATUS; malformed ARM refused"

    def check_route(self) -> str:
        g = self.info.geometry
        if not self.has(Capability.ROUTE):
            reply = self.link.ask(C.ROUTE, p.encode_route((0, 0)))
            need(reply.status == S.UNKNOWN_COMMAND, f"ROUTE without the capability: {_status(reply.status)}")
            raise NotApplicable("no ROUTE capability (UNKNOWN_COMMAND as required)")
        need(p.decode_route(self.link.ok(C.ROUTE, p.encode_route((g.rows - 1, 1)))) == (g.rows - 1, 1), "ROUTE echo")
        need(p.decode_route(self.link.ok(C.ROUTE, p.encode_route(None))) is None, "ROUTE (255, 255) echo")
        self.link.refused(C.ROUTE, bytes([g.rows, 0]), S.BAD_ARGUMENT, "ROUTE of a row outside the array")
        self.link.refused(C.ROUTE, b"\x00", S.BAD_ARGUMENT, "ROUTE 1 byte short")
        return "cell routed and disconnected; bad cells refused"

    def check_temperature(self) -> str:
        if not self.has(Capability.TEMPERATURE):
            reply = self.link.ask(C.TEMPERATURE)
            need(reply.status == S.UNKNOWN_COMMAND or (reply.ok and p.decode_temperature(reply.payload) is None),
                 "TEMPERATURE without the capability: neither UNKNOWN_COMMAND nor NaN")
            raise NotApplicable("no sensor announced")
        k = p.decode_temperature(self.link.ok(C.TEMPERATURE))
        need(k is not None and 1.0 < k < 1000.0, f"temperature {k!r} K")
        return f"{k:.2f} K"

    def check_unknown_command(self) -> str:
        for code in (0x00, 0x7E, 0x13):
            self.link.refused(code, b"", S.UNKNOWN_COMMAND, f"command 0x{code:02x}")
        return "0x00, 0x13, 0x7e -> UNKNOWN_COMMAND"

    def check_bad_version(self) -> str:
        seq = self.link.next_seq()
        reply = self.link.ask(C.PING, seq=seq, wire=raw_frame(seq, C.PING, b"v", version=2))
        need(reply.status == S.BAD_VERSION, f"version 2 frame: {_status(reply.status)}")
        return "version 2 -> BAD_VERSION"

    def check_corrupt_crc(self) -> str:
        before = self.status()
        self.arm(True)
        try:
            payload = p.decode_frame(self.program_frame(0)[:-1]).payload
            answers = 0
            for flip in (0x00000001, 0x80000000, 0x00FF0000):
                seq = self.link.next_seq()
                self.link.write(raw_frame(seq, C.PROGRAM, payload, crc_xor=flip))
                got = self.link.replies(seq, 0.2)
                need(all(r.status == S.BAD_CRC for r in got), "a corrupt frame got an answer other than BAD_CRC")
                answers += len(got)
            seq = self.link.next_seq()  # a payload bit flipped in transit (CRC as sent)
            good = bytearray(raw_frame(seq, C.PROGRAM, payload))
            raw = bytearray(p.cobs_decode(bytes(good[:-1])))
            raw[9] ^= 0x04
            self.link.write(p.cobs_encode(bytes(raw)) + p.DELIMITER)
            need(all(r.status == S.BAD_CRC for r in self.link.replies(seq, 0.2)), "flipped payload bit not BAD_CRC")
        finally:
            self.arm(False)
        after = self.status()
        need(after.program_pulses == before.program_pulses, "a frame with a bad CRC was executed")
        need(after.crc_errors >= before.crc_errors + 4, f"CRC error counter {before.crc_errors} -> {after.crc_errors}")
        return f"4 corrupt PROGRAM frames: 0 pulses, {answers}/3 answered BAD_CRC, counted"

    def check_bad_length(self) -> str:
        before = self.status()
        self.arm(True)
        try:
            payload = p.decode_frame(self.program_frame(0)[:-1]).payload
            for delta in (1, -1):
                seq = self.link.next_seq()
                self.link.write(raw_frame(seq, C.PROGRAM, payload, length=len(payload) + delta))
                got = self.link.replies(seq, 0.2)
                need(len(got) == 1 and got[0].status == S.BAD_FRAME,
                     f"length field {delta:+d}: {[_status(r.status) for r in got] or 'no answer'}; expected BAD_FRAME")
        finally:
            self.arm(False)
        need(self.status().program_pulses == before.program_pulses, "a frame with a wrong length was executed")
        return "length field +-1 with a valid CRC -> BAD_FRAME, nothing executed"

    def check_framing(self) -> str:
        link = self.link
        link.drain()

        def pinged(prefix: bytes, what: str, chunks: int = 1) -> None:
            seq = link.next_seq()
            wire = prefix + p.request(seq, C.PING, b"\x00abc\x00")
            if chunks == 1:
                link.write(wire)
            else:
                for k in range(0, len(wire), max(1, len(wire) // chunks)):
                    link.write(wire[k:k + max(1, len(wire) // chunks)])
                    time.sleep(0.002)
            got = link.replies(seq, self.timeout)
            got += link.replies(seq, 0.03)  # and no second answer
            need(len(got) == 1 and got[0].ok and got[0].payload == b"\x00abc\x00",
                 f"{what}: {len(got)} answers to the PING after it")

        pinged(b"\x00" * 10, "lone delimiters")
        pinged(os.urandom(40).replace(b"\x00", b"\x01") + b"\x00", "garbage then a delimiter")
        pinged(b"", "a frame cut into single bytes", chunks=10 ** 6)
        pinged(b"\x05\x01\x00", "a COBS block running past its frame")
        pinged(b"\x01\x02\x03\x00", "a frame shorter than header and CRC")
        pinged(b"\xff" * (3 * (self.info.max_payload + 64)) + b"\x00", "an overlong run without a delimiter")
        pinged(p.reply(link.next_seq(), C.PING, b"x"), "a reply sent to the board")
        s1, s2 = link.next_seq(), link.next_seq()
        link.write(p.request(s1, C.PING, b"1") + p.request(s2, C.PING, b"2"))
        a, b = link.replies(s1, self.timeout), link.replies(s2, self.timeout)
        need(len(a) == 1 and len(b) == 1 and a[0].payload == b"1" and b[0].payload == b"2",
             "two frames in one write: not two answers")
        seq = link.next_seq()
        link.write(p.reply(seq, C.PING, b"r"))
        need(link.silent(seq), "the board answered a reply")
        return "delimiters, garbage, byte-wise input, bad COBS, short, overlong, replies, back-to-back frames"

    def check_boot_id(self) -> str:
        if not self.has(Capability.RESET):
            raise NotApplicable("no RESET capability: restart the board by hand to see the boot id change")
        self.arm(True)
        seq = self.link.next_seq()
        frame = self.program_frame(seq, [(4, 4)])
        need(self.link.ask(C.PROGRAM, seq=seq, wire=frame).ok, "PROGRAM before RESET failed")
        old = self.info.boot_id
        self.link.ok(C.RESET)
        time.sleep(0.05)
        info = p.decode_hello_reply(self.link.ok(C.HELLO))
        need(info.boot_id != old, f"boot id {old:#x} unchanged after RESET")
        st = self.status()
        need(st.boot_id == info.boot_id and not st.armed, "after RESET: STATUS boot id differs or still armed")
        again = self.link.ask(C.PROGRAM, seq=seq, wire=frame)
        need(again.status == S.NOT_ARMED, f"old PROGRAM after RESET: {_status(again.status)}; its cache must be gone")
        need(p.decode_limits(self.link.ok(C.GET_LIMITS)) is not None, "GET_LIMITS after RESET")
        self.info = info
        return f"boot id {old:#010x} -> {info.boot_id:#010x}, disarmed, reply cache gone"

    def check_arm_timeout(self) -> str:
        t = self.info.arm_timeout_s
        need(t is not None and 0 < t <= 10.0, f"HELLO announces no arm time-out (<= 10 s), got {t!r}")
        self.arm(True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5 * t:  # traffic keeps it armed
            time.sleep(t / 4)
            need(self.status().armed, f"disarmed after {time.monotonic() - t0:.2f} s although the host kept talking")
        self.arm(True)
        time.sleep(t + 0.25)  # silence
        st = self.status()
        self.arm(False)
        need(not st.armed, f"still armed after {t + 0.25:.2f} s without a frame")
        return f"disarmed by itself after {t:g} s of silence; kept armed while the host talks"

    def check_throughput(self) -> str:
        """Pipelined VMM through the host driver (:class:`TestBoard`) on the same port."""
        self.link.close()  # one host on the link at a time
        try:
            with TestBoard(self.url, baudrate=self.baudrate, timeout=self.timeout) as board:
                g = self.info.geometry
                top = 2**board.settings.input_bits
                ticks = np.random.default_rng(3).integers(0, top + 1, (self.vectors, g.rows))
                board.vmm_counts(ticks[:64])
                t0 = time.perf_counter()
                counts = board.vmm_counts(ticks)
                dt = time.perf_counter() - t0
                resent = board.stats["resent"]
        finally:
            self.link.port.open()
        need(counts.shape == (self.vectors, g.cols), "pipelined VMM answered a wrong shape")
        need(resent == 0, f"{resent} frames had to be re-sent on a clean link")
        rate = self.vectors / dt
        busier = 2 * max(g.rows, g.cols)  # payload bytes per vector in the busier direction
        self.figures.update(vmm_vectors_per_s=round(rate, 1), payload_bytes_per_s=round(rate * busier),
                            vectors=self.vectors, link_baud=self.link_baud)
        text = f"{rate:,.0f} vectors/s ({rate * busier / 1e3:,.1f} kB/s payload)"
        if self.link_baud:
            share = rate * busier * 10 / self.link_baud  # 8N1: 10 bits a byte
            self.figures["share_of_link_rate"] = round(share, 3)
            text += f" = {share:.0%} of what {self.link_baud:g} baud carries"
            need(share >= 0.5, f"only {share:.0%} of the link rate")
        else:
            text += " (unpaced link: no baud rate to compare with)"
        if self.link.latency_s:
            self.figures["max_reply_latency_s"] = round(max(self.link.latency_s), 4)
        return text

    CHECKS = ("hello", "ping", "status", "config", "limits", "read", "vmm", "program_needs_arm", "program",
              "board_limits", "replay", "arm", "route", "temperature", "unknown_command", "bad_version",
              "corrupt_crc", "bad_length", "framing", "boot_id", "arm_timeout", "throughput")


def run_conformance(url: str, *, baudrate: int = 921600, link_baud: float | None = None, timeout: float = 0.5,
                    vectors: int = 4096, only: tuple[str, ...] = (),
                    progress: Callable[[CheckResult], None] | None = None) -> Report:
    """Run the suite against the board at ``url``; ``link_baud`` (bits/s) is the rate
    the throughput check is held against (None: an unpaced link such as a pty).
    A port that does not open is a :class:`~drivers.protocol.LinkError`."""
    report = Report(url)
    try:
        link = RawLink(url, baudrate, timeout)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise p.LinkError(f"cannot open the test board at {url!r}: {exc}") from None
    suite = Suite(link, url, baudrate, link_baud, timeout, vectors)
    try:
        link.write(p.DELIMITER)
        link.drain(0.05)
        for name in Suite.CHECKS:
            if only and name not in only and name != "hello":
                continue
            t0 = time.monotonic()
            try:
                result = CheckResult(name, True, getattr(suite, f"check_{name}")(), 0.0)
            except NotApplicable as exc:
                result = CheckResult(name, None, str(exc), 0.0)
            except (Failed, p.PayloadError, p.BoardError, ValueError) as exc:
                result = CheckResult(name, False, str(exc), 0.0)
            except (serial.SerialException, OSError) as exc:
                result = CheckResult(name, False, f"link lost: {exc}", 0.0)
            result.seconds = time.monotonic() - t0
            report.checks.append(result)
            if progress:
                progress(result)
            if name == "hello" and not result.ok:
                break  # nothing else can be read without HELLO
            link.drain(0.01)
        if suite.info is not None:
            i = suite.info
            report.info = {"firmware": i.firmware, "board_serial": i.board_serial, "chip_id": i.chip_id,
                           "protocol_version": i.protocol_version, "max_payload": i.max_payload,
                           "capabilities": [c.name for c in Capability if i.capabilities & c],
                           "arm_timeout_s": i.arm_timeout_s}
        report.figures = suite.figures
    finally:
        try:
            link.write(p.DELIMITER + p.request(link.next_seq(), C.ARM, p.encode_flag(False)))
            link.drain(0.05)
        except (serial.SerialException, OSError):
            pass
        link.close()
    return report
