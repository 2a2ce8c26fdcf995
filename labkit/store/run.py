"""A run being written: :class:`Run`, what ``store.run(...)`` returns.

Writes are staged in the store's memory and committed by it in one short transaction
(see :mod:`labkit.store.runstore` for when); ``Run.committed`` says what is durable.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from labkit.store.encoding import Column, check_name, dumps, le_array, spec_dumps
from labkit.store.signals import signals_deferred

if TYPE_CHECKING:
    from labkit.store import RunStore


class Run:
    """An open run: append data, then finish. Use as ``with store.run(...) as run:``.

    Leaving the block marks the run ``completed``; a ``KeyboardInterrupt`` (Ctrl-C, or
    SIGTERM under :func:`~labkit.store.signals.sigterm_as_keyboard_interrupt`) marks it
    ``aborted`` and any other exception ``failed`` with the exception text, then re-raises.

    ``committed`` maps each point table to the number of points durably committed;
    ``on_commit(run)``, if set, is called after every commit (from whichever thread
    committed; keep it short).
    """

    def __init__(self, store: "RunStore", run_id: int, uid: str, kind: str):
        self.store, self.id, self.uid, self.kind = store, run_id, uid, kind
        self.status = "running"
        self.committed: dict[str, int] = {}
        self.on_commit: Callable[["Run"], None] | None = None
        self._pending: dict[str, int] = {}
        self._specs: dict[str, list[Column]] = {}
        self._new_specs: set[str] = set()  # tables whose spec row is not committed yet
        self._seq: dict[str, int] = {}
        self._result: dict = {}

    # ---- data
    def add_points(self, table: str, **columns) -> int:
        """Append a batch of points to ``table``; each keyword is one column whose first
        axis is the point index (all columns the same length B, e.g. ``inputs`` (B, 16),
        ``outputs`` (B, 16), ``t`` (B,)). Columns, dtypes and per-point shapes are fixed
        by the first batch (later batches are cast when that is safe). Returns B."""
        check_name(table, "point table")
        if not columns:
            raise ValueError(f"add_points({table!r}) needs at least one column, e.g. inputs=X")
        arrays = {}
        for name, value in columns.items():
            check_name(name, "column")
            arr = np.asarray(value)
            if arr.ndim == 0:
                raise ValueError(f"column {table}.{name} must have a leading point axis, got a scalar")
            arrays[name] = arr
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            sizes = ", ".join(f"{k}={len(a)}" for k, a in arrays.items())
            raise ValueError(f"columns of {table} must have the same number of points, got {sizes}")
        n = lengths.pop()
        if n == 0:
            return 0
        spec = self._specs.get(table)
        if spec is None:
            les = {k: le_array(f"{table}.{k}", a) for k, a in arrays.items()}
            spec = [Column(k, a.dtype.str, tuple(a.shape[1:])) for k, a in les.items()]
            new_spec = spec
        else:
            new_spec = None
            les = self._cast_to_spec(table, spec, arrays)
        blob = b"".join(les[c.name].tobytes() for c in spec)
        self.store.stage(self, lambda: self._batch_ops(table, n, blob, new_spec),
                         f"store points of run {self.id}")
        return n

    @staticmethod
    def _cast_to_spec(table: str, spec: list[Column], arrays: dict) -> dict[str, np.ndarray]:
        names = [c.name for c in spec]
        if set(arrays) != set(names):
            raise ValueError(f"columns of {table} are {names}, got {list(arrays)}")
        les = {}
        for c in spec:
            a = arrays[c.name]
            if a.shape[1:] != c.shape:
                raise ValueError(f"column {table}.{c.name}: each point has shape {c.shape}, "
                                 f"got {a.shape[1:]}")
            if a.dtype.str != c.dtype:
                if not np.can_cast(a.dtype, np.dtype(c.dtype), "safe"):
                    raise ValueError(f"column {table}.{c.name} is {np.dtype(c.dtype)}, got "
                                     f"{a.dtype} (not safely castable)")
                a = a.astype(c.dtype)
            les[c.name] = le_array(f"{table}.{c.name}", a)
        return les

    def _batch_ops(self, table: str, n: int, blob: bytes, new_spec: list[Column] | None) -> list:
        # Called by the store under its lock once the write is accepted. Ordered so that
        # an interrupt between steps leaves a seq gap at worst; ``committed`` may
        # undercount, never overcount.
        ops = []
        if new_spec is not None:
            ops.append(("INSERT OR REPLACE INTO point_tables VALUES (?, ?, ?)",
                        (self.id, table, spec_dumps(new_spec))))
            self._specs[table] = new_spec
            self._new_specs.add(table)
        seq = self._seq.get(table, 0)
        self._seq[table] = seq + 1
        ops.append(("INSERT INTO point_batches VALUES (?, ?, ?, ?, ?)", (self.id, table, seq, n, blob)))
        self._pending[table] = self._pending.get(table, 0) + n
        return ops

    def put_array(self, name: str, array) -> None:
        """Store (or replace) a whole named array, e.g. a (16, 16) current map in A."""
        check_name(name, "array")
        arr = le_array(name, array)
        op = ("INSERT OR REPLACE INTO arrays VALUES (?, ?, ?, ?, ?)",
              (self.id, name, arr.dtype.str, json.dumps(list(arr.shape)), arr.tobytes()))
        self.store.stage(self, lambda: [op], f"store array {name!r} of run {self.id}")

    def put_result(self, result: Mapping[str, Any]) -> None:
        """Merge ``result`` (JSON-able: numbers, strings, lists, dicts) into the summary."""
        if not isinstance(result, Mapping):
            raise ValueError(f"put_result expects a dict, got {type(result).__name__}")
        merged = {**self._result, **result}
        op = ("UPDATE runs SET result=? WHERE id=?", (dumps(merged, "result"), self.id))
        self.store.stage(self, lambda: [op], f"store the result of run {self.id}")
        self._result = merged

    def flush(self) -> None:
        """Commit everything written so far, now."""
        self.store.flush()

    # ---- commit bookkeeping (called by the store under its lock)
    def commit_done(self) -> None:
        """The store committed this run's staged writes: count them as durable."""
        self._new_specs.clear()
        if self._pending:
            while self._pending:  # pop first: an interrupt may undercount, never double
                t, k = self._pending.popitem()
                self.committed[t] = self.committed.get(t, 0) + k
            if self.on_commit is not None:
                try:
                    self.on_commit(self)
                except Exception:  # a failing callback must not undo a commit
                    pass

    def writes_dropped(self) -> None:
        """The store dropped this run's staged writes (a failed commit)."""
        self._pending.clear()
        for table in self._new_specs:  # their spec rows were dropped too
            self._specs.pop(table, None)
        self._new_specs.clear()

    # ---- end
    @property
    def open(self) -> bool:
        return self.status == "running"

    def finish(self, status: str = "completed", reason: str = "") -> None:
        """Commit all data and mark the run ``completed`` (or ``aborted``/``failed``)."""
        if status not in ("completed", "aborted", "failed"):
            raise ValueError(f"status {status!r} is not one of completed, aborted, failed")
        if not self.open:
            raise ValueError(f"run {self.id} is already {self.status}")
        with signals_deferred():
            self.store.end_run(self, status, reason)

    def abort(self, reason: str = "aborted by user") -> None:
        self.finish("aborted", reason)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, etype, exc, tb) -> bool:
        if not self.open:
            return False
        if etype is None or (issubclass(etype, SystemExit) and exc.code in (0, None)):
            self.finish("completed")
            return False
        if issubclass(etype, KeyboardInterrupt):
            status, reason = "aborted", "interrupted" + (f" ({exc.args[0]})" if exc.args else " (SIGINT)")
        elif issubclass(etype, SystemExit):
            status, reason = "aborted", f"exit {exc.code}"
        else:
            status, reason = "failed", f"{etype.__name__}: {exc}".splitlines()[0][:500]
        try:
            self.finish(status, reason)
        except Exception:  # e.g. the disk is still full: keep the original error
            pass
        return False

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.kind} {self.status} in {self.store.path}>"
