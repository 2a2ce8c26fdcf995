"""A small declarative base for message-based (SCPI-style) instruments over pyvisa.

A driver lists its settings one line each, like a datasheet::

    class Smu(Instrument):
        source_v = setting(":SOUR:VOLT:LEV", "Source level (V).", unit="V",
                           validator=in_range(-21.0, 21.0), safety=True)
        current_a = measurement(":READ?", "One current reading (A).")

Values are SI floats inside; pint Quantities (or strings such as ``"5 uA"``) are
accepted at the setter and converted once by :func:`labkit.units.si`. A bad value is a
``ValueError`` raised before anything is written. After a safety-relevant setting the
instrument's error queue is drained; any error raises :class:`InstrumentError`.

Instruments are opened through pyvisa with the pure-Python pyvisa-py backend
(``ResourceManager("@py")``) unless a resource manager is given, so a GPIB/USB/LAN
address or the virtual bench's ``TCPIP::127.0.0.1::PORT::SOCKET`` take one code path.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from typing import Any, Callable, Iterable

from labkit.backend import BackendError
from labkit.units import si

Validator = Callable[[Any], Any]


class InstrumentError(BackendError):
    """The instrument reported errors (``[(code, message), ...]``) or did not answer."""

    def __init__(self, name: str, errors: list[tuple[int, str]], after: str = ""):
        self.errors = errors
        where = f" after {after!r}" if after else ""
        text = "; ".join(f"{code},{msg!r}" for code, msg in errors)
        super().__init__(f"{name} reported{where}: {text}")


# ------------------------------------------------------------------ validators


def in_range(lo: float, hi: float, unit: str = "") -> Validator:
    """Accept a finite number in ``[lo, hi]``; returns it as float."""

    def check(value):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r}; expected a number in [{lo:g}, {hi:g}] {unit}".rstrip()) from None
        if not (math.isfinite(v) and lo <= v <= hi):
            raise ValueError(f"{v:g} {unit} is outside [{lo:g}, {hi:g}] {unit}".replace("  ", " "))
        return v

    check.__doc__ = f"number in [{lo:g}, {hi:g}] {unit}"
    return check


def positive(unit: str = "") -> Validator:
    def check(value):
        v = float(value)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{value!r} {unit}; expected a positive finite number".replace("  ", " "))
        return v

    return check


def one_of(*choices: str) -> Validator:
    """Accept one of ``choices`` (case-insensitive, SCPI short forms allowed)."""
    canon = {c.upper(): c for c in choices}

    def check(value):
        key = str(value).upper()
        if key in canon:
            return canon[key]
        for full, c in canon.items():  # SCPI short form: the upper-case part, e.g. VOLT for VOLTage
            short = "".join(ch for ch in c if ch.isupper() or ch.isdigit())
            if short and key == short.upper():
                return c
        raise ValueError(f"{value!r}; expected one of {', '.join(choices)}")

    return check


def integer(lo: int, hi: int) -> Validator:
    def check(value):
        if isinstance(value, bool) or not float(value).is_integer() or not lo <= int(value) <= hi:
            raise ValueError(f"{value!r}; expected an integer in [{lo}, {hi}]")
        return int(value)

    return check


def boolean(value) -> bool:
    """Accept True/False, 1/0, 'ON'/'OFF'."""
    if isinstance(value, str):
        key = value.strip().upper()
        if key in ("ON", "1", "TRUE"):
            return True
        if key in ("OFF", "0", "FALSE"):
            return False
    elif value in (0, 1) or isinstance(value, bool):
        return bool(value)
    raise ValueError(f"{value!r}; expected ON/OFF (True/False)")


# ------------------------------------------------------------------ formats and parsers


def fmt_number(v) -> str:
    """SCPI <NRf> text for a float (compact, full precision)."""
    return f"{float(v):.9g}"


def fmt_onoff(v) -> str:
    return "ON" if v else "OFF"


def parse_bool(text: str) -> bool:
    return text.strip().upper() in ("1", "ON", "+1")


def parse_text(text: str) -> str:
    return text.strip().strip('"')


def parse_float_list(text: str) -> list[float]:
    return [float(t) for t in text.strip().split(",") if t.strip()]


class _Attrs(dict):
    """Template fields filled from instrument attributes, e.g. ``{channel}``."""

    def __init__(self, inst, value=None):
        super().__init__()
        self.inst, self.value = inst, value

    def __missing__(self, key):
        if key == "value":
            return self.value
        return getattr(self.inst, key)


def setting(
    command: str,
    doc: str,
    *,
    query: str | None = None,
    validator: Validator | None = None,
    unit: str | None = None,
    fmt: Callable[[Any], str] = fmt_number,
    parse: Callable[[str], Any] = float,
    safety: bool = False,
) -> property:
    """A read/write instrument setting, declared in one line.

    ``command`` is the set command; ``{value}`` marks where the value goes (appended
    after a space when absent) and other ``{name}`` fields come from instrument
    attributes (e.g. ``"SETP {loop},{value}"``). ``query`` defaults to the command's
    header plus ``?``. ``unit`` converts Quantities to SI before ``validator``;
    ``safety=True`` drains the error queue after setting and raises on any error.
    """
    if "{value}" not in command:
        command = command + " {value}"
    if query is None:
        query = command.split(" ", 1)[0] + "?"

    def fget(self):
        return parse(self.query(query.format_map(_Attrs(self))))

    def fset(self, value):
        if unit is not None:
            value = si(value, unit, command.split(" ", 1)[0])
        if validator is not None:
            value = validator(value)
        cmd = command.format_map(_Attrs(self, fmt(value)))
        self.write(cmd)
        if safety:
            self.check_errors(after=cmd)
        self._on_set(command, value)

    return property(fget, fset, doc=f"{doc} [{command}]")


def measurement(command: str, doc: str, *, parse: Callable[[str], Any] = float) -> property:
    """A read-only query, declared in one line."""

    def fget(self):
        return parse(self.query(command.format_map(_Attrs(self))))

    return property(fget, doc=f"{doc} [{command}]")


# ------------------------------------------------------------------ the instrument


class Instrument:
    """A message-based instrument over pyvisa.

    ``resource`` is a VISA address (opened with ``rm`` or ``ResourceManager("@py")``)
    or an already-open pyvisa resource. ``transcript`` keeps the last commands sent
    (most recent last), for logs and tests.
    """

    #: Error-queue query and the reply meaning "no error" (SCPI-99 ``SYSTem:ERRor?``).
    error_query = ":SYST:ERR?"
    #: Upper bound on errors drained in one go (a broken instrument must not hang us).
    max_errors = 32

    def __init__(
        self,
        resource,
        *,
        rm=None,
        timeout_s: float = 5.0,
        read_termination: str = "\n",
        write_termination: str = "\n",
        name: str | None = None,
    ):
        self.name = name or type(self).__name__
        self._own_rm = None
        if isinstance(resource, str):
            self.address = resource
            if rm is None:
                import pyvisa

                rm = self._own_rm = pyvisa.ResourceManager("@py")
            try:
                resource = rm.open_resource(resource)
            except Exception as exc:
                if self._own_rm is not None:
                    self._own_rm.close()
                raise BackendError(f"{self.name}: cannot open {self.address!r}: {exc}") from exc
        else:
            self.address = getattr(resource, "resource_name", repr(resource))
        self.resource = resource
        resource.timeout = timeout_s * 1000.0
        resource.read_termination = read_termination
        resource.write_termination = write_termination
        self.transcript: deque[str] = deque(maxlen=256)
        self._lock = threading.RLock()

    # -- transport
    def write(self, command: str) -> None:
        with self._lock:
            self.transcript.append(command)
            try:
                self.resource.write(command)
            except Exception as exc:
                raise BackendError(f"{self.name} at {self.address}: writing {command!r} failed: {exc}") from exc

    def query(self, command: str) -> str:
        with self._lock:
            self.transcript.append(command)
            try:
                return self.resource.query(command).strip()
            except Exception as exc:
                raise BackendError(f"{self.name} at {self.address}: {command!r} got no answer: {exc}") from exc

    def query_block(self, command: str, datatype: str = "B", big_endian: bool = False) -> list:
        """Query returning an IEEE 488.2 definite-length binary block."""
        with self._lock:
            self.transcript.append(command)
            try:
                return self.resource.query_binary_values(
                    command, datatype=datatype, is_big_endian=big_endian, container=list
                )
            except Exception as exc:
                raise BackendError(f"{self.name} at {self.address}: {command!r} block read failed: {exc}") from exc

    # -- IEEE 488.2 common commands
    @property
    def idn(self) -> str:
        """``*IDN?``: manufacturer, model, serial, firmware."""
        return self.query("*IDN?")

    def reset(self) -> None:
        """``*RST`` then ``*CLS``: defaults, cleared status; errors drained."""
        self.write("*RST")
        self.write("*CLS")
        self._on_reset()
        self.check_errors(after="*RST")

    def wait(self) -> None:
        """``*OPC?``: block until pending operations complete."""
        self.query("*OPC?")

    # -- errors
    def errors(self) -> list[tuple[int, str]]:
        """Drain the error queue: ``[(code, message), ...]`` (empty when clean)."""
        found = []
        for _ in range(self.max_errors):
            code, msg = self._parse_error(self.query(self.error_query))
            if code == 0:
                return found
            found.append((code, msg))
        return found

    def check_errors(self, after: str = "") -> None:
        """Drain the error queue and raise :class:`InstrumentError` if it held anything."""
        errs = self.errors()
        if errs:
            raise InstrumentError(self.name, errs, after)

    @staticmethod
    def _parse_error(text: str) -> tuple[int, str]:
        m = re.match(r"\s*([+-]?\d+)\s*,\s*\"?(.*?)\"?\s*$", text)
        if not m:
            raise BackendError(f"unparsable error-queue reply {text!r}")
        return int(m.group(1)), m.group(2)

    # -- hooks for drivers that track state
    def _on_set(self, command: str, value) -> None:
        pass

    def _on_reset(self) -> None:
        pass

    def close(self) -> None:
        try:
            self.resource.close()
        except Exception:
            pass
        if self._own_rm is not None:
            try:
                self._own_rm.close()
            except Exception:
                pass
            self._own_rm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r})"


def settings_of(cls: type) -> Iterable[tuple[str, str]]:
    """``(attribute, docstring)`` of every declared setting/measurement of a driver."""
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            if isinstance(attr, property) and attr.__doc__ and "[" in attr.__doc__:
                yield name, attr.__doc__
