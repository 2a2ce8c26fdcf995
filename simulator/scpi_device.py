"""A tiny SCPI command engine for emulated instruments: lines in, replies out.

Headers match in short or long form, case-insensitively, with optional nodes and
numeric suffixes, as in SCPI-99: the pattern ``"[SENSe#]:CURRent[:DC]:PROTection[:LEVel]"``
accepts ``:SENS:CURR:PROT``, ``CURR:PROT:LEV`` and ``:sense1:current:dc:protection``.
``#`` marks a numeric suffix passed to the handler. Several commands may share one
line separated by ``;``. Errors go to a real error queue (``SYSTem:ERRor?``, 10
entries, ``-350`` on overflow) and set the IEEE 488.2 event status bits read by
``*ESR?``. Pure state machines: no sockets here (see :mod:`simulator.scpi_server`).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from typing import Callable

Reply = str | bytes | None
Handler = Callable[["Call"], Reply]


class ScpiError(Exception):
    """Raised by a handler: pushed to the error queue as ``code,"message"``."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{code},{message}")
        self.code, self.message = code, message


UNDEFINED_HEADER = (-113, "Undefined header")
DATA_OUT_OF_RANGE = (-222, "Data out of range")
ILLEGAL_VALUE = (-224, "Illegal parameter value")
MISSING_PARAMETER = (-109, "Missing parameter")
DATA_TYPE = (-104, "Data type error")
SETTINGS_CONFLICT = (-221, "Settings conflict")
QUEUE_OVERFLOW = (-350, "Queue overflow")
QUERY_UNTERMINATED = (-420, "Query UNTERMINATED")


def _node_regex(node: str) -> str:
    """Regex of one mnemonic, e.g. ``PROTection`` -> PROT|PROTECTION; ``CHANnel#``."""
    optional = node.startswith("[") and node.endswith("]")
    name = node.strip("[]").lstrip(":")
    suffix = name.endswith("#")
    name = name.rstrip("#")
    short = "".join(ch for ch in name if ch.isupper() or ch.isdigit() or ch == "*")
    forms = sorted({re.escape(short), re.escape(name.upper())}, key=len, reverse=True)
    body = "(?:" + "|".join(forms) + ")" + (r"(\d*)" if suffix else "")
    return f"(?::{body})?" if optional else f":{body}"


def compile_header(pattern: str) -> re.Pattern:
    nodes = re.findall(r"\[:?[^\]]+\]|:?[^:\[]+", pattern)
    return re.compile("^" + "".join(_node_regex(n) for n in nodes) + "$", re.IGNORECASE)


class Call:
    """One parsed command: ``header`` text, ``query`` flag, argument text, suffixes."""

    __slots__ = ("header", "query", "text", "suffixes")

    def __init__(self, header: str, query: bool, text: str, suffixes: tuple[str, ...]):
        self.header, self.query, self.text, self.suffixes = header, query, text, suffixes

    def suffix(self, i: int = 0, default: int = 1) -> int:
        s = self.suffixes[i] if i < len(self.suffixes) else ""
        return int(s) if s else default

    @property
    def args(self) -> list[str]:
        return [a.strip() for a in self.text.split(",")] if self.text.strip() else []

    def arg(self, i: int = 0) -> str:
        a = self.args
        if i >= len(a):
            raise ScpiError(*MISSING_PARAMETER)
        return a[i]

    def number(self, i: int = 0, lo: float = float("-inf"), hi: float = float("inf")) -> float:
        text = self.arg(i)
        special = {"MIN": lo, "MINIMUM": lo, "MAX": hi, "MAXIMUM": hi}
        if text.upper() in special and abs(special[text.upper()]) != float("inf"):
            return special[text.upper()]
        try:
            value = float(text)
        except ValueError:
            raise ScpiError(*DATA_TYPE) from None
        if not lo <= value <= hi:
            raise ScpiError(*DATA_OUT_OF_RANGE)
        return value

    def boolean(self, i: int = 0) -> bool:
        text = self.arg(i).upper()
        if text in ("1", "ON"):
            return True
        if text in ("0", "OFF"):
            return False
        raise ScpiError(*ILLEGAL_VALUE)

    def choice(self, choices: dict[str, str], i: int = 0) -> str:
        """Match an enumerated value in short/long form; returns its canonical name."""
        text = self.arg(i).strip('"').upper()
        for pattern, canon in choices.items():
            if compile_header(":" + pattern).match(":" + text):
                return canon
        raise ScpiError(*ILLEGAL_VALUE)


class ScpiDevice:
    """Base of an emulated instrument: a command table, error queue and status byte.

    Subclasses call :meth:`command` in ``__init__`` (or override :meth:`commands`).
    Thread-safe: one lock around each line, as instruments handle one command at a time.
    """

    idn = "LABKIT,EMULATED,0,0"
    queue_size = 10
    error_format = '{code:d},"{message}"'

    def __init__(self):
        self._table: list[tuple[re.Pattern, Handler]] = []
        self.errors: deque[tuple[int, str]] = deque()
        self.esr = 0
        self.lock = threading.RLock()
        self.log: deque[str] = deque(maxlen=1000)  # every line received, for tests
        self.command("*IDN", lambda c: self.idn if c.query else self._no_set())
        self.command("*RST", lambda c: self._rst(c))
        self.command("*CLS", lambda c: self._cls())
        self.command("*OPC", lambda c: "1" if c.query else None)
        self.command("*WAI", lambda c: None)
        self.command("*ESR", lambda c: self._read_esr() if c.query else self._no_set())

    # -- table
    def command(self, pattern: str, handler: Handler) -> None:
        if not pattern.startswith("*") and not pattern.startswith((":", "[")):
            pattern = ":" + pattern
        self._table.append((compile_header(pattern) if not pattern.startswith("*") else
                            re.compile("^" + re.escape(pattern) + "$", re.IGNORECASE), handler))

    def enable_error_queue(self) -> None:
        """Register ``SYSTem:ERRor[:NEXT]?`` (SCPI instruments; not all have it)."""
        self.command("SYSTem:ERRor[:NEXT]", lambda c: self._next_error() if c.query else self._no_set())

    # -- error queue and status
    def push_error(self, code: int, message: str) -> None:
        if len(self.errors) >= self.queue_size:
            self.errors[-1] = QUEUE_OVERFLOW
        else:
            self.errors.append((code, message))
        bit = {1: 5, 2: 4, 3: 3, 4: 2}.get(-code // 100, 3)  # CME, EXE, DDE, QYE; device errors: DDE
        self.esr |= 1 << bit

    def _next_error(self) -> str:
        code, message = self.errors.popleft() if self.errors else (0, "No error")
        return self.error_format.format(code=code, message=message)

    def _read_esr(self) -> str:
        value, self.esr = self.esr, 0
        return str(value)

    def _cls(self) -> None:
        self.errors.clear()
        self.esr = 0

    def _rst(self, call: Call) -> None:
        if call.query:
            self._no_set()
        self.reset()

    def _no_set(self):
        raise ScpiError(*UNDEFINED_HEADER)

    def reset(self) -> None:
        """``*RST``: restore defaults (subclasses extend)."""

    # -- the engine
    def handle(self, line: str) -> Reply:
        """Process one received line; returns the reply (text or binary) or None."""
        with self.lock:
            self.log.append(line)
            replies: list[str | bytes] = []
            for part in _split_commands(line):
                reply = self._one(part)
                if reply is not None:
                    replies.append(reply)
            if not replies:
                return None
            if len(replies) == 1:
                return replies[0]
            if any(isinstance(r, bytes) for r in replies):
                return b";".join(r if isinstance(r, bytes) else r.encode() for r in replies)
            return ";".join(replies)

    def _one(self, text: str) -> Reply:
        text = text.strip()
        if not text:
            return None
        header, _, args = text.partition(" ")
        query = header.endswith("?")
        header = header.rstrip("?")
        if not header.startswith(("*", ":")):
            header = ":" + header
        for pattern, handler in self._table:
            m = pattern.match(header)
            if m:
                try:
                    return handler(Call(header, query, args, tuple(g or "" for g in m.groups())))
                except ScpiError as err:
                    self.push_error(err.code, err.message)
                    return None
        self.push_error(*UNDEFINED_HEADER)
        return None


def _split_commands(line: str) -> list[str]:
    parts, cur, quoted = [], [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def ieee_block(data: bytes) -> bytes:
    """IEEE 488.2 definite-length block: ``#<n><length><data>``."""
    length = str(len(data))
    return b"#" + str(len(length)).encode() + length.encode() + data
