"""Reading a weights file: one array ``weights`` in an ``.npz``, strictly and with bounded memory.

The zip directory and the ``.npy`` header of ``weights`` are read first (no pickle, no
object or structured dtypes); the dtype, the number of dimensions and the element count
(:data:`MAX_ELEMENTS`) are checked before any data is read, so a small hostile file (a
zip bomb, a header claiming 10^12 elements) cannot drive the memory up. Only real or
integer dtypes are accepted: complex (its imaginary part would be dropped), bool,
timedelta, datetime, strings and objects are refused. Every refusal is a one-line
:class:`~labkit.errors.UsageError` naming the file, the field and what was expected.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npy

from labkit.errors import UsageError
from labkit.program.statefile import check_file

MAX_FILE_BYTES = 64 << 20
MAX_MEMBERS = 64
MAX_ELEMENTS = 1 << 16  # one tile is 16 x 8; a 256 x 256 matrix is the most a weights file may hold
MAX_HEADER = 4096
NAME = "weights"


def weights_header(f, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from the ``.npy`` header at the start of ``f``, checked (no data read)."""
    try:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(f, max_header_size=MAX_HEADER)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(f, max_header_size=MAX_HEADER)
        else:
            raise UsageError(f"npy format {version}; expected 1.0 or 2.0")
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    except Exception as exc:  # a corrupt header: numpy says ValueError or others
        raise UsageError(f"{where} has no readable .npy header ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "iuf":
        raise UsageError(f"{where} has dtype {dtype}; expected real or integer numbers (no complex, bool, "
                         f"timedelta, strings or objects)")
    if len(shape) != 2:
        raise UsageError(f"{where} has shape {shape}; expected a 2-d matrix (rows x signed outputs)")
    n = int(np.prod(shape, dtype=object))
    if n > MAX_ELEMENTS:
        raise UsageError(f"{where} claims shape {shape} ({n} elements); expected at most {MAX_ELEMENTS} elements")
    return tuple(int(x) for x in shape), dtype


def load_weights(path: str | Path) -> np.ndarray:
    """The 2-d array ``weights`` of an npz file, as float (UsageError naming what is wrong)."""
    p = check_file(path, "weights file", MAX_FILE_BYTES)
    with open(p, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise UsageError(f"weights file {p} holds a single .npy array; expected an .npz file with an array "
                             f"named '{NAME}'")
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UsageError(f"weights file {p} is not a readable .npz file ({exc}); expected np.savez output") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise UsageError(f"weights file {p} holds {len(infos)} entries; expected at most {MAX_MEMBERS}")
        names = sorted(i.filename[:-4] if i.filename.endswith(".npy") else i.filename for i in infos)
        member = f"{NAME}.npy"
        if member not in zf.namelist():
            shown = names[:8] + (["..."] if len(names) > 8 else [])
            raise UsageError(f"weights file {p} holds {shown}; expected an array named '{NAME}'")
        where = f"weights file {p}, array '{NAME}'"
        try:
            with zf.open(member) as f:
                shape, dtype = weights_header(f, where)
            with zf.open(member) as f:
                w = npy.read_array(f, allow_pickle=False, max_header_size=MAX_HEADER)
        except UsageError:
            raise
        except Exception as exc:  # truncated data, a bad CRC, a corrupt deflate stream
            raise UsageError(f"{where} cannot be read ({type(exc).__name__}: {exc}); expected an intact file") \
                from None
    if w.shape != shape or w.dtype != dtype:
        raise UsageError(f"{where} read as {w.shape} {w.dtype}; expected {shape} {dtype} as its header says")
    return w.astype(float)
