"""Calibration files: one chip's fitted model, its SER report and where it came from.

A calibration file is a NumPy ``.npz`` archive of plain arrays (read back with
``allow_pickle=False``: a file can never run code on load). Keys:

=======================  ===================================================================
``format``               :data:`FORMAT` (a version string; an unknown one is refused)
``chip_id``              the chip the parameters belong to
``backend_uri``          the backend it was measured on
``created_at``           seconds since the epoch
``run_ids``              run-store ids of the measurement runs (int64 array)
``run_uids``             their uids (str array), and ``store``: the run-store path
``report_json``          the SER report (JSON text; SI units, ratios and dB)
``naive_weights_s`` ...  ideal linear models: ``naive_*``, ``linear_*`` weights (rows, cols)
                         in output seconds per unit input and ``*_offset_s`` (cols,)
``model/<key>``          :meth:`labkit.model.ArrayModel.to_dict` of the fitted model
=======================  ===================================================================

Model convention: the stored crossing-time offset is *physical* (before the TDC floors
the time to its LSB), so ``ArrayModel`` with ``quantize=True`` reproduces measured
times; the mean of a measured (floored) time is half an LSB earlier than the model's
unquantized output (:func:`labkit.calibrate.fits.predict_mean_s` applies that shift).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labkit.files import FileFormatError, npz_headers, npz_target, read_npz, write_npz
from labkit.model import ArrayModel

__all__ = ["FORMAT", "Calibration", "CalibrationMismatch", "LinearFit", "load_calibration",
           "load_calibrations", "read_calibration", "save_calibration"]

FORMAT = "labkit.Calibration/1"
_MODEL = "model/"


class CalibrationMismatch(ValueError):
    """A calibration file is for another chip than the one named."""


@dataclass
class LinearFit:
    """Ideal linear model ``t = offset_s - x @ weights_s`` (crossing times, s).

    ``weights_s`` (rows, cols): output seconds per unit input (``y = x @ weights_s``);
    ``offset_s`` (cols,): crossing time at zero input (s)."""

    weights_s: np.ndarray
    offset_s: np.ndarray

    def predict_s(self, x) -> np.ndarray:
        """Crossing times (s), ``(B, cols)``, for inputs ``x`` (B, rows) in [0, 1]."""
        return self.offset_s[None, :] - np.asarray(x, dtype=float) @ self.weights_s


@dataclass
class Calibration:
    """One chip's calibration: the fitted model (as plain arrays), the two linear
    extractions, the SER report and the runs the data came from."""

    chip_id: str
    model: dict[str, np.ndarray]  # ArrayModel.to_dict() of the fitted model
    naive: LinearFit
    linear: LinearFit
    report: dict[str, Any]
    backend_uri: str = ""
    run_ids: list[int] = field(default_factory=list)
    run_uids: list[str] = field(default_factory=list)
    store: str = ""
    created_at: float = field(default_factory=time.time)
    format: str = FORMAT
    read_currents_a: np.ndarray | None = None  # (rows, cols) averaged cell reads at calibration time

    def array_model(self, **switches) -> ArrayModel:
        """The fitted :class:`ArrayModel`; ``switches`` (quantize, clip, noise_std_s, dtype,
        device, droop, crosstalk, ...) pass through to it."""
        return ArrayModel.from_dict(self.model, **switches)

    def save(self, path) -> Path:
        return save_calibration(self, path)


def save_calibration(cal: Calibration, path) -> Path:
    """Write ``cal`` to ``path`` (``.npz`` appended if missing), atomically; returns the path."""
    path = npz_target(path, "calibration")
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "chip_id": np.array(str(cal.chip_id)),
        "backend_uri": np.array(str(cal.backend_uri)),
        "created_at": np.array(float(cal.created_at)),
        "run_ids": np.asarray(cal.run_ids, dtype=np.int64).reshape(-1),
        "run_uids": np.asarray([str(u) for u in cal.run_uids], dtype=str).reshape(-1),
        "store": np.array(str(cal.store)),
        "report_json": np.array(json.dumps(cal.report, default=_jsonable)),
        "naive_weights_s": np.asarray(cal.naive.weights_s, dtype=float),
        "naive_offset_s": np.asarray(cal.naive.offset_s, dtype=float),
        "linear_weights_s": np.asarray(cal.linear.weights_s, dtype=float),
        "linear_offset_s": np.asarray(cal.linear.offset_s, dtype=float),
    }
    if cal.read_currents_a is not None:
        arrays["read_currents_a"] = np.asarray(cal.read_currents_a, dtype=float)
    for key, value in cal.model.items():
        arrays[_MODEL + key] = np.asarray(value)
    for key, value in arrays.items():
        if value.dtype.kind == "O":
            raise ValueError(f"calibration entry {key!r} is not a plain array (dtype object)")
    return write_npz(path, arrays)


MAX_CALIBRATION_BYTES = 64 * 2**20  # declared array bytes of one calibration file
_TEXT = ("format", "chip_id", "backend_uri", "store", "report_json", _MODEL + "format")
_SCALARS = ("created_at",) + tuple(_MODEL + k for k in (
    "n_tiles", "rows", "cols", "eta_per_cell", "precharge_v", "threshold_v", "bitline_capacitance_f",
    "reference_current_a", "integration_time_s", "read_voltage_v", "input_bits", "tdc_bits", "tdc_lsb_s"))
_MAX_SIDE = 1024  # rows, cols and tiles a calibration may declare


def _calibration_shapes(path, headers: dict) -> None:
    """Refuse a calibration whose arrays (from the npz headers) are not exactly the
    shapes its own rows, cols and tiles imply; nothing of the data is read yet."""
    def fail(key, detail):
        return FileFormatError(f"calibration file {path}: {key}: {detail}")

    for key in _TEXT + _SCALARS:
        if key not in headers:
            raise fail(key, "missing; expected a labkit calibration file")
        if headers[key][0] != ():
            raise fail(key, f"shape {headers[key][0]}; expected a single value")
    for key in ("run_ids", "run_uids", "naive_weights_s", "naive_offset_s", "linear_weights_s",
                "linear_offset_s", *(_MODEL + k for k in _PARAMS), _MODEL + "pairs"):
        if key not in headers:
            raise fail(key, "missing; expected a labkit calibration file")
    with np.load(path, allow_pickle=False) as z:  # the three sizes only: 0-d, bounded by the header
        sides = {k: z[_MODEL + k] for k in ("rows", "cols", "n_tiles", "eta_per_cell")}
    for k in ("rows", "cols", "n_tiles"):
        v = sides[k]
        if v.dtype.kind not in "iu" or not (0 if k == "n_tiles" else 1) <= int(v) <= _MAX_SIDE:
            raise fail(_MODEL + k, f"{v!r}; expected a whole number in {0 if k == 'n_tiles' else 1}..{_MAX_SIDE}")
    r, c, n = int(sides["rows"]), int(sides["cols"]), int(sides["n_tiles"])
    lead = (n,) if n else ()
    want = {"naive_weights_s": (r, c), "linear_weights_s": (r, c), "naive_offset_s": (c,),
            "linear_offset_s": (c,), "read_currents_a": (r, c),
            _MODEL + "currents_a": lead + (r, c), _MODEL + "crosstalk_c": lead + (r, c),
            _MODEL + "eta_per_v": lead + ((r, c) if bool(sides["eta_per_cell"]) else (c,)),
            _MODEL + "offset_s": lead + (c,), _MODEL + "gain_s_per_c": lead + (c,)}
    for key, shape in want.items():
        if key in headers and headers[key][0] != shape:
            raise fail(key, f"shape {headers[key][0]}; expected {shape} for {r} rows x {c} cols")
    for key in ("run_ids", "run_uids"):
        if len(headers[key][0]) != 1 or headers[key][0][0] > 100_000:
            raise fail(key, f"shape {headers[key][0]}; expected one axis of at most 100000 entries")
    pairs = headers[_MODEL + "pairs"][0]
    if len(pairs) != 2 or pairs[1] != 2 or pairs[0] > c:
        raise fail(_MODEL + "pairs", f"shape {pairs}; expected (k, 2) with k <= {c}")


def read_calibration(path, chip_id: str | None = None) -> Calibration:
    """Read a calibration file (no pickle). With ``chip_id``, a file for another chip is a
    :class:`CalibrationMismatch`; an unknown format version or a damaged file a
    :class:`~labkit.files.FileFormatError` (a ValueError). Before any data is read the
    npz headers are checked: text fields are text, every other array is real or integer
    (no complex, no objects), the declared size is at most
    :data:`MAX_CALIBRATION_BYTES`, and shapes are exactly those its rows and cols imply;
    then every number must be finite."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"calibration file {path} does not exist")
    kinds = {k: "U" for k in _TEXT + ("run_uids",)}
    try:
        headers = npz_headers(path, "calibration file")
    except FileFormatError as exc:
        raise _not_calibration(path, exc) from None
    head = headers.get("format")
    fmt = ""
    if head is not None and head[0] == () and head[1].kind == "U" and head[1].itemsize <= 1024:
        with np.load(path, allow_pickle=False) as z:  # one short text value
            fmt = str(z["format"])
    if fmt != FORMAT:
        raise FileFormatError(f"calibration file {path} has format {fmt!r}; expected {FORMAT!r}")
    try:
        d = read_npz(path, "calibration file", max_bytes=MAX_CALIBRATION_BYTES, kinds=kinds,
                     check=lambda h: _calibration_shapes(path, h))
    except FileFormatError as exc:
        raise _not_calibration(path, exc) from None
    for key, v in d.items():
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise FileFormatError(f"calibration file {path}: {key}: holds NaN or infinite values; "
                                  "expected finite numbers")
    file_chip = str(d["chip_id"])
    if chip_id is not None and str(chip_id) != file_chip:
        raise CalibrationMismatch(
            f"calibration file {path} is for chip {file_chip!r}, not {str(chip_id)!r}; "
            f"calibrate this chip first (labkit calibrate --backend URI)")
    try:
        model = {k[len(_MODEL):]: v for k, v in d.items() if k.startswith(_MODEL)}
        report = json.loads(str(d["report_json"]))
        if not isinstance(report, dict):
            raise ValueError("report_json is not a JSON object")
        return Calibration(
            chip_id=file_chip,
            model=model,
            naive=LinearFit(d["naive_weights_s"], d["naive_offset_s"]),
            linear=LinearFit(d["linear_weights_s"], d["linear_offset_s"]),
            report=report,
            backend_uri=str(d["backend_uri"]),
            run_ids=[int(v) for v in d["run_ids"]],
            run_uids=[str(v) for v in d["run_uids"]],
            store=str(d["store"]),
            created_at=float(d["created_at"]),
            read_currents_a=d.get("read_currents_a"),
        )
    except (KeyError, ValueError, RecursionError) as exc:
        raise FileFormatError(f"calibration file {path} is incomplete or damaged "
                              f"({' '.join(str(exc).split())[:200]})") from None


def _not_calibration(path, exc: FileFormatError) -> FileFormatError:
    detail = str(exc).replace(f"calibration file {path}: ", "", 1)
    return FileFormatError(f"{path} is not a labkit calibration file: {detail}")


def load_calibration(path, chip_id: str | None = None, *, quantize: bool = True, **switches) -> ArrayModel:
    """The fitted :class:`ArrayModel` of a calibration file, ready to build analog layers.

    ``quantize=True`` (default) quantizes inputs to the chip's input clock and outputs
    to its TDC LSB (straight-through gradients), as the chip does; other ``switches``
    (clip, noise_std_s, droop, crosstalk, dtype, device, n_tiles is fixed by the file)
    pass through. ``chip_id`` checks the file is for that chip."""
    return read_calibration(path, chip_id).array_model(quantize=quantize, **switches)


_PARAMS = ("currents_a", "eta_per_v", "crosstalk_c", "offset_s", "gain_s_per_c")


def load_calibrations(paths, chip_ids=None, *, quantize: bool = True, **switches) -> ArrayModel:
    """One tiled :class:`ArrayModel` (``n_tiles = len(paths)``) from several calibration
    files, tile ``k`` from ``paths[k]`` (checked against ``chip_ids[k]`` if given). The
    files must share geometry and operating point; ``switches`` as in :func:`load_calibration`."""
    paths = list(paths)
    if not paths:
        raise ValueError("load_calibrations needs at least one calibration file, got none")
    ids = [None] * len(paths) if chip_ids is None else list(chip_ids)
    if len(ids) != len(paths):
        raise ValueError(f"{len(ids)} chip ids for {len(paths)} calibration files; expected one per file")
    models = [read_calibration(p, c).model for p, c in zip(paths, ids)]
    first = models[0]
    for p, m in zip(paths[1:], models[1:]):
        for key in first:
            if key in _PARAMS:
                continue
            if key not in m or not np.array_equal(np.asarray(m[key]), np.asarray(first[key])):
                raise ValueError(f"calibration file {p} differs from {paths[0]} in {key!r}; tiles must share "
                                 "geometry and operating point")
        if int(np.asarray(m["n_tiles"])) != 0:
            raise ValueError(f"calibration file {p} is already tiled; expected one array per file")
    stacked = dict(first)
    for key in _PARAMS:
        stacked[key] = np.stack([np.asarray(m[key]) for m in models])
    stacked["n_tiles"] = np.array(len(models))
    return ArrayModel.from_dict(stacked, quantize=quantize, **switches)


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
