"""The emulated board's side of the wire, written from ``docs/board-protocol.md`` alone.

It shares no code with the host codec (:mod:`drivers.protocol`): a misreading of the
specification on either side shows up as a failure against the other. Only the byte
stuffing comes from the same library (the ``cobs`` package), as the specification
allows.

:class:`Wire` holds every layout decision in one place (byte order, CRC, header), so a
test can build a deliberately wrong board by subclassing it (``ORDER = ">"``, another
``crc``) and watch the conformance suite fail.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass

from cobs import cobs

VERSION = 1
REPLY = 0x80
HEADER_BYTES = 7  # version u8, seq u16, command u8, status u8, length u16
CRC_BYTES = 4

# command codes (spec section 4)
HELLO, PING, STATUS, GET_CONFIG, CONFIGURE, RESET = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
READ, VMM, ROUTE = 0x10, 0x11, 0x12
PROGRAM, ERASE, ARM = 0x20, 0x21, 0x22
GET_LIMITS, SET_LIMITS, TEMPERATURE = 0x30, 0x31, 0x40
PULSE_COMMANDS = (PROGRAM, ERASE)

# status codes (spec section 5)
OK, BAD_CRC, BAD_FRAME, BAD_VERSION, UNKNOWN_COMMAND = 0, 1, 2, 3, 4
BAD_ARGUMENT, OUT_OF_RANGE, NOT_ARMED, BUSY, HARDWARE_FAULT = 5, 6, 7, 8, 9

# capability bits (spec section 6)
CAP_READ, CAP_VMM, CAP_PROGRAM, CAP_ERASE, CAP_TEMPERATURE, CAP_ROUTE, CAP_RESET = 1, 2, 4, 8, 16, 32, 64


class Malformed(ValueError):
    """A request payload that does not have the layout its command needs."""


@dataclass(frozen=True)
class Request:
    version: int
    seq: int
    command: int  # without the reply bit
    is_reply: bool
    payload: bytes
    crc: int  # as received (the replay key uses it)


@dataclass(frozen=True)
class Garbled:
    """Bytes between delimiters that are no frame. ``seq``/``command`` come from the
    header when one could be read (answers to BAD_CRC / BAD_FRAME use them)."""

    status: int | None  # BAD_CRC, BAD_FRAME, or None: nothing to answer
    seq: int = 0
    command: int = 0


class Wire:
    """Frame and payload layouts of protocol version 1 (little-endian, CRC-32/ISO-HDLC)."""

    ORDER = "<"

    # -- primitives
    def crc(self, data: bytes) -> int:
        """CRC-32: reflected polynomial 0xEDB88320, initial value and final xor 0xFFFFFFFF."""
        return binascii.crc32(data) & 0xFFFFFFFF

    def pack(self, fmt: str, *values) -> bytes:
        return struct.pack(self.ORDER + fmt, *values)

    def unpack(self, fmt: str, data: bytes, offset: int = 0) -> tuple:
        return struct.unpack_from(self.ORDER + fmt, data, offset)

    def size(self, fmt: str) -> int:
        return struct.calcsize(self.ORDER + fmt)

    # -- frames
    def reply(self, seq: int, command: int, status: int = OK, payload: bytes = b"") -> bytes:
        """Wire bytes of a reply: COBS(header | payload | crc) then 0x00."""
        body = self.pack("BHBBH", VERSION, seq & 0xFFFF, (command & 0x7F) | REPLY, status, len(payload)) + payload
        return cobs.encode(body + self.pack("I", self.crc(body))) + b"\x00"

    def error(self, seq: int, command: int, status: int, message: str) -> bytes:
        return self.reply(seq, command, status, message.encode("utf-8")[:200])

    def parse(self, stuffed: bytes) -> Request | Garbled:
        """One frame from the bytes between two delimiters."""
        try:
            raw = cobs.decode(stuffed)
        except cobs.DecodeError:
            return Garbled(None)
        if len(raw) < HEADER_BYTES + CRC_BYTES:
            return Garbled(None)
        version, seq, command, status, length = self.unpack("BHBBH", raw)
        body, (crc,) = raw[:-CRC_BYTES], self.unpack("I", raw, len(raw) - CRC_BYTES)
        if crc != self.crc(body):
            return Garbled(BAD_CRC, seq, command & 0x7F)
        if length != len(body) - HEADER_BYTES:
            return Garbled(BAD_FRAME, seq, command & 0x7F)
        return Request(version, seq, command & 0x7F, bool(command & REPLY), bytes(body[HEADER_BYTES:]), crc)

    # -- payload helpers
    def exact(self, data: bytes, fmt: str, what: str) -> tuple:
        if len(data) != self.size(fmt):
            raise Malformed(f"{what} payload of {len(data)} bytes; expected {self.size(fmt)}")
        return self.unpack(fmt, data)

    def counted(self, data: bytes, head: str, item: int, what: str) -> tuple[tuple, int]:
        """A header ``head`` whose last field counts records of ``item`` bytes after it."""
        hs = self.size(head)
        if len(data) < hs:
            raise Malformed(f"{what} payload of {len(data)} bytes; shorter than its header")
        fields = self.unpack(head, data)
        if len(data) != hs + item * fields[-1]:
            raise Malformed(f"{what} payload of {len(data)} bytes; its count says {hs + item * fields[-1]}")
        return fields, hs

    @staticmethod
    def text(value: str) -> bytes:
        raw = value.encode("utf-8")[:255]
        return bytes([len(raw)]) + raw


class StreamSplitter:
    """Cuts a byte stream at 0x00 delimiters; a run longer than ``limit`` bytes is
    dropped up to its delimiter (reported once as ``overflow``)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._held = bytearray()
        self._dropping = False

    def reset(self) -> None:
        self._held.clear()
        self._dropping = False

    def feed(self, data: bytes) -> list[bytes | None]:
        """Complete chunks (``None`` marks an overflow)."""
        out: list[bytes | None] = []
        pieces = bytes(data).split(b"\x00")
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            if not self._dropping:
                self._held += piece
                if len(self._held) > self.limit:
                    self._held.clear()
                    self._dropping = True
                    out.append(None)
            if not last:
                if not self._dropping and self._held:
                    out.append(bytes(self._held))
                self._held.clear()
                self._dropping = False
        return out
