"""Reading the files labkit is handed, with bounds: size, nesting depth and declared
array sizes are checked before anything is allocated, and every refusal is one
:class:`FileFormatError` line naming the file, the field and what was expected.

- :func:`read_bytes`: a regular file (no devices, pipes or directories) of at most a
  given size.
- :func:`load_yaml`: YAML with ``safe_load`` semantics, duplicate keys refused, size and
  depth bounded (station files).
- :func:`load_json`: JSON with size and depth bounded.
- :func:`npz_headers` / :func:`read_npz`: ``.npz`` archives read without pickle; each
  member's ``.npy`` header (shape, dtype) is read before its data, dtypes are strict
  (real or integer numbers, booleans, and text only where asked for), and the declared
  total size is bounded before any array is read.

Sizes are bytes.
"""

from __future__ import annotations

import json
import math
import os
import stat
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from labkit.errors import UsageError

__all__ = ["FileFormatError", "read_bytes", "load_yaml", "load_json", "npz_headers", "read_npz", "npz_target", "write_npz",
           "MAX_TEXT_BYTES", "MAX_DEPTH", "NUMERIC_KINDS"]

MAX_TEXT_BYTES = 4 * 2**20  # YAML and JSON files: 4 MiB
MAX_DEPTH = 32  # nesting of mappings and sequences
NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, real floats (no complex)
_NPZ_MEMBERS = 512


class FileFormatError(UsageError):
    """A file is missing, too large, of the wrong kind or not in the expected format."""


def _fail(what: str, path, detail: str) -> FileFormatError:
    return FileFormatError(f"{what} {path}: {detail}".splitlines()[0][:600])


def read_bytes(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (``what`` names it in errors), refused if it
    is missing, not a regular file (``/dev/zero``, a FIFO, a directory) or over ``max_bytes``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise _fail(what, path, "does not exist") from None
    except OSError as exc:
        raise _fail(what, path, f"cannot be opened ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _fail(what, path, "is not a regular file (a device, pipe or directory); expected a file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > max_bytes:
            raise _fail(what, path, f"is {st.st_size} bytes; expected at most {max_bytes}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _fail(what, path, f"is over {max_bytes} bytes; expected at most {max_bytes}")
    return data


def _text(path, what: str, max_bytes: int) -> str:
    try:
        return read_bytes(path, what, max_bytes).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(what, path, f"is not UTF-8 text (byte {exc.start})") from None


def _check_depth(value, what: str, path, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` (iterative; shared nodes visited once)."""
    stack, seen = [(value, 1)], set()
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > max_depth:
                raise _fail(what, path, f"nested {depth} levels deep; expected at most {max_depth}")
            if id(node) in seen:
                continue
            seen.add(id(node))
            items = node.values() if isinstance(node, dict) else node
            stack.extend((v, depth + 1) for v in items)


def load_yaml(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_TEXT_BYTES,
              max_depth: int = MAX_DEPTH):
    """The YAML document in ``path`` (``safe_load`` semantics: plain data only). Duplicate
    keys, more than one document, files over ``max_bytes`` and nesting deeper than
    ``max_depth`` are refused with one line naming the file, line and key."""
    return parse_yaml(read_text(path, what, max_bytes), what, path, max_depth=max_depth)


def read_text(path: str | os.PathLike, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``."""
    return _text(path, what, max_bytes)


def parse_yaml(text: str, what: str, path="<text>", *, max_depth: int = MAX_DEPTH):
    """:func:`load_yaml` on ``text`` already read (``path`` names it in messages)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                keys = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    try:
                        dup = key in keys
                        keys.add(key)
                    except TypeError:
                        raise _fail(what, path, f"line {key_node.start_mark.line + 1}: a mapping key "
                                                "must be a plain value") from None
                    if dup:
                        raise _fail(what, path, f"line {key_node.start_mark.line + 1}: duplicate key "
                                                f"{key!r}; expected each key once")
            return super().construct_mapping(node, deep=deep)

    def compose_depth(loader) -> None:  # bound depth on the node graph, before construction
        node = loader.get_single_node()
        stack, seen = [(node, 1)], set()
        while stack:
            n, depth = stack.pop()
            if isinstance(n, (yaml.MappingNode, yaml.SequenceNode)):
                if depth > max_depth:
                    raise _fail(what, path, f"line {n.start_mark.line + 1}: nested {depth} levels "
                                            f"deep; expected at most {max_depth}")
                if id(n) in seen:
                    continue
                seen.add(id(n))
                kids = [v for pair in n.value for v in pair] if isinstance(n, yaml.MappingNode) else n.value
                stack.extend((k, depth + 1) for k in kids)
        loader.node = node

    loader = None
    try:
        loader = StrictLoader(text)
        compose_depth(loader)
        return None if loader.node is None else loader.construct_document(loader.node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise _fail(what, path, f"{where}{problem}; expected a YAML mapping of plain values") from None
    except yaml.YAMLError as exc:
        raise _fail(what, path, f"not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise _fail(what, path, f"nested too deeply; expected at most {max_depth} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_json(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_TEXT_BYTES,
              max_depth: int = MAX_DEPTH):
    """The JSON value in ``path``, size and nesting bounded (checked on the text first)."""
    text = _text(path, what, max_bytes)
    depth = deepest = 0
    in_str = esc = False
    for ch in text:  # bracket depth outside strings, before the parser recurses
        if in_str:
            esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise _fail(what, path, f"nested over {max_depth} levels deep; expected at most {max_depth}")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text, parse_constant=lambda c: float(c))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _fail(what, path, f"not valid JSON ({exc})") from None


def npz_headers(path: str | os.PathLike, what: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of every array in the ``.npz`` at ``path``, read from the
    ``.npy`` headers only (no data read, no pickle)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise _fail(what, path, "does not exist") from None
    except OSError as exc:
        raise _fail(what, path, f"cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise _fail(what, path, "is not a regular file; expected an .npz archive")
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
            if len(members) > _NPZ_MEMBERS:
                raise _fail(what, path, f"has {len(members)} members; expected at most {_NPZ_MEMBERS}")
            for info in members:
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    readers = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}
                    if version not in readers:
                        raise ValueError(f"unsupported .npy version {version}")
                    shape, _, dtype = readers[version](f, max_header_size=10000)
                out[name] = (tuple(int(d) for d in shape), np.dtype(dtype))
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, TypeError,
            SyntaxError, KeyError, NotImplementedError) as exc:
        raise _fail(what, path, f"not an .npz archive of plain arrays ({' '.join(str(exc).split())})") from None
    return out


def read_npz(path: str | os.PathLike, what: str, *, max_bytes: int,
             kinds: Mapping[str, str] | None = None, default_kinds: str = NUMERIC_KINDS,
             check: Callable[[dict], None] | None = None) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path``, read without pickle after their headers
    pass: each dtype's kind must be in ``kinds[name]`` (else ``default_kinds``; ``U`` for
    text), the declared total must be at most ``max_bytes``, and ``check(headers)`` (the
    :func:`npz_headers` dict) may refuse shapes before any data is read."""
    headers = npz_headers(path, what)
    total = 0
    for name, (shape, dtype) in headers.items():
        allowed = (kinds or {}).get(name, default_kinds)
        if dtype.kind not in allowed or dtype.fields is not None or dtype.subdtype is not None:
            raise _fail(what, path, f"{name}: dtype {dtype}; expected "
                                    f"{_kind_words(allowed)}")
        total += math.prod(shape) * dtype.itemsize
        if total > max_bytes:
            raise _fail(what, path, f"{name}: shape {shape} of {dtype} declares {total} bytes in all; "
                                    f"expected at most {max_bytes}")
    if check is not None:
        check(headers)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in headers}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise _fail(what, path, f"damaged ({' '.join(str(exc).split())})") from None


def _kind_words(kinds: str) -> str:
    words = {"b": "bool", "i": "integer", "u": "unsigned integer", "f": "real", "U": "text"}
    return " or ".join(words.get(k, k) for k in kinds)


def npz_target(path: str | os.PathLike, what: str) -> Path:
    """Where to write a ``what`` file: ``path`` with ``.npz`` appended if missing; a
    ValueError if its folder does not exist."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    if not path.parent.is_dir():
        raise ValueError(f"{what} file {path}: directory {path.parent} does not exist")
    return path


def write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """Write plain arrays as an .npz atomically (a temporary file in the same folder,
    then ``os.replace``: a reader sees the old file or the new one, never half of one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
