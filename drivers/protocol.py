"""The chip test-board wire protocol: framing, command and status codes, payload codecs.

Pure functions and dataclasses, no I/O: the host side of the protocol specified in
``docs/board-protocol.md`` (used by :mod:`drivers.board` and :mod:`drivers.conformance`).
Boards implement the specification on their own (the Python emulator in
:mod:`simulator.wire`, the reference firmware in ``firmware/``), so a misreading on one
side is caught by the other.

Frame on the wire::

    COBS( header | payload | crc32 ) 0x00

    header   = version u8 | seq u16 | command u8 | status u8 | length u16   (little-endian)
    command  : bit 7 set on replies (``REPLY_BIT``), low 7 bits the :class:`Command`
    status   : :class:`Status`; 0 in requests
    length   : payload bytes (at most the board's ``max_payload``, announced by HELLO)
    crc32    : CRC-32 (IEEE 802.3, reflected, poly 0x04C11DB7, init and xor-out 0xFFFFFFFF,
               i.e. ``zlib.crc32``) over header and payload, stored little-endian

COBS (consistent overhead byte stuffing) removes every 0x00 from the frame, so 0x00 is
a pure delimiter: a receiver resynchronises at the next 0x00 after any garbage. The
overhead is one byte per 254 bytes plus one, so a full VMM batch frame is over 99 %
payload.

Units in payloads are SI as IEEE-754 little-endian float64 (volts, seconds, amperes,
kelvin), exact round-trips; the bulk VMM data are compact: input pulse widths as u16
ticks of the input clock (``T / 2**input_bits``), outputs as u16 TDC counts
(``tdc_lsb_s`` each). A reply whose status is not OK carries a UTF-8 message.
"""

from __future__ import annotations

import enum
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from cobs import cobs as _cobs

from labkit.backend import BackendError, Datasheet, Geometry, SafetyEnvelope, SafetyError, VmmSettings

PROTOCOL_VERSION = 1
REPLY_BIT = 0x80
DELIMITER = b"\x00"
HEADER = struct.Struct("<BHBBH")  # version, seq, command, status, length
CRC = struct.Struct("<I")
OVERHEAD = HEADER.size + CRC.size  # bytes around the payload before stuffing
MAX_LENGTH = 0xFFFF  # largest payload the length field can carry
SEQ_MODULO = 1 << 16


class Command(enum.IntEnum):
    """Request codes (replies carry ``code | REPLY_BIT``)."""

    HELLO = 0x01  # -> BoardInfo (versions, serial, chip id, capabilities, max payload, datasheet)
    PING = 0x02  # echo of the payload
    STATUS = 0x03  # -> BoardStatus (armed, pulse counters, boot id)
    GET_CONFIG = 0x04  # -> VmmSettings
    CONFIGURE = 0x05  # VmmSettings -> VmmSettings applied
    RESET = 0x06  # -> empty reply, then the board restarts (new boot id, disarmed, cache gone)
    READ = 0x10  # cells -> currents (A)
    VMM = 0x11  # input ticks (B, rows) -> TDC counts (B, cols)
    ROUTE = 0x12  # (row, col) -> the same: that cell on the SMU test port ((255, 255): none)
    PROGRAM = 0x20  # (row, col, V, s) per cell -> pulses applied (not idempotent)
    ERASE = 0x21  # V, s, rows -> pulses applied (not idempotent)
    ARM = 0x22  # u8 on/off -> u8 armed (programming needs the board armed)
    GET_LIMITS = 0x30  # -> SafetyEnvelope of the board
    SET_LIMITS = 0x31  # SafetyEnvelope (may only tighten) -> SafetyEnvelope applied
    TEMPERATURE = 0x40  # -> kelvin (NaN: no sensor)


#: Commands whose repetition is harmless: the host may retry them freely.
IDEMPOTENT = frozenset(Command) - {Command.PROGRAM, Command.ERASE, Command.RESET}


class Status(enum.IntEnum):
    OK = 0
    BAD_CRC = 1  # frame failed its CRC; nothing executed
    BAD_FRAME = 2  # CRC fine but header/length inconsistent; nothing executed
    BAD_VERSION = 3  # protocol version not spoken by the board
    UNKNOWN_COMMAND = 4
    BAD_ARGUMENT = 5  # malformed payload or unknown cell/row
    OUT_OF_RANGE = 6  # outside the board's safety limits; nothing applied
    NOT_ARMED = 7  # programming/erase while disarmed; nothing applied
    BUSY = 8  # board busy; nothing executed, try again
    HARDWARE_FAULT = 9  # the board failed to carry out the command


class Capability(enum.IntFlag):
    """HELLO's capability bits: the host sends a command only where its bit is set."""

    READ = 1  # READ
    VMM = 2  # VMM
    PROGRAM = 4  # PROGRAM (with ARM)
    ERASE = 8  # ERASE (with ARM)
    TEMPERATURE = 16  # TEMPERATURE has a sensor behind it
    ROUTE = 32  # ROUTE: the board can put a cell on the SMU test port
    RESET = 64  # RESET


#: The capability a command needs (commands not listed need none).
REQUIRES = {
    Command.READ: Capability.READ,
    Command.VMM: Capability.VMM,
    Command.PROGRAM: Capability.PROGRAM,
    Command.ERASE: Capability.ERASE,
    Command.TEMPERATURE: Capability.TEMPERATURE,
    Command.ROUTE: Capability.ROUTE,
    Command.RESET: Capability.RESET,
}


# ------------------------------------------------------------------------ errors


class BoardError(BackendError):
    """The test board refused or failed a command (``status``, ``command`` say which)."""

    def __init__(self, message: str, status: Status | None = None, command: int | None = None):
        super().__init__(message)
        self.status = status
        self.command = command


class LinkError(BoardError):
    """The serial link failed: no answer, garbled frames, or the port went away."""


class CrcError(LinkError):
    """A frame failed its CRC check (status BAD_CRC)."""


class FramingError(LinkError):
    """A frame with a consistent CRC but an inconsistent header (status BAD_FRAME)."""


class VersionError(BoardError):
    """The board does not speak this protocol version."""


class UnknownCommandError(BoardError):
    """The board does not know the command (older firmware?)."""


class BadArgumentError(BoardError, ValueError):
    """The board rejected a malformed argument; nothing was applied."""


class OutOfRangeError(BoardError, SafetyError):
    """The board's own safety limits rejected the request; nothing was applied."""


class NotArmedError(BoardError, SafetyError):
    """Programming or erase while the board's high voltage is not armed; nothing applied."""


class BusyError(BoardError):
    """The board was busy and did not execute the command."""


class HardwareFaultError(BoardError):
    """The board reported a hardware fault while carrying out the command."""


class PayloadError(ValueError):
    """A payload does not decode (wrong length or content)."""


STATUS_ERRORS: dict[Status, type[BoardError]] = {
    Status.BAD_CRC: CrcError,
    Status.BAD_FRAME: FramingError,
    Status.BAD_VERSION: VersionError,
    Status.UNKNOWN_COMMAND: UnknownCommandError,
    Status.BAD_ARGUMENT: BadArgumentError,
    Status.OUT_OF_RANGE: OutOfRangeError,
    Status.NOT_ARMED: NotArmedError,
    Status.BUSY: BusyError,
    Status.HARDWARE_FAULT: HardwareFaultError,
}


def error_for(status: int, command: int, message: str = "") -> BoardError:
    """The exception for an error reply: ``status`` -> class, with the board's message."""
    try:
        st = Status(status)
    except ValueError:
        return BoardError(f"{command_name(command)}: unknown status {status}: {message}", None, command)
    text = f"board refused {command_name(command)}: {st.name}"
    return STATUS_ERRORS.get(st, BoardError)(f"{text}: {message}" if message else text, st, command)


def command_name(command: int) -> str:
    try:
        return Command(command & ~REPLY_BIT).name
    except ValueError:
        return f"command 0x{command:02x}"


# ----------------------------------------------------------------------- COBS


def cobs_encode(data: bytes) -> bytes:
    """Byte-stuff ``data`` so that it contains no 0x00 (the frame delimiter): the
    ``cobs`` package (C extension)."""
    return _cobs.encode(bytes(data))


def cobs_decode(data: bytes) -> bytes:
    """Inverse of :func:`cobs_encode`; ``PayloadError`` on a malformed block."""
    try:
        return _cobs.decode(bytes(data))
    except _cobs.DecodeError as exc:
        raise PayloadError(f"malformed COBS: {exc}") from None


def cobs_max_size(n: int) -> int:
    """Largest stuffed size of ``n`` bytes."""
    return n + n // 254 + 1


# --------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``command`` is the bare code; ``reply`` says which direction."""

    seq: int
    command: int
    payload: bytes = b""
    status: int = Status.OK
    reply: bool = False
    version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return encode_frame(self)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def error(self) -> BoardError:
        """The exception this (error) reply stands for."""
        return error_for(self.status, self.command, decode_text(self.payload))


@dataclass(frozen=True)
class FrameError:
    """A chunk between delimiters that is not a valid frame; ``seq``/``command`` are what
    the (untrustworthy) header said, if one could be read."""

    reason: str  # "cobs", "short", "crc", "length", "overflow"
    size: int
    seq: int | None = None
    command: int | None = None


def encode_frame(frame: Frame) -> bytes:
    """Wire bytes of ``frame``, delimiter included."""
    if not 0 <= frame.seq < SEQ_MODULO:
        raise ValueError(f"seq={frame.seq}; expected 0..65535")
    if len(frame.payload) > MAX_LENGTH:
        raise ValueError(f"payload of {len(frame.payload)} bytes; at most {MAX_LENGTH}")
    cmd = (frame.command & 0x7F) | (REPLY_BIT if frame.reply else 0)
    body = HEADER.pack(frame.version, frame.seq, cmd, frame.status, len(frame.payload)) + bytes(frame.payload)
    return cobs_encode(body + CRC.pack(zlib.crc32(body))) + DELIMITER


def request(seq: int, command: int, payload: bytes = b"") -> bytes:
    """Wire bytes of a request."""
    return encode_frame(Frame(seq, command, payload))


def reply(seq: int, command: int, payload: bytes = b"", status: int = Status.OK) -> bytes:
    """Wire bytes of a reply."""
    return encode_frame(Frame(seq, command, payload, status, reply=True))


def error_reply(seq: int, command: int, status: int, message: str) -> bytes:
    return reply(seq, command, encode_text(message), status)


def decode_frame(stuffed: bytes) -> Frame | FrameError:
    """Decode the bytes between two delimiters (without the delimiters)."""
    try:
        raw = cobs_decode(stuffed)
    except PayloadError:
        return FrameError("cobs", len(stuffed))
    if len(raw) < OVERHEAD:
        return FrameError("short", len(stuffed))
    version, seq, cmd, status, length = HEADER.unpack_from(raw)
    body = raw[: -CRC.size]
    if CRC.unpack_from(raw, len(raw) - CRC.size)[0] != zlib.crc32(body):
        return FrameError("crc", len(stuffed), seq, cmd & 0x7F)
    if length != len(body) - HEADER.size:
        return FrameError("length", len(stuffed), seq, cmd & 0x7F)
    return Frame(seq, cmd & 0x7F, bytes(body[HEADER.size :]), status, bool(cmd & REPLY_BIT), version)


def wire_size(payload_len: int, payload: bytes | None = None) -> int:
    """Bytes on the wire for a frame with this payload (exact when ``payload`` is given)."""
    if payload is not None:
        return len(encode_frame(Frame(0, 0, payload)))
    return cobs_max_size(payload_len + OVERHEAD) + 1


class FrameDecoder:
    """Streaming decoder: feed it any bytes, get complete frames and frame errors.

    Resynchronises at every 0x00; a run of more than ``max_wire`` bytes without a
    delimiter is discarded (one ``overflow`` error), so garbage never grows the buffer
    without bound. Never raises on input.
    """

    def __init__(self, max_payload: int = MAX_LENGTH):
        self.max_wire = cobs_max_size(max_payload + OVERHEAD)
        self._buf = bytearray()
        self._discarding = False

    def reset(self) -> None:
        self._buf.clear()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes held while waiting for a delimiter."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        data = bytes(data)
        out: list[Frame | FrameError] = []
        start = 0
        while True:
            end = data.find(0, start)
            if end < 0:
                break
            chunk = data[start:end]
            start = end + 1
            if self._discarding:
                self._discarding = False
                self._buf.clear()
                continue
            if self._buf:
                self._buf += chunk
                chunk, self._buf = bytes(self._buf), bytearray()
            if not chunk:
                continue  # empty frame: a lone delimiter (resynchronisation)
            if len(chunk) > self.max_wire:
                out.append(FrameError("overflow", len(chunk)))
                continue
            out.append(decode_frame(chunk))
        rest = data[start:]
        if not self._discarding and rest:
            self._buf += rest
            if len(self._buf) > self.max_wire:
                out.append(FrameError("overflow", len(self._buf)))
                self._buf.clear()
                self._discarding = True
        return out


# ---------------------------------------------------------------- payloads
# Shared field codecs


def encode_text(text: str, limit: int = 255) -> bytes:
    return text.encode("utf-8")[:limit]


def decode_text(data: bytes) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _pack_str(text: str) -> bytes:
    raw = text.encode("utf-8")[:255]
    return bytes([len(raw)]) + raw


def _unpack_str(data: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(data) or pos + 1 + data[pos] > len(data):
        raise PayloadError("string field runs past the payload")
    n = data[pos]
    return decode_text(data[pos + 1 : pos + 1 + n]), pos + 1 + n


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise PayloadError(f"{what} payload of {len(data)} bytes; expected {size}")


def _count(data: bytes, what: str, header: int = 2) -> int:
    if len(data) < header:
        raise PayloadError(f"{what} payload of {len(data)} bytes; expected at least {header}")
    return struct.unpack_from("<H", data)[0]


# HELLO -------------------------------------------------------------------

_DATASHEET = struct.Struct("<7d")
_HELLO_HEAD = struct.Struct("<BIIHBBB")  # version, boot id, capabilities, max payload, rows, cols, pairs


@dataclass(frozen=True)
class BoardInfo:
    """What a board says about itself in reply to HELLO."""

    protocol_version: int
    firmware: str
    board_serial: str
    chip_id: str
    capabilities: Capability
    max_payload: int
    geometry: Geometry = field(default_factory=Geometry)
    datasheet: Datasheet = field(default_factory=Datasheet)
    boot_id: int = 0  # changes when the board restarts (its reply cache is then gone)
    arm_timeout_s: float | None = None  # the board disarms after this long without a frame (None: not said)


def encode_hello_reply(info: BoardInfo) -> bytes:
    g, d = info.geometry, info.datasheet
    head = _HELLO_HEAD.pack(
        info.protocol_version, info.boot_id, int(info.capabilities), info.max_payload, g.rows, g.cols, len(g.pairs)
    )
    pairs = bytes(v for pair in g.pairs for v in pair)
    strings = _pack_str(info.firmware) + _pack_str(info.board_serial) + _pack_str(info.chip_id)
    sheet = _DATASHEET.pack(
        d.precharge_v,
        d.threshold_v,
        d.bitline_capacitance_f,
        d.reference_current_a,
        d.cell_current_range_a[0],
        d.cell_current_range_a[1],
        d.erased_current_a,
    )
    tail = b"" if info.arm_timeout_s is None else struct.pack("<I", round(info.arm_timeout_s * 1000))
    return head + pairs + strings + sheet + tail


def decode_hello_reply(data: bytes) -> BoardInfo:
    if len(data) < _HELLO_HEAD.size:
        raise PayloadError(f"HELLO reply of {len(data)} bytes; too short")
    version, boot, caps, max_payload, rows, cols, npairs = _HELLO_HEAD.unpack_from(data)
    pos = _HELLO_HEAD.size
    if pos + 2 * npairs > len(data):
        raise PayloadError("HELLO reply: column pairs run past the payload")
    flat = data[pos : pos + 2 * npairs]
    pairs = tuple((flat[2 * k], flat[2 * k + 1]) for k in range(npairs))
    pos += 2 * npairs
    firmware, pos = _unpack_str(data, pos)
    serial, pos = _unpack_str(data, pos)
    chip, pos = _unpack_str(data, pos)
    if len(data) < pos + _DATASHEET.size:
        raise PayloadError("HELLO reply: datasheet runs past the payload")
    pv, tv, cap, iref, lo, hi, erased = _DATASHEET.unpack_from(data, pos)
    pos += _DATASHEET.size
    arm_timeout = struct.unpack_from("<I", data, pos)[0] / 1000 if len(data) >= pos + 4 else None
    # later revisions may append fields: bytes after the ones known here are ignored
    return BoardInfo(
        protocol_version=version,
        firmware=firmware,
        board_serial=serial,
        chip_id=chip,
        capabilities=Capability(caps & sum(Capability)),
        max_payload=max_payload,
        geometry=Geometry(rows, cols, pairs),
        datasheet=Datasheet(pv, tv, cap, iref, (lo, hi), erased),
        boot_id=boot,
        arm_timeout_s=arm_timeout,
    )


# STATUS ------------------------------------------------------------------

_STATUS = struct.Struct("<BIIIIId")


@dataclass(frozen=True)
class BoardStatus:
    armed: bool
    boot_id: int
    program_pulses: int  # programming pulses applied since boot
    erase_pulses: int  # erase pulses (rows) applied since boot
    frames: int  # valid frames received since boot
    crc_errors: int  # frames rejected for CRC or framing since boot
    uptime_s: float


def encode_status_reply(st: BoardStatus) -> bytes:
    m = 0xFFFFFFFF
    return _STATUS.pack(
        int(st.armed),
        st.boot_id & m,
        st.program_pulses & m,
        st.erase_pulses & m,
        st.frames & m,
        st.crc_errors & m,
        st.uptime_s,
    )


def decode_status_reply(data: bytes) -> BoardStatus:
    _need(data, _STATUS.size, "STATUS reply")
    armed, boot, prog, erase, frames, crc, up = _STATUS.unpack(data)
    return BoardStatus(bool(armed), boot, prog, erase, frames, crc, up)


# CONFIGURE / GET_CONFIG --------------------------------------------------

_SETTINGS = struct.Struct("<ddBBd")


def encode_settings(s: VmmSettings) -> bytes:
    """integration time (s), read voltage (V), input bits, TDC bits, TDC LSB (s)."""
    return _SETTINGS.pack(s.integration_time_s, s.read_voltage_v, s.input_bits, s.tdc_bits, s.tdc_lsb_s)


def decode_settings(data: bytes) -> VmmSettings:
    _need(data, _SETTINGS.size, "settings")
    t, v, ib, tb, lsb = _SETTINGS.unpack(data)
    return VmmSettings(integration_time_s=t, read_voltage_v=v, input_bits=ib, tdc_bits=tb, tdc_lsb_s=lsb)


# READ --------------------------------------------------------------------


def encode_cells(cells) -> bytes:
    """u16 count, then (row u8, col u8) per cell."""
    a = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    if a.size and (a.min() < 0 or a.max() > 255):
        raise ValueError(f"cell index {a.min() if a.min() < 0 else a.max()} does not fit a u8")
    return struct.pack("<H", len(a)) + a.astype(np.uint8).tobytes()


def decode_cells(data: bytes) -> np.ndarray:
    n = _count(data, "cell list")
    _need(data, 2 + 2 * n, "cell list")
    return np.frombuffer(data, np.uint8, 2 * n, 2).reshape(n, 2).astype(np.int64)


def encode_currents(currents) -> bytes:
    """u16 count, then float64 amperes per cell."""
    a = np.asarray(currents, dtype="<f8").ravel()
    return struct.pack("<H", len(a)) + a.tobytes()


def decode_currents(data: bytes) -> np.ndarray:
    n = _count(data, "READ reply")
    _need(data, 2 + 8 * n, "READ reply")
    return np.frombuffer(data, "<f8", n, 2).astype(float)


# VMM ---------------------------------------------------------------------

_BATCH = struct.Struct("<HB")  # vectors, values per vector


def _encode_u16_batch(values, what: str) -> bytes:
    a = np.asarray(values)
    if a.ndim != 2:
        raise ValueError(f"{what} of shape {a.shape}; expected (B, n)")
    if a.size and (a.min() < 0 or a.max() > 0xFFFF):
        raise ValueError(f"{what} outside 0..65535")
    if a.shape[0] > 0xFFFF or a.shape[1] > 255:
        raise ValueError(f"{what} of shape {a.shape} does not fit one frame")
    return _BATCH.pack(*a.shape) + a.astype("<u2").tobytes()


def _decode_u16_batch(data: bytes, what: str) -> np.ndarray:
    if len(data) < _BATCH.size:
        raise PayloadError(f"{what} payload of {len(data)} bytes; expected at least {_BATCH.size}")
    b, n = _BATCH.unpack_from(data)
    _need(data, _BATCH.size + 2 * b * n, what)
    return np.frombuffer(data, "<u2", b * n, _BATCH.size).reshape(b, n).astype(np.uint16)


def encode_vmm_request(ticks) -> bytes:
    """u16 batch size B, u8 rows, then B x rows u16 input ticks (row-major)."""
    return _encode_u16_batch(ticks, "VMM input ticks")


def decode_vmm_request(data: bytes) -> np.ndarray:
    return _decode_u16_batch(data, "VMM request")


def encode_vmm_reply(counts) -> bytes:
    """u16 batch size B, u8 columns, then B x cols u16 TDC counts."""
    return _encode_u16_batch(counts, "VMM counts")


def decode_vmm_reply(data: bytes) -> np.ndarray:
    return _decode_u16_batch(data, "VMM reply")


def vmm_batch_limit(max_payload: int, rows: int, cols: int) -> int:
    """Most vectors per VMM frame so that request and reply fit ``max_payload``."""
    return max(0, min(0xFFFF, (max_payload - _BATCH.size) // (2 * max(rows, cols, 1))))


def input_clock_s(settings: VmmSettings) -> float:
    """One input tick: ``T / 2**input_bits`` (s)."""
    return settings.integration_time_s / 2**settings.input_bits


def widths_to_ticks(widths_s, settings: VmmSettings) -> np.ndarray:
    """Pulse widths (s) -> u16 ticks, rounded to the nearest tick, clipped to [0, 2**bits]."""
    ticks = np.rint(np.asarray(widths_s, dtype=float) / input_clock_s(settings))
    return np.clip(ticks, 0, 2**settings.input_bits).astype(np.uint16)


def ticks_to_widths(ticks, settings: VmmSettings) -> np.ndarray:
    """u16 ticks -> pulse widths (s); exact for power-of-two tick sizes."""
    return np.asarray(ticks, dtype=float) * input_clock_s(settings)


def times_to_counts(times_s, settings: VmmSettings) -> np.ndarray:
    """Crossing times (s) -> TDC counts, rounded, clipped to the u16 range."""
    c = np.rint(np.nan_to_num(np.asarray(times_s, dtype=float) / settings.tdc_lsb_s, nan=0xFFFF))
    return np.clip(c, 0, 0xFFFF).astype(np.uint16)


def counts_to_times(counts, settings: VmmSettings) -> np.ndarray:
    return np.asarray(counts, dtype=float) * settings.tdc_lsb_s


# PROGRAM / ERASE ---------------------------------------------------------

_PULSE = np.dtype([("row", "u1"), ("col", "u1"), ("v", "<f8"), ("w", "<f8")])
_APPLIED = struct.Struct("<HI")  # pulses applied by this frame, total since boot
_ERASE = struct.Struct("<ddH")


def encode_program_request(cells, voltage_v, width_s) -> bytes:
    """u16 count, then per cell: row u8, col u8, voltage f64 (V), width f64 (s)."""
    a = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    if a.size and (a.min() < 0 or a.max() > 255):
        raise ValueError("cell index does not fit a u8")
    rec = np.zeros(len(a), _PULSE)
    rec["row"], rec["col"] = a[:, 0], a[:, 1]
    rec["v"] = np.broadcast_to(np.asarray(voltage_v, dtype=float), (len(a),))
    rec["w"] = np.broadcast_to(np.asarray(width_s, dtype=float), (len(a),))
    return struct.pack("<H", len(a)) + rec.tobytes()


def decode_program_request(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = _count(data, "PROGRAM request")
    _need(data, 2 + _PULSE.itemsize * n, "PROGRAM request")
    rec = np.frombuffer(data, _PULSE, n, 2)
    cells = np.stack([rec["row"], rec["col"]], axis=1).astype(np.int64)
    return cells, rec["v"].astype(float), rec["w"].astype(float)


def encode_erase_request(rows, voltage_v: float, width_s: float) -> bytes:
    """voltage f64 (V), width f64 (s), u16 count, then u8 row indices."""
    r = np.asarray(rows, dtype=np.int64).ravel()
    if r.size and (r.min() < 0 or r.max() > 255):
        raise ValueError("row index does not fit a u8")
    return _ERASE.pack(float(voltage_v), float(width_s), len(r)) + r.astype(np.uint8).tobytes()


def decode_erase_request(data: bytes) -> tuple[np.ndarray, float, float]:
    if len(data) < _ERASE.size:
        raise PayloadError(f"ERASE request of {len(data)} bytes; expected at least {_ERASE.size}")
    v, w, n = _ERASE.unpack_from(data)
    _need(data, _ERASE.size + n, "ERASE request")
    return np.frombuffer(data, np.uint8, n, _ERASE.size).astype(np.int64), v, w


def encode_applied(applied: int, total: int) -> bytes:
    """PROGRAM/ERASE reply: u16 pulses applied by this frame, u32 total since boot."""
    return _APPLIED.pack(applied, total & 0xFFFFFFFF)


def decode_applied(data: bytes) -> tuple[int, int]:
    _need(data, _APPLIED.size, "PROGRAM/ERASE reply")
    return _APPLIED.unpack(data)


# ARM / LIMITS / TEMPERATURE ---------------------------------------------


def encode_flag(on: bool) -> bytes:
    return bytes([1 if on else 0])


def decode_flag(data: bytes) -> bool:
    _need(data, 1, "flag")
    if data[0] > 1:
        raise PayloadError(f"flag byte {data[0]}; expected 0 or 1")
    return bool(data[0])


_LIMITS = struct.Struct("<11d")


def encode_limits(env: SafetyEnvelope) -> bytes:
    """11 float64: max program V, max erase V, program width lo/hi (s), erase width
    lo/hi (s), read voltage lo/hi (V), integration time lo/hi (s), max compliance (A)."""
    return _LIMITS.pack(
        env.max_program_voltage_v,
        env.max_erase_voltage_v,
        *env.program_width_range_s,
        *env.erase_width_range_s,
        *env.read_voltage_range_v,
        *env.integration_time_range_s,
        env.max_compliance_a,
    )


def decode_limits(data: bytes) -> SafetyEnvelope:
    _need(data, _LIMITS.size, "limits")
    v = _LIMITS.unpack(data)
    return SafetyEnvelope(v[0], v[1], (v[2], v[3]), (v[4], v[5]), (v[6], v[7]), (v[8], v[9]), v[10])


def encode_route(cell: tuple[int, int] | None) -> bytes:
    """ROUTE request and reply: row u8, col u8; ``None`` (255, 255) disconnects the port."""
    if cell is None:
        return b"\xff\xff"
    r, c = (int(v) for v in cell)
    if not (0 <= r < 255 and 0 <= c < 255):
        raise ValueError(f"cell {cell!r} does not fit u8 indices below 255")
    return bytes([r, c])


def decode_route(data: bytes) -> tuple[int, int] | None:
    _need(data, 2, "ROUTE")
    return None if data == b"\xff\xff" else (data[0], data[1])


def encode_temperature(kelvin: float | None) -> bytes:
    return struct.pack("<d", math.nan if kelvin is None else float(kelvin))


def decode_temperature(data: bytes) -> float | None:
    _need(data, 8, "TEMPERATURE reply")
    k = struct.unpack("<d", data)[0]
    return None if math.isnan(k) else k
