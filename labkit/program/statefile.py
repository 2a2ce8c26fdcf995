"""Strict, bounded reading of a chip-state JSON file (the schema of labkit.program.chipstate).

Before anything is parsed, the file's size (:data:`MAX_BYTES`) and the nesting depth of
its text (:data:`MAX_DEPTH`) are bounded; parsing refuses duplicate keys and the
non-JSON constants NaN / Infinity; then every field is checked for its type, range and
exact shape (``rows x cols`` grids row by row, so nothing broadcasts from a 1x1 grid).
Every refusal is a :class:`~labkit.errors.UsageError` of one line naming the file, the
field and what was expected.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from labkit.errors import UsageError

MAX_BYTES = 4 << 20  # a 16x16 record is ~60 kB; a long history of refreshes stays far below
MAX_DEPTH = 8  # a record nests 4 deep (record -> model -> grid -> row)
MAX_SIDE = 1024  # rows or columns of one array
MAX_HISTORY = 10_000

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def text_depth(text: str) -> int:
    """Deepest nesting of ``[`` / ``{`` in JSON text (strings skipped), without parsing it."""
    b = np.frombuffer(_STRING.sub('""', text).encode("utf-8", "replace"), dtype=np.uint8)
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(b, (ord("]"), ord("}")))
    return int(np.max(np.cumsum(step), initial=0))


def _no_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise UsageError(f"duplicate key {dup!r}; expected each key once")
    return dict(pairs)


def _constant(name: str):
    raise UsageError(f"non-JSON constant {name}; expected null or a finite number")


def check_file(path: str | Path, what: str, max_bytes: int) -> Path:
    """``path`` as a Path, if it is a regular file of at most ``max_bytes`` (UsageError otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {p} does not exist or is not a file")
    size = p.stat().st_size
    if size > max_bytes:
        raise UsageError(f"{what} {p} is {size} bytes; expected at most {max_bytes} bytes")
    return p


def read_json(path: str | Path, what: str = "chip-state file") -> dict:
    """The JSON object in ``path``, with its size and depth bounded before parsing."""
    p = check_file(path, what, MAX_BYTES)
    with open(p, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {p} is not UTF-8 text (byte {exc.start}); expected JSON") from None
    depth = text_depth(text)
    if depth > MAX_DEPTH:
        raise UsageError(f"{what} {p} nests {depth} levels deep; expected at most {MAX_DEPTH}")
    try:
        d = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_constant)
    except UsageError as exc:
        raise UsageError(f"{what} {p}: {exc}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UsageError(f"{what} {p} is not JSON ({exc}); expected a chip-state record") from None
    if not isinstance(d, dict):
        raise UsageError(f"{what} {p} holds a JSON {type(d).__name__}; expected an object")
    return d


# ---------------------------------------------------------------- field checks


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def number(d: dict, name: str, lo: float = -math.inf, hi: float = math.inf, default=None) -> float:
    """A finite number in [lo, hi] (``default`` when the field is absent and a default is given)."""
    if name not in d and default is not None:
        return float(default)
    v = d.get(name)
    if not _is_num(v) or not lo <= v <= hi:
        raise UsageError(f"field {name!r} is {v!r}; expected a finite number in [{lo:g}, {hi:g}]")
    return float(v)


def integer(d: dict, name: str, lo: int = 0, hi: int = 2**62, default=None) -> int:
    if name not in d and default is not None:
        return int(default)
    v = d.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise UsageError(f"field {name!r} is {v!r}; expected an integer in [{lo}, {hi}]")
    return v


def string(d: dict, name: str, choices=None, default=None) -> str:
    if name not in d and default is not None:
        return default
    v = d.get(name)
    if not isinstance(v, str) or (choices is not None and v not in choices):
        want = f"one of {list(choices)}" if choices is not None else "a string"
        raise UsageError(f"field {name!r} is {_short(v)}; expected {want}")
    return v


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def grid(v, name: str, shape: tuple[int, int] | None, kind: str = "float", width_max: int | None = None) -> np.ndarray:
    """A rectangular grid given row by row: ``float`` (numbers or null = NaN), ``int`` (>= 0)
    or ``str``. ``shape`` exact, or (rows, None): every row the same length <= ``width_max``."""
    rows = shape[0] if shape else None
    if not isinstance(v, list) or (rows is not None and len(v) != rows):
        n = len(v) if isinstance(v, list) else type(v).__name__
        raise UsageError(f"field {name!r} has {n} rows; expected a list of {rows} rows")
    width = shape[1] if shape and shape[1] is not None else (len(v[0]) if v and isinstance(v[0], list) else 0)
    if width_max is not None and not 1 <= width <= width_max:
        raise UsageError(f"field {name!r} rows have {width} entries; expected 1 to {width_max}")
    for r, row in enumerate(v):
        if not isinstance(row, list) or len(row) != width:
            n = len(row) if isinstance(row, list) else type(row).__name__
            raise UsageError(f"field {name!r} row {r} has {n} entries; expected {width}")
        for c, x in enumerate(row):
            ok = (x is None or _is_num(x)) if kind == "float" else (
                isinstance(x, int) and not isinstance(x, bool) and x >= 0) if kind == "int" else isinstance(x, str)
            if not ok:
                want = {"float": "a finite number or null", "int": "an integer >= 0", "str": "a string"}[kind]
                raise UsageError(f"field {name!r}[{r}][{c}] is {_short(x)}; expected {want}")
    if kind == "float":
        return np.array([[np.nan if x is None else float(x) for x in row] for row in v], dtype=float).reshape(
            len(v), width)
    if kind == "int":
        return np.array(v, dtype=np.int64).reshape(len(v), width)
    return np.array(v, dtype=object).reshape(len(v), width)


def int_list(v, name: str, n: int) -> list[int]:
    if not isinstance(v, list) or len(v) != n or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        raise UsageError(f"field {name!r} is {_short(v)}; expected a list of {n} integers >= 0")
    return list(v)


def scalar_dict(v, name: str, max_items: int = 64) -> dict:
    """A flat object of strings to numbers, strings, booleans or null."""
    if not isinstance(v, dict) or len(v) > max_items:
        raise UsageError(f"field {name!r} is {_short(v)}; expected an object of at most {max_items} plain values")
    for k, x in v.items():
        if not (x is None or isinstance(x, (str, bool)) or _is_num(x)):
            raise UsageError(f"field {name!r}.{k} is {_short(x)}; expected a number, string or null")
    return dict(v)
