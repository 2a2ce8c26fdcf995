"""The chip-state file: what was programmed onto which chip, cell by cell (JSON, no pickle).

Written by program-and-verify atomically (temporary file in the same folder, fsync,
``os.replace``) **before** every erase or pulse call (write-ahead) and after every round,
so whenever the writer dies the record never claims more than the chip holds. Per cell
(``(rows, cols)`` grids, ``null`` where not applicable): target current (A), last
verified current (A), program pulses counted, and a status:

- ``untargeted``: not part of the programming job;
- ``pending``: not yet within tolerance (or re-opened by a disturb / erase);
- ``pulsing``: a pulse was about to be applied, or in flight, when the record was
  written; it is counted in ``pulses`` (possibly applied) and its current is unknown
  until it is read again;
- ``unknown``: its row was about to be erased (or in flight), or, while a job runs, a
  cell in its row or column was pulsed since its last read (half-select disturb): its
  current is unknown until it is read again;
- ``done``: read within tolerance at its last verify, and nothing pulsed its row or
  column since;
- ``failed``: gave up (``reasons`` says why: unreachable, max pulses, overshoot).

``intent`` is the operation announced by the last write (``{"op": "erase", "rows": ...}``
or ``{"op": "pulse", "cells": ...}``) or null once a later write recorded its result; a
file loaded with an intent still set died during that operation, and :meth:`ChipState.load`
marks the cells it names unknown whatever else the file says. Counts are never short:
``pulses`` and ``row_erases`` count every operation announced, and
``pulses_unconfirmed`` / ``row_erases_unconfirmed`` how many of them were in flight when
a run died (so ``pulses - pulses_unconfirmed <= applied <= pulses``). The chip's life
on record (carried from one record to the next on the same chip, in-flight counts
included): ``row_erases`` / ``row_erases_unconfirmed`` per row, ``life_pulses`` /
``life_pulses_unconfirmed`` per cell, and their totals ``erase_cycles`` / ``program_cycles``;
the same bounds hold for each, so the confirmed part never claims more than was applied.
A cell's erase-and-program cycles are the erases of its row; :attr:`ChipState.cycles_used`
is the busiest row's (what an endurance budget is checked against). ``run_status`` is ``complete`` only
after a final verify read of every cell. Currents are SI amperes; times are seconds
since the epoch. The file is read strictly (labkit.program.statefile).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labkit.errors import UsageError
from labkit.program import statefile as sf

FORMAT = "labkit.chipstate/1"
STATUSES = ("untargeted", "pending", "pulsing", "unknown", "done", "failed")
RUN_STATUSES = ("programming", "refreshing", "interrupted", "complete")
MODEL_NUMBERS = ("b", "c", "delta", "a_pop", "var_pop", "sigma_m", "granule", "v_ref", "erase_rate_per_s")


class ChipMismatchError(UsageError):
    """A chip-state file that belongs to another chip."""


def state_file_name(chip_id: str) -> str:
    """The default chip-state file name of a chip: ``chipstate-CHIPID.json`` (unsafe characters as ``_``)."""
    return f"chipstate-{re.sub(r'[^A-Za-z0-9_.-]+', '_', chip_id)}.json"


def _grid(a: np.ndarray) -> list:
    """Float grid -> nested lists with None for NaN (strict JSON)."""
    return [[v if math.isfinite(v) else None for v in row] for row in np.asarray(a, dtype=float).tolist()]


@dataclass
class ChipState:
    """One chip's programming record. Grids are ``(rows, cols)`` (NaN = none)."""

    chip_id: str
    rows: int
    cols: int
    targets_a: np.ndarray
    achieved_a: np.ndarray
    pulses: np.ndarray  # int, program pulses counted per cell (all runs on this record; possibly applied included)
    status: np.ndarray  # str, one of STATUSES
    backend: str = ""
    firmware: str = ""
    tolerance: float = 0.01
    algorithm: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    run_status: str = "programming"  # one of RUN_STATUSES
    reasons: dict = field(default_factory=dict)  # "r,c" -> why the cell failed
    row_erases: list = field(default_factory=list)  # erase pulses per row (announced ones included)
    settings: dict = field(default_factory=dict)  # read voltage, integration time, temperature
    window: dict | None = None  # WeightWindow.to_dict() when the targets came from weights
    weights: np.ndarray | None = None  # (rows, pairs) when mapped from weights
    model: dict = field(default_factory=dict)  # learned programming response (reused on refresh)
    history: list = field(default_factory=list)  # [{"time", "event", ...}]
    intent: dict | None = None  # the erase / pulse announced by the last write, until its result is recorded
    pulses_unconfirmed: np.ndarray | None = None  # int grid: counted pulses that were in flight when a run died
    row_erases_unconfirmed: list = field(default_factory=list)
    erase_cycles: int = 0  # row erases over the chip's life on record
    program_cycles: int = 0  # program pulses over the chip's life on record
    life_pulses: np.ndarray | None = None  # int grid: program pulses per cell over the chip's life on record
    life_pulses_unconfirmed: np.ndarray | None = None  # int grid: of those, in flight when a run died

    def __post_init__(self):
        shape = (self.rows, self.cols)
        if self.pulses_unconfirmed is None:
            self.pulses_unconfirmed = np.zeros(shape, dtype=int)
        if self.life_pulses is None:
            self.life_pulses = np.zeros(shape, dtype=int)
        if self.life_pulses_unconfirmed is None:
            self.life_pulses_unconfirmed = np.zeros(shape, dtype=int)
        if not self.row_erases:
            self.row_erases = [0] * self.rows
        if not self.row_erases_unconfirmed:
            self.row_erases_unconfirmed = [0] * self.rows

    @classmethod
    def new(cls, identity, rows: int, cols: int, targets_a: np.ndarray, **kw) -> "ChipState":
        t = np.asarray(targets_a, dtype=float)
        status = np.where(np.isfinite(t), "pending", "untargeted").astype(object)
        return cls(chip_id=identity.chip_id, rows=rows, cols=cols, targets_a=t.copy(),
                   achieved_a=np.full((rows, cols), np.nan), pulses=np.zeros((rows, cols), dtype=int),
                   status=status, backend=identity.backend, firmware=identity.firmware, **kw)

    def carry_counters(self, earlier: "ChipState") -> None:
        """Take over the chip's life counters (cycles, erases per row, pulses per cell, and
        the in-flight part of each) from an earlier record of the same grid."""
        self.erase_cycles, self.program_cycles = earlier.erase_cycles, earlier.program_cycles
        if earlier.rows == self.rows:
            self.row_erases = list(earlier.row_erases)
            self.row_erases_unconfirmed = list(earlier.row_erases_unconfirmed)
        if (earlier.rows, earlier.cols) == (self.rows, self.cols):
            self.life_pulses = np.array(earlier.life_pulses, dtype=int)
            self.life_pulses_unconfirmed = np.array(earlier.life_pulses_unconfirmed, dtype=int)

    @property
    def cycles_used(self) -> int:
        """Erase-and-program cycles of the busiest row over the chip's life on record
        (row erases, in-flight ones included: never short)."""
        return int(max(self.row_erases, default=0))

    # ---------------------------------------------------------------- queries
    def cells(self, status: str) -> np.ndarray:
        """``(N, 2)`` cells with ``status``, row-major."""
        return np.argwhere(self.status == status)

    def count(self, status: str) -> int:
        return int(np.sum(self.status == status))

    def check_chip(self, identity) -> None:
        """ChipMismatchError unless this record belongs to ``identity.chip_id``."""
        if identity.chip_id != self.chip_id:
            raise ChipMismatchError(f"chip-state file is for chip {self.chip_id!r}, but the backend is chip "
                                    f"{identity.chip_id!r}; nothing was programmed")

    def apply_intent(self) -> None:
        """Cells named by an unfinished intent become unknown (``pulsing`` for pulses)."""
        it = self.intent
        if not it:
            return
        live = np.isin(self.status, ("pending", "done", "pulsing", "unknown"))
        if it["op"] == "erase":
            hit = np.zeros_like(live)
            hit[list(it["rows"])] = True
            self.status[hit & live] = "unknown"
        else:
            cells = np.asarray(it["cells"], dtype=int).reshape(-1, 2)
            hit = np.zeros_like(live)
            hit[cells[:, 0], cells[:, 1]] = True
            self.status[hit & live & (self.status != "unknown")] = "pulsing"

    # ---------------------------------------------------------------- file
    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "chip_id": self.chip_id, "backend": self.backend, "firmware": self.firmware,
            "rows": self.rows, "cols": self.cols, "created_at": self.created_at, "updated_at": self.updated_at,
            "run_status": self.run_status, "tolerance": self.tolerance, "algorithm": self.algorithm,
            "settings": self.settings, "window": self.window,
            "weights": None if self.weights is None else _grid(self.weights),
            "targets_a": _grid(self.targets_a), "achieved_a": _grid(self.achieved_a),
            "pulses": np.asarray(self.pulses, dtype=int).tolist(),
            "status": [list(map(str, row)) for row in self.status],
            "reasons": dict(self.reasons), "row_erases": [int(x) for x in self.row_erases],
            "model": self.model, "history": self.history, "intent": self.intent,
            "pulses_unconfirmed": np.asarray(self.pulses_unconfirmed, dtype=int).tolist(),
            "row_erases_unconfirmed": [int(x) for x in self.row_erases_unconfirmed],
            "erase_cycles": int(self.erase_cycles), "program_cycles": int(self.program_cycles),
            "life_pulses": np.asarray(self.life_pulses, dtype=int).tolist(),
            "life_pulses_unconfirmed": np.asarray(self.life_pulses_unconfirmed, dtype=int).tolist(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + fsync + os.replace); returns the path."""
        self.updated_at = time.time()
        path = Path(path)
        text = json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a record is for the lab to read
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "ChipState":
        """Check every field (UsageError naming the field and what was expected) and build."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else None
            raise UsageError(f"not a chip-state file (format {sf._short(got)}; expected {FORMAT!r})")
        unknown = set(d) - set(FIELDS)
        if unknown:
            raise UsageError(f"unknown field {sorted(unknown)[0]!r}; expected only {', '.join(FIELDS)}")
        rows, cols = sf.integer(d, "rows", 1, sf.MAX_SIDE), sf.integer(d, "cols", 1, sf.MAX_SIDE)
        shape = (rows, cols)
        status = sf.grid(d.get("status"), "status", shape, "str")
        bad = set(status.ravel()) - set(STATUSES)
        if bad:
            raise UsageError(f"field 'status' holds {sorted(bad)[0]!r}; expected one of {list(STATUSES)}")
        pulses = sf.grid(d.get("pulses"), "pulses", shape, "int")
        unconfirmed = sf.grid(d.get("pulses_unconfirmed", np.zeros(shape, int).tolist()), "pulses_unconfirmed",
                              shape, "int")
        if np.any(unconfirmed > pulses):
            raise UsageError("field 'pulses_unconfirmed' exceeds 'pulses'; expected at most the pulses counted")
        zeros = np.zeros(shape, int).tolist()
        life = sf.grid(d.get("life_pulses", zeros), "life_pulses", shape, "int")
        life_unconfirmed = sf.grid(d.get("life_pulses_unconfirmed", zeros), "life_pulses_unconfirmed", shape, "int")
        if np.any(life_unconfirmed > life):
            raise UsageError("field 'life_pulses_unconfirmed' exceeds 'life_pulses'; expected at most the pulses "
                             "counted")
        weights = d.get("weights")
        if weights is not None:
            weights = sf.grid(weights, "weights", (rows, None), "float", width_max=cols)
            if not np.all(np.isfinite(weights)):
                raise UsageError("field 'weights' holds null; expected finite weights")
        window = d.get("window")
        if window is not None:
            window = check_window(window)
        history = d.get("history", [])
        if not isinstance(history, list) or len(history) > sf.MAX_HISTORY:
            raise UsageError(f"field 'history' is not a list of at most {sf.MAX_HISTORY} events")
        history = [sf.scalar_dict(h, f"history[{i}]") for i, h in enumerate(history)]
        reasons = d.get("reasons", {})
        if not isinstance(reasons, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in reasons.items()):
            raise UsageError("field 'reasons' is not an object of \"row,col\" -> text")
        st = cls(
            chip_id=sf.string(d, "chip_id"), rows=rows, cols=cols,
            targets_a=sf.grid(d.get("targets_a"), "targets_a", shape),
            achieved_a=sf.grid(d.get("achieved_a"), "achieved_a", shape), pulses=pulses, status=status,
            backend=sf.string(d, "backend", default=""), firmware=sf.string(d, "firmware", default=""),
            tolerance=sf.number(d, "tolerance", 1e-12, 0.5), algorithm=sf.string(d, "algorithm", default=""),
            created_at=sf.number(d, "created_at", default=0.0), updated_at=sf.number(d, "updated_at", default=0.0),
            run_status=sf.string(d, "run_status", RUN_STATUSES), reasons=dict(reasons),
            row_erases=sf.int_list(d.get("row_erases", [0] * rows), "row_erases", rows),
            settings=sf.scalar_dict(d.get("settings", {}), "settings"), window=window, weights=weights,
            model=_check_model(d.get("model", {}), shape), history=history,
            intent=_check_intent(d.get("intent"), shape), pulses_unconfirmed=unconfirmed,
            row_erases_unconfirmed=sf.int_list(d.get("row_erases_unconfirmed", [0] * rows),
                                               "row_erases_unconfirmed", rows),
            erase_cycles=sf.integer(d, "erase_cycles", default=0),
            program_cycles=sf.integer(d, "program_cycles", default=0),
            life_pulses=life, life_pulses_unconfirmed=life_unconfirmed,
        )
        st.apply_intent()
        return st

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ChipState":
        """Read a chip-state file strictly (UsageError naming the file and the field)."""
        d = sf.read_json(path)
        try:
            return cls.from_dict(d)
        except UsageError as exc:
            raise type(exc)(f"chip-state file {path}: {exc}") from None


FIELDS = tuple(ChipState(chip_id="", rows=1, cols=1, targets_a=np.zeros((1, 1)), achieved_a=np.zeros((1, 1)),
                         pulses=np.zeros((1, 1), int), status=np.zeros((1, 1), object)).to_dict())


def check_window(v) -> dict:
    """A WeightWindow.to_dict() record, checked (UsageError naming the field)."""
    from labkit.program.mapping import WeightWindow

    if not isinstance(v, dict) or set(v) - {"i_min_a", "i_max_a", "scheme"}:
        raise UsageError(f"field 'window' is {sf._short(v)}; expected an object of i_min_a, i_max_a, scheme")
    try:
        sf.number(v, "i_min_a", 0.0, 1.0)
        sf.number(v, "i_max_a", 0.0, 1.0)
        return WeightWindow.from_dict(v).to_dict()
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"field 'window': {exc}") from None


def _check_model(v, shape: tuple[int, int]) -> dict:
    if not isinstance(v, dict):
        raise UsageError(f"field 'model' is {sf._short(v)}; expected an object")
    allowed = set(MODEL_NUMBERS) | {"planner", "a", "erased_a"}
    if set(v) - allowed:
        raise UsageError(f"field 'model' has unknown key {sorted(set(v) - allowed)[0]!r}; "
                         f"expected some of {sorted(allowed)}")
    for name in MODEL_NUMBERS:
        if name in v:
            sf.number(v, name)
    if "erase_rate_per_s" in v and v["erase_rate_per_s"] <= 0:
        raise UsageError("field 'model'.erase_rate_per_s is not positive; expected a rate in 1/s")
    if "planner" in v:
        sf.string(v, "planner")
    if "erased_a" in v:
        sf.grid(v["erased_a"], "model.erased_a", shape)
    if "a" in v:
        a = v["a"]
        if not isinstance(a, list) or not 1 <= len(a) <= shape[0]:
            raise UsageError(f"field 'model.a' is not a list of 1 to {shape[0]} rows")
        sf.grid(a, "model.a", (len(a), None), width_max=shape[1])
    return dict(v)


def _check_intent(v, shape: tuple[int, int]) -> dict | None:
    if v is None:
        return None
    if not isinstance(v, dict) or v.get("op") not in ("erase", "pulse"):
        raise UsageError(f"field 'intent' is {sf._short(v)}; expected null or an erase / pulse operation")
    if v["op"] == "erase":
        rows = v.get("rows")
        if not isinstance(rows, list) or not rows or not all(
                isinstance(r, int) and not isinstance(r, bool) and 0 <= r < shape[0] for r in rows):
            raise UsageError(f"field 'intent'.rows is {sf._short(rows)}; expected row numbers below {shape[0]}")
    else:
        cells = sf.grid(v.get("cells"), "intent.cells", (len(v.get("cells") or []), 2), "int") \
            if isinstance(v.get("cells"), list) and v.get("cells") else None
        if cells is None or np.any(cells[:, 0] >= shape[0]) or np.any(cells[:, 1] >= shape[1]):
            raise UsageError(f"field 'intent'.cells is {sf._short(v.get('cells'))}; expected [row, col] pairs "
                             f"inside {shape[0]}x{shape[1]}")
    return dict(v)
