"""How run data is encoded in the store: names, JSON text and raw little-endian arrays.

Arrays are stored as raw little-endian bytes with their dtype string and shape (no
pickle); a point table's column spec is JSON ``[[name, dtype, shape], ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
KINDS = set("biufcSUmM")  # dtype kinds a stored array may have
LITTLE = np.little_endian


def json_default(obj):
    """``json.dumps`` fallback: dataclasses, numpy values, sets, paths, pint quantities (SI)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_base_units") and hasattr(obj, "magnitude"):  # pint Quantity -> SI
        m = obj.to_base_units().magnitude
        return m.tolist() if isinstance(m, np.ndarray) else (m.item() if isinstance(m, np.generic) else m)
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def dumps(value, what: str) -> str:
    """``value`` as JSON text; ValueError naming ``what`` if it cannot be."""
    try:
        return json.dumps(value, default=json_default, sort_keys=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serializable (dicts, lists, numbers, strings): {exc}") from None


def check_name(name: str, what: str) -> str:
    """``name`` if it is a valid table/column/array/kind name, else ValueError."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"{what} {name!r} is not a valid name (letters, digits, _ . -; "
                         "starting with a letter or _)")
    return name


def le_array(name: str, value) -> np.ndarray:
    """``value`` as a C-contiguous little-endian array (the stored byte layout)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in KINDS or arr.dtype.fields is not None:
        raise ValueError(f"{name}: dtype {arr.dtype} cannot be stored (expected numbers, "
                         "booleans, strings or datetimes; no objects)")
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not LITTLE):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr)


def from_bytes(data: bytes, dtype: str, shape) -> np.ndarray:
    """A stored array back from its raw bytes, in native byte order (a copy)."""
    arr = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    return arr.astype(arr.dtype.newbyteorder("="), copy=True) if not LITTLE else arr.copy()


@dataclass(frozen=True)
class Column:
    """One column of a point table: name, little-endian dtype string, per-point shape."""

    name: str
    dtype: str  # little-endian dtype string, e.g. '<f8'
    shape: tuple[int, ...]  # trailing shape of one point

    @property
    def point_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize * math.prod(self.shape)


def spec_dumps(cols: list[Column]) -> str:
    return json.dumps([[c.name, c.dtype, list(c.shape)] for c in cols])


def spec_loads(text: str) -> list[Column]:
    return [Column(n, d, tuple(s)) for n, d, s in json.loads(text)]


def decode_batches(rows, spec: list[Column], where: str) -> dict[str, np.ndarray]:
    """Point batches ``[(n, blob), ...]`` in write order as ``{column: array}``; ValueError
    naming ``where`` if a blob's size does not match its ``n`` points."""
    total = sum(n for n, _ in rows)
    out = {c.name: np.empty((total, *c.shape), dtype=np.dtype(c.dtype).newbyteorder("="))
           for c in spec}
    start = 0
    for n, data in rows:
        off = 0
        for c in spec:
            if off + n * c.point_bytes > len(data):
                break
            out[c.name][start:start + n] = np.frombuffer(
                data, dtype=c.dtype, count=n * math.prod(c.shape), offset=off).reshape((n, *c.shape))
            off += n * c.point_bytes
        expected = n * sum(c.point_bytes for c in spec)
        if off != len(data) or expected != len(data):
            raise ValueError(f"{where} is corrupt ({len(data)} bytes, expected {expected})")
        start += n
    return out
