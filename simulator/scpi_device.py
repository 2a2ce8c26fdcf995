"""A SCPI command engine for emulated instruments: lines in, replies out.

Syntax (SCPI-99 and IEEE 488.2, as the real instruments parse it):

- headers in short or long form, any case, optional nodes and numeric suffixes: the
  pattern ``"[SENSe#]:CURRent[:DC]:PROTection[:LEVel]"`` accepts ``:SENS:CURR:PROT``,
  ``CURR:PROT:LEV`` and ``:sense1:current:dc:protection``; ``#`` marks a suffix passed
  to the handler;
- an optional leading colon, also on common commands (``:*RST``);
- ``;`` chains program message units; a unit without a leading colon is first looked up
  under the path of the previous one (``:SOUR:VOLT 1;CURR 2`` sets ``:SOUR:CURR``), then
  from the root; replies of chained queries are joined with ``;``;
- arguments separated by ``,``; strings in double or single quotes (a doubled quote
  inside is one quote); ``MIN``/``MAX``/``DEF`` and ``MINimum``/``MAXimum``/``DEFault``
  for numbers; numeric suffixes with SI prefixes (``100mV``, ``1.5UA``, ``10MHZ``);
  booleans ``ON``/``OFF``/``1``/``0``;
- IEEE 488.2 common commands and status model: ``*IDN?``, ``*RST``, ``*CLS``,
  ``*ESE``/``*ESE?``, ``*ESR?``, ``*SRE``/``*SRE?``, ``*STB?`` (EAV, ESB and MSS/RQS
  summary bits plus the instrument's own), ``*OPC``/``*OPC?``, ``*WAI``, ``*TST?``,
  ``*OPT?``, ``*TRG``;
- an error queue (``SYSTem:ERRor[:NEXT]?``, ``SYSTem:ERRor:COUNt?``,
  ``SYSTem:ERRor:ALL?``, ``SYSTem:VERSion?``; instruments without one, like the
  Lake Shore, report through ``*ESR?`` only), ``-350`` on overflow, ESR bits set per
  error class.

Bounds, each answered with the proper SCPI error instead of work: at most
``max_units`` units per line and ``max_args`` arguments per unit (``-223,"Too much
data"``); the line length is bounded by the server (:mod:`simulator.scpi_server`).
Parsing is linear in the line length (regular-expression scans, no re-splitting per
argument) and happens outside the instrument lock; only the execution of each unit
holds it, so one client's long line never stalls another client for long.

Pure state machines: no sockets here.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict, deque
from typing import Callable

Reply = str | bytes | None
Handler = Callable[["Call"], Reply]


class ScpiError(Exception):
    """Raised by a handler: pushed to the error queue as ``code,"message"``."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{code},{message}")
        self.code, self.message = code, message


COMMAND_ERROR = (-100, "Command error")
INVALID_CHARACTER = (-101, "Invalid character")
SYNTAX_ERROR = (-102, "Syntax error")
DATA_TYPE = (-104, "Data type error")
PARAMETER_NOT_ALLOWED = (-108, "Parameter not allowed")
MISSING_PARAMETER = (-109, "Missing parameter")
UNDEFINED_HEADER = (-113, "Undefined header")
SUFFIX_OUT_OF_RANGE = (-114, "Header suffix out of range")
INVALID_SUFFIX = (-131, "Invalid suffix")
STRING_ERROR = (-150, "String data error")
EXECUTION_ERROR = (-200, "Execution error")
SETTINGS_CONFLICT = (-221, "Settings conflict")
DATA_OUT_OF_RANGE = (-222, "Data out of range")
TOO_MUCH_DATA = (-223, "Too much data")
ILLEGAL_VALUE = (-224, "Illegal parameter value")
DATA_STALE = (-230, "Data corrupt or stale")
DEVICE_ERROR = (-300, "Device-specific error")
QUEUE_OVERFLOW = (-350, "Queue overflow")
_STRICT = False  # tests of the emulators themselves may raise handler faults
QUERY_UNTERMINATED = (-420, "Query UNTERMINATED")

#: ESR bits (IEEE 488.2): operation complete, query, device-dependent, execution,
#: command error, power on.
OPC_BIT, QYE_BIT, DDE_BIT, EXE_BIT, CME_BIT, PON_BIT = 0, 2, 3, 4, 5, 7

_HEADER = re.compile(r"^:?(?:\*[A-Za-z]{2,4}|[A-Za-z][A-Za-z0-9_]*(?::[A-Za-z][A-Za-z0-9_]*)*)\??$")
_SPLIT_UNITS = re.compile(r"\"[^\"]*\"|'[^']*'|;")
_SPLIT_ARGS = re.compile(r"\"[^\"]*\"|'[^']*'|,")
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)$")
_PREFIX = {"": 1.0, "EX": 1e18, "PE": 1e15, "T": 1e12, "G": 1e9, "MA": 1e6, "K": 1e3, "M": 1e-3,
           "U": 1e-6, "N": 1e-9, "P": 1e-12, "F": 1e-15}
_MEGA_UNITS = ("HZ", "OHM")  # MHZ, MOHM: M means mega for these (SCPI-99 7.7.3)


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


def split_outside_quotes(text: str, splitter: re.Pattern, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` outside quoted strings; one linear scan."""
    if sep not in text:
        return [text]
    if '"' not in text and "'" not in text:
        return text.split(sep)
    parts, start = [], 0
    for m in splitter.finditer(text):
        if m.group() == sep:
            parts.append(text[start:m.start()])
            start = m.end()
    parts.append(text[start:])
    return parts


def unquote(text: str) -> str:
    """Remove the quotes of a string argument (a doubled quote inside is one quote);
    an unquoted text is returned as it is."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        q = text[0]
        return text[1:-1].replace(q + q, q)
    if text[:1] in "\"'":
        raise ScpiError(*STRING_ERROR)
    return text


class Call:
    """One parsed command: ``header`` text, ``query`` flag, argument text, suffixes."""

    __slots__ = ("header", "query", "text", "suffixes", "_args")

    def __init__(self, header: str, query: bool, text: str, suffixes: tuple[str, ...], args=None):
        self.header, self.query, self.text, self.suffixes = header, query, text, suffixes
        self._args = args

    def suffix(self, i: int = 0, default: int = 1) -> int:
        s = self.suffixes[i] if i < len(self.suffixes) else ""
        return int(s) if s else default

    @property
    def args(self) -> list[str]:
        if self._args is None:
            t = self.text.strip()
            self._args = [a.strip() for a in split_outside_quotes(t, _SPLIT_ARGS, ",")] if t else []
        return self._args

    def has(self, i: int) -> bool:
        return i < len(self.args) and self.args[i] != ""

    def arg(self, i: int = 0) -> str:
        a = self.args
        if i >= len(a) or a[i] == "":
            raise ScpiError(*MISSING_PARAMETER)
        return a[i]

    def string(self, i: int = 0) -> str:
        """A string argument, quotes removed (unquoted text accepted too)."""
        return unquote(self.arg(i))

    def number(self, i: int = 0, lo: float = float("-inf"), hi: float = float("inf"),
               default: float | None = None, unit: str = "") -> float:
        """A numeric argument in ``[lo, hi]``; ``MIN``/``MAX``/``DEF``; suffix ``unit``."""
        return parse_number(self.arg(i), lo, hi, default, unit)

    def integer(self, i: int = 0, lo: int = -(2**31), hi: int = 2**31 - 1, default: int | None = None) -> int:
        return int(round(self.number(i, lo, hi, default)))

    def boolean(self, i: int = 0) -> bool:
        text = self.arg(i).upper()
        if text == "ON":
            return True
        if text == "OFF":
            return False
        m = _NUMBER.match(text)
        if not m or m.group(2):
            raise ScpiError(*DATA_TYPE)
        return round(float(m.group(1))) != 0

    def choice(self, choices: dict[str, str], i: int = 0) -> str:
        """Match an enumerated value in short/long form; returns its canonical name."""
        text = unquote(self.arg(i)).strip().upper()
        for pattern, canon in choices.items():
            if _choice_regex(pattern).match(":" + text):
                return canon
        raise ScpiError(*ILLEGAL_VALUE)

    def no_args(self) -> None:
        if self.args:
            raise ScpiError(*PARAMETER_NOT_ALLOWED)


_CHOICES: dict[str, re.Pattern] = {}


def _choice_regex(pattern: str) -> re.Pattern:
    r = _CHOICES.get(pattern)
    if r is None:
        r = _CHOICES[pattern] = compile_header(":" + pattern)
    return r


def parse_number(text: str, lo: float = float("-inf"), hi: float = float("inf"),
                 default: float | None = None, unit: str = "") -> float:
    key = text.strip().upper()
    if key in ("MIN", "MINIMUM", "MAX", "MAXIMUM", "DEF", "DEFAULT"):
        value = {"MI": lo, "MA": hi, "DE": default}[key[:2]]
        if value is None or abs(value) == float("inf"):
            raise ScpiError(*ILLEGAL_VALUE)
        return float(value)
    m = _NUMBER.match(key)
    if not m:
        raise ScpiError(*DATA_TYPE)
    value = float(m.group(1))
    suffix = m.group(2)
    if suffix:
        u = unit.upper()
        if not u or not suffix.endswith(u):
            raise ScpiError(*INVALID_SUFFIX)
        prefix = suffix[: len(suffix) - len(u)]
        if prefix == "M" and u in _MEGA_UNITS:
            prefix = "MA"
        if prefix not in _PREFIX:
            raise ScpiError(*INVALID_SUFFIX)
        value *= _PREFIX[prefix]
    if not lo <= value <= hi:
        raise ScpiError(*DATA_OUT_OF_RANGE)
    return value


class _Unit:
    """A parsed program message unit, ready to run (or the error it raises)."""

    __slots__ = ("handler", "call", "error")

    def __init__(self, handler=None, call=None, error=None):
        self.handler, self.call, self.error = handler, call, error


class ScpiDevice:
    """Base of an emulated instrument: a command table, status registers, error queue.

    Subclasses call :meth:`command` in ``__init__``. Thread-safe: each unit executes
    under ``lock`` (as an instrument handles one command at a time); parsing does not.
    """

    idn = "LABKIT,EMULATED,0,0"
    options = "0"
    queue_size = 10
    error_format = '{code:d},"{message}"'
    terminator = b"\n"  # reply terminator (the Lake Shore sends CR LF)
    max_units = 256  # program message units per line
    max_args = 2500  # arguments per unit
    has_error_queue = False

    def __init__(self):
        self._table: list[tuple[re.Pattern, Handler]] = []
        self.patterns: list[str] = []  # the headers as registered (what this instrument implements)
        self._resolved: OrderedDict[str, tuple] = OrderedDict()  # header -> (handler, suffixes)
        self.errors: deque[tuple[int, str]] = deque()
        self.esr = 1 << PON_BIT
        self.ese = 0
        self.sre = 0
        self.lock = threading.RLock()
        self.log: deque[str] = deque(maxlen=1000)  # every line received (truncated), for tests
        c = self.command
        c("*IDN", lambda k: self.idn if self._query_only(k) else None)
        c("*RST", lambda k: self._set_only(k) or self.reset())
        c("*CLS", lambda k: self._set_only(k) or self._cls())
        c("*OPC", self._opc)
        c("*WAI", lambda k: self._set_only(k))
        c("*ESR", lambda k: self._read_esr() if self._query_only(k) else None)
        c("*ESE", lambda k: self._register(k, "ese"))
        c("*SRE", lambda k: self._register(k, "sre"))
        c("*STB", lambda k: str(self.status_byte()) if self._query_only(k) else None)
        c("*TST", lambda k: "0" if self._query_only(k) else None)
        c("*OPT", lambda k: self.options if self._query_only(k) else None)
        c("*TRG", lambda k: self._set_only(k) or self.bus_trigger())

    # -- table
    def command(self, pattern: str, handler: Handler) -> None:
        self.patterns.append(pattern)
        if pattern.startswith("*"):
            regex = re.compile("^" + re.escape(pattern) + "$", re.IGNORECASE)
        else:
            if not pattern.startswith((":", "[")):
                pattern = ":" + pattern
            regex = compile_header(pattern)
        self._table.append((regex, handler))
        self._resolved.clear()

    def enable_error_queue(self) -> None:
        """Register the SCPI error queue commands (not every instrument has them)."""
        self.has_error_queue = True
        c = self.command
        c("SYSTem:ERRor[:NEXT]", lambda k: self._next_error() if self._query_only(k) else None)
        c("SYSTem:ERRor:COUNt", lambda k: str(len(self.errors)) if self._query_only(k) else None)
        c("SYSTem:ERRor:ALL", lambda k: self._all_errors() if self._query_only(k) else None)
        c("SYSTem:ERRor:CLEar", lambda k: self._set_only(k) or self.errors.clear())
        c("SYSTem:VERSion", lambda k: "1999.0" if self._query_only(k) else None)

    # -- error queue and status
    def push_error(self, code: int, message: str) -> None:
        if len(self.errors) >= self.queue_size:
            self.errors[-1] = QUEUE_OVERFLOW
        else:
            self.errors.append((code, message))
        bit = {1: CME_BIT, 2: EXE_BIT, 3: DDE_BIT, 4: QYE_BIT}.get(-code // 100, DDE_BIT)
        self.esr |= 1 << bit

    def _next_error(self) -> str:
        code, message = self.errors.popleft() if self.errors else (0, "No error")
        return self.error_format.format(code=code, message=message)

    def _all_errors(self) -> str:
        if not self.errors:
            return self._next_error()
        out = [self._next_error() for _ in range(len(self.errors))]
        return ",".join(out)

    def _read_esr(self) -> str:
        value, self.esr = self.esr, 0
        return str(value)

    def _register(self, call: Call, attr: str):
        if call.query:
            return str(getattr(self, attr))
        setattr(self, attr, call.integer(0, 0, 255) & (0xBF if attr == "sre" else 0xFF))

    def _flag(self, call: Call, attr: str):
        """A boolean setting: ``attr`` read as ``1``/``0`` or set from ON/OFF/1/0."""
        if call.query:
            return "1" if getattr(self, attr) else "0"
        setattr(self, attr, call.boolean())

    def _enum(self, call: Call, attr: str, choices: dict[str, str]):
        """A setting from ``choices`` (SCPI long form -> stored short form)."""
        if call.query:
            return getattr(self, attr)
        setattr(self, attr, call.choice(choices))

    def _opc(self, call: Call):
        if call.query:
            return "1"
        self.esr |= 1 << OPC_BIT  # every operation here completes before the next command

    def status_byte(self) -> int:
        """``*STB?``: the instrument's summary bits, EAV (2), ESB (5), MSS (6)."""
        stb = self.summary_bits() & 0x9B
        if self.errors:
            stb |= 1 << 2
        if self.esr & self.ese:
            stb |= 1 << 5
        if stb & self.sre:
            stb |= 1 << 6
        return stb

    def summary_bits(self) -> int:
        """Instrument-specific status byte bits (0, 1, 3, 4, 7); subclasses extend."""
        return 0

    def bus_trigger(self) -> None:
        """``*TRG``: a bus trigger (subclasses with a trigger model use it)."""

    def _cls(self) -> None:
        self.errors.clear()
        self.esr = 0
        self.clear_status()

    def clear_status(self) -> None:
        """``*CLS`` also clears the instrument's event registers (subclasses extend)."""

    @staticmethod
    def _query_only(call: Call) -> bool:
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        return True

    @staticmethod
    def _set_only(call: Call) -> None:
        if call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        return None

    def _no_set(self):
        raise ScpiError(*UNDEFINED_HEADER)

    def reset(self) -> None:
        """``*RST``: restore defaults (subclasses extend)."""

    # -- the engine
    def handle(self, line: str) -> Reply:
        """Process one received line; returns the reply (text or binary) or None."""
        units = self.parse(line)
        replies: list[str | bytes] = []
        for unit in units:
            with self.lock:
                if unit.error is not None:
                    self.push_error(*unit.error)
                    continue
                try:
                    reply = unit.handler(unit.call)
                except ScpiError as err:
                    self.push_error(err.code, err.message)
                    continue
                except (ValueError, ArithmeticError, IndexError, KeyError, TypeError) as exc:
                    if _STRICT:
                        raise
                    del exc
                    self.push_error(*DEVICE_ERROR)  # an emulator fault must not end the session
                    continue
            if reply is not None:
                replies.append(reply)
        if not replies:
            return None
        if len(replies) == 1:
            return replies[0]
        if any(isinstance(r, bytes) for r in replies):
            return b";".join(r if isinstance(r, bytes) else r.encode() for r in replies)
        return ";".join(replies)

    def parse(self, line: str) -> list[_Unit]:
        """Split a line into runnable units (no lock held; linear in its length)."""
        self.log.append(line if len(line) <= 4096 else line[:4096] + "...")
        if ";" in line and line.count(";") >= self.max_units:
            return [_Unit(error=TOO_MUCH_DATA)]
        out: list[_Unit] = []
        path = ""
        for part in split_outside_quotes(line, _SPLIT_UNITS, ";"):
            text = part.strip()
            if not text:
                continue
            header, _, rest = text.partition(" ")
            if "\t" in header:
                header, _, more = header.partition("\t")
                rest = more + " " + rest
            if not _HEADER.match(header):
                out.append(_Unit(error=INVALID_CHARACTER if not header.isascii() or "\ufffd" in header
                                 else SYNTAX_ERROR))
                continue
            query = header.endswith("?")
            header = header.rstrip("?")
            if header.startswith(":*"):
                header = header[1:]
            found = None
            if header.startswith("*"):
                found = self._resolve(header)
            else:
                if not header.startswith(":") and path:
                    found = self._resolve(path + ":" + header)
                    if found is not None:
                        header = path + ":" + header
                if found is None:
                    header = header if header.startswith(":") else ":" + header
                    found = self._resolve(header)
                path = header.rsplit(":", 1)[0]
            if found is None:
                out.append(_Unit(error=UNDEFINED_HEADER))
                continue
            handler, suffixes = found
            if rest.count(",") >= self.max_args:
                out.append(_Unit(error=TOO_MUCH_DATA))
                continue
            out.append(_Unit(handler, Call(header, query, rest, suffixes)))
        return out

    def _resolve(self, header: str):
        key = header.upper()
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        for pattern, handler in self._table:
            m = pattern.match(header)
            if m:
                hit = (handler, tuple(g or "" for g in m.groups()))
                break
        else:
            return None
        self._resolved[key] = hit
        if len(self._resolved) > 1024:
            self._resolved.popitem(last=False)
        return hit


class StatusRegister:
    """A SCPI status register: condition, latched event (read clears), enable mask."""

    def __init__(self):
        self.condition = self.event = self.enable = 0

    def set(self, bits: int) -> None:
        self.condition |= bits
        self.event |= bits

    def clear_condition(self, bits: int) -> None:
        self.condition &= ~bits

    def read_event(self) -> int:
        value, self.event = self.event, 0
        return value

    @property
    def summary(self) -> bool:
        return bool(self.event & self.enable)

    def add_commands(self, device: ScpiDevice, root: str) -> None:
        """``STATus:<root>[:EVENt]?``, ``:CONDition?``, ``:ENABle``."""
        def enable(k: Call):
            if k.query:
                return str(self.enable)
            self.enable = k.integer(0, 0, 65535)

        device.command(f"STATus:{root}[:EVENt]",
                       lambda k: str(self.read_event()) if device._query_only(k) else None)
        device.command(f"STATus:{root}:CONDition",
                       lambda k: str(self.condition) if device._query_only(k) else None)
        device.command(f"STATus:{root}:ENABle", enable)


def ieee_block(data: bytes, digits: int | None = None) -> bytes:
    """IEEE 488.2 definite-length block: ``#<n><length><data>``; ``digits`` fixes n
    (InfiniiVision scopes always send ``#8`` and eight digits)."""
    length = str(len(data)) if digits is None else f"{len(data):0{digits}d}"
    return b"#" + str(len(length)).encode() + length.encode() + data
