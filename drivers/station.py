"""Station files: the YAML description of one bench (board link, instruments, limits).

Example::

    name: bench-2                       # free text, recorded with every run
    board:
      url: /dev/ttyUSB0                 # any pyserial URL: COM3, socket://127.0.0.1:5000, ...
      baud: 921600                      # optional (serial ports)
      timeout_s: 2.0                    # optional, per-command base deadline
    instruments:                        # each optional
      smu:     {model: keithley2400, address: "GPIB0::24::INSTR"}
      scope:   {model: infiniivision, address: "TCPIP::10.0.0.7::INSTR",
                columns: {1: 0, 2: 1}}  # channel -> bit-line column it probes
      tempctl: {model: lakeshore336, address: "TCPIP::10.0.0.8::7777::SOCKET"}
    limits:                             # may only tighten the chip's SafetyEnvelope
      max_program_voltage_v: 6.0
      program_width_range_s: [1.0e-8, 1.0e-4]
    faults: {}                          # what an emulated bench injects (provenance)

Loaded with :func:`labkit.files.parse_yaml` (``safe_load`` semantics; duplicate keys, files over
4 MiB, devices and deep nesting refused); every mistake is a :class:`StationError` (a
``ValueError``) naming the file and the key, before anything is opened.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labkit.backend import SafetyEnvelope
from labkit.files import FileFormatError, parse_yaml, read_text

#: instrument role -> (default model, known models)
MODELS = {
    "smu": ("keithley2400", ("keithley2400",)),
    "scope": ("infiniivision", ("infiniivision",)),
    "tempctl": ("lakeshore336", ("lakeshore336", "lakeshore335")),
}
_LIMIT_FIELDS = {f.name: f for f in dataclasses.fields(SafetyEnvelope)}


class StationError(ValueError):
    """A station file that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class InstrumentSpec:
    role: str
    model: str
    address: str
    timeout_s: float = 5.0
    read_termination: str = "\n"
    write_termination: str = "\n"
    columns: dict[int, int] = field(default_factory=dict)  # scope: channel -> column


@dataclass(frozen=True)
class Station:
    path: str
    name: str
    board_url: str
    board_baud: int | None
    board_timeout_s: float | None
    instruments: dict[str, InstrumentSpec]
    limits: dict[str, Any]
    faults: dict[str, Any]
    text: str  # the file as read, for provenance


def load_station(path: str | Path) -> Station:
    """Read and validate a station file."""
    p = Path(path)
    if not p.exists():
        raise StationError(f"station file {str(p)!r} does not exist")
    try:
        text = read_text(p, "station file")
    except FileFormatError as exc:
        raise StationError(str(exc).removeprefix("station file ")) from None
    return parse_station(text, str(p))


def parse_station(text: str, path: str = "<station>") -> Station:
    """Validate station YAML ``text`` (``path`` only labels error messages)."""
    try:
        doc = parse_yaml(text, "station file", path)
    except FileFormatError as exc:
        raise StationError(str(exc).removeprefix("station file ")) from None
    if not isinstance(doc, dict):
        raise StationError(f"{path}: expected a mapping with a 'board' key, got {type(doc).__name__}")
    err = _Errors(path)
    err.unknown(doc, ("name", "board", "instruments", "limits", "faults"), "")

    board = doc.get("board")
    if isinstance(board, str):
        board = {"url": board}
    if not isinstance(board, dict):
        raise err("board", "expected a mapping with 'url' (e.g. board: {url: /dev/ttyUSB0})")
    err.unknown(board, ("url", "baud", "timeout_s"), "board.")
    url = board.get("url")
    if not isinstance(url, str) or not url.strip():
        raise err("board.url", f"{url!r}; expected a pyserial URL such as /dev/ttyUSB0 or socket://HOST:PORT")
    baud = board.get("baud")
    if baud is not None and (isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0):
        raise err("board.baud", f"{baud!r}; expected a positive integer (e.g. 921600)")
    timeout = board.get("timeout_s")
    if timeout is not None:
        timeout = err.positive("board.timeout_s", timeout)

    instruments = {}
    section = doc.get("instruments") or {}
    if not isinstance(section, dict):
        raise err("instruments", "expected a mapping of role -> {model, address}")
    err.unknown(section, tuple(MODELS), "instruments.")
    for role, spec in section.items():
        instruments[role] = _instrument(err, role, spec)

    limits = doc.get("limits") or {}
    if not isinstance(limits, dict):
        raise err("limits", "expected a mapping of SafetyEnvelope fields")
    err.unknown(limits, tuple(_LIMIT_FIELDS), "limits.")
    clean_limits = {}
    for key, value in limits.items():
        if isinstance(_LIMIT_FIELDS[key].default, tuple):
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise err(f"limits.{key}", f"{value!r}; expected [low, high]")
            lo, hi = (err.number(f"limits.{key}", v) for v in value)
            if lo > hi:
                raise err(f"limits.{key}", f"[{lo:g}, {hi:g}]: low above high")
            clean_limits[key] = (lo, hi)
        else:
            clean_limits[key] = err.number(f"limits.{key}", value)
    try:
        SafetyEnvelope().tightened(**clean_limits)
    except ValueError as exc:
        raise err("limits", f"{exc} (a station may only tighten limits)") from None

    faults = doc.get("faults") or {}
    if not isinstance(faults, dict) or not all(isinstance(k, str) for k in faults):
        raise err("faults", "expected a mapping of fault name -> value")

    name = doc.get("name", Path(path).stem)
    return Station(path, str(name), url.strip(), baud, timeout, instruments, clean_limits, dict(faults), text)


def _instrument(err: "_Errors", role: str, spec) -> InstrumentSpec:
    key = f"instruments.{role}"
    if isinstance(spec, str):
        spec = {"address": spec}
    if not isinstance(spec, dict):
        raise err(key, "expected a mapping with 'address' (a VISA resource name)")
    err.unknown(spec, ("model", "address", "timeout_s", "read_termination", "write_termination", "columns"), key + ".")
    default, known = MODELS[role]
    model = str(spec.get("model", default)).lower()
    if model not in known:
        raise err(f"{key}.model", f"{model!r}; expected one of {', '.join(known)}")
    address = spec.get("address")
    if not isinstance(address, str) or "::" not in address and not address.upper().startswith("ASRL"):
        raise err(f"{key}.address", f"{address!r}; expected a VISA resource name such as GPIB0::24::INSTR")
    timeout = err.positive(f"{key}.timeout_s", spec.get("timeout_s", 5.0))
    terms = {}
    for t in ("read_termination", "write_termination"):
        value = spec.get(t, "\n")
        if not isinstance(value, str) or value not in ("\n", "\r\n", "\r"):
            raise err(f"{key}.{t}", f"{value!r}; expected \"\\n\", \"\\r\\n\" or \"\\r\"")
        terms[t] = value
    columns = {}
    if "columns" in spec:
        if role != "scope":
            raise err(f"{key}.columns", "only a scope has probed columns")
        raw = spec["columns"]
        if not isinstance(raw, dict) or not raw:
            raise err(f"{key}.columns", f"{raw!r}; expected a mapping of channel (1-4) -> column")
        for ch, col in raw.items():
            if isinstance(ch, bool) or not isinstance(ch, int) or not 1 <= ch <= 4:
                raise err(f"{key}.columns", f"channel {ch!r}; expected 1-4")
            if isinstance(col, bool) or not isinstance(col, int) or col < 0:
                raise err(f"{key}.columns.{ch}", f"column {col!r}; expected a non-negative integer")
            columns[ch] = col
    elif role == "scope":
        columns = {1: 0}
    return InstrumentSpec(role, model, address, timeout, terms["read_termination"], terms["write_termination"], columns)


class _Errors:
    def __init__(self, path: str):
        self.path = path

    def __call__(self, key: str, message: str) -> StationError:
        return StationError(f"{self.path}: {key}: {message}")

    def unknown(self, mapping: dict, known: tuple, prefix: str) -> None:
        for k in mapping:
            if k not in known:
                raise self(f"{prefix}{k}", f"unknown key; expected one of {', '.join(known)}")

    def number(self, key: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self(key, f"{value!r}; expected a finite number (SI units)")
        return float(value)

    def positive(self, key: str, value) -> float:
        v = self.number(key, value)
        if v <= 0:
            raise self(key, f"{value!r}; expected a positive number of seconds")
        return v


def dump_station(path: str | Path, *, board_url: str, instruments: dict[str, dict], name: str = "bench",
                 limits: dict | None = None, faults: dict | None = None, baud: int | None = None) -> str:
    """Write a station file (atomically: a reader never sees half of it); returns the text."""
    doc: dict[str, Any] = {"name": name, "board": {"url": board_url}}
    if baud:
        doc["board"]["baud"] = int(baud)
    if instruments:
        doc["instruments"] = instruments
    if limits:
        doc["limits"] = {k: list(v) if isinstance(v, tuple) else v for k, v in limits.items()}
    if faults:
        doc["faults"] = dict(faults)
    text = yaml.safe_dump(doc, sort_keys=False)
    parse_station(text, str(path))  # never write a file we would refuse to read
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)
    return text
