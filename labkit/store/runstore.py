"""The run store: every bench run in one SQLite file (WAL mode), crash-safe.

A run is one row of metadata (kind, backend, chip, operating point, provenance,
versions, seeds, status) plus its data: *point tables* appended in batches while the
run goes on (``run.add_points("vmm", inputs=X, outputs=Y, t=T)``), whole named arrays
(``run.put_array("currents", I)``) and a summary JSON (``run.put_result({...})``).

Crash safety: writes are staged in memory and committed in one short transaction at
most ``commit_interval`` seconds (default 1 s) after the first uncommitted write, by
the writer itself or by a background flusher thread, and always on finish/abort/close
and before this store reads. A SIGKILL therefore loses at most the last second of
points (plus the time of a commit in progress: milliseconds at bench rates, about a
second when appending flat out at 250,000 points/s); a batch is one row, so it is
either wholly stored or not at all. ``synchronous=FULL``: committed data also
survives a power cut. ``Run.committed`` and ``Run.on_commit`` tell a writer what is
durable (the crash tests use them).

Locking model: the file is in WAL mode, so readers (``labkit runs``, another
process's ``load``) never wait for a writer, nor a writer for readers. Writers take
SQLite's single write lock only for the length of one commit (``BEGIN IMMEDIATE``,
the staged inserts, ``COMMIT``: milliseconds at bench rates), with SIGINT/SIGTERM
held back meanwhile so an interrupt never leaves a transaction open. A writer that
finds the lock taken waits at most :data:`~labkit.store.connection.LOCK_WAIT_S`
(5 s), then raises :class:`~labkit.store.connection.StoreLockedError`, one line naming
the process holding the lock (pid, command line, whether it is stopped), found through
the lock itself (:mod:`labkit.store.locking`); its staged data stays staged, so a
later commit can still store it. While that same stopped process still holds the
lock, later commits of this store fail at once instead of waiting again. A process
stopped by Ctrl-Z between commits holds no lock and blocks nobody.

Status of a run: ``running`` -> ``completed`` | ``aborted`` (KeyboardInterrupt, SIGINT,
or SIGTERM through :func:`~labkit.store.signals.sigterm_as_keyboard_interrupt`; the
reason is kept) | ``failed`` (any other exception; its text is kept). A dead
``running`` run is shown ``interrupted`` (:mod:`labkit.store.liveness`). The file
itself is never rewritten by a reader.

Units: times are seconds since the epoch (``time.time()``); point and array values are
whatever SI quantity the caller stores.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from labkit.store import reading
from labkit.store.connection import (LOCK_WAIT_S, StoreError, StoreLockedError, begin_write, is_locked,
                                     locked_error, open_connection, translate)
from labkit.store.encoding import check_name, decode_batches, dumps, from_bytes, spec_loads
from labkit.store.hdf5 import export_hdf5
from labkit.store.liveness import HEARTBEAT_S, OPEN_RUNS, STORES, start_flusher
from labkit.store.loaded import LoadedRun
from labkit.store.locking import write_lock_holder
from labkit.store.run import Run
from labkit.store.schema import RUN_COLUMNS, SQLITE_MAGIC
from labkit.store.signals import signals_deferred

DEFAULT_FILENAME = "labkit-runs.sqlite"
ENV_VAR = "LABKIT_STORE"


def default_store_path() -> Path:
    """``$LABKIT_STORE`` if set, else ``labkit-runs.sqlite`` in the current directory."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env) if env else Path.cwd() / DEFAULT_FILENAME


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from labkit import __version__

    out = {"labkit": __version__, "python": platform.python_version(),
           "numpy": np.__version__, "sqlite": sqlite3.sqlite_version,
           "platform": platform.platform()}
    for pkg in ("torch", "h5py", "pyvisa", "pyserial"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


class RunStore:
    """Runs in one SQLite file (WAL mode). ``RunStore()`` uses :func:`default_store_path`.

    ``create=False`` refuses a missing file (for readers); ``readonly=True`` opens the
    file read-only. ``commit_interval`` (s) bounds how long a write stays uncommitted.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True,
                 readonly: bool = False, commit_interval: float = 1.0):
        self.path = Path(path) if path is not None else default_store_path()
        if not commit_interval > 0:
            raise ValueError(f"commit_interval={commit_interval} s must be > 0")
        self.commit_interval = float(commit_interval)
        self.readonly = readonly
        self.stop_event = threading.Event()
        self.key = str(self.path.resolve())
        self.owner_pid = os.getpid()
        self._lock = threading.RLock()
        self._open: dict[int, Run] = {}
        self._staged: list[tuple[str, tuple]] = []
        self._dirty_since: float | None = None
        self._last_beat = 0.0
        self._blocked_by: int | None = None  # pid of a stopped lock holder seen last commit
        self._background_error: StoreError | None = None
        self._flusher: threading.Thread | None = None
        if not create and not self.path.exists():
            raise StoreError(f"no run store at {self.path}")
        if self.path.is_dir():
            raise StoreError(f"run store {self.path} is a directory, expected a .sqlite file")
        head = b""
        with contextlib.suppress(OSError):  # never turn someone else's file into a store
            with open(self.path, "rb") as f:
                head = f.read(16)
        if head and head != SQLITE_MAGIC:
            raise StoreError(f"run store {self.path} is not a labkit run store (not an SQLite file)")
        self._conn = open_connection(self.path, readonly)
        STORES.add(self)

    # ---- lifecycle
    def close(self) -> None:
        """Commit pending writes and close the file (open runs stay 'running')."""
        with self._lock:
            if self._conn is None:
                return
            self.stop_event.set()
            try:
                self.flush()
            finally:
                for run in self._open.values():
                    OPEN_RUNS.discard((self.key, run.id))
                self._open.clear()
                self._conn.close()
                self._conn = None
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=2)

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        return self._db().execute("PRAGMA journal_mode").fetchone()[0]

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"run store {self.path} is closed")
        return self._conn

    # ---- writing
    def start_run(self, kind: str, backend_uri: str = "", chip_id: str = "",
                  settings: Mapping | Any = None, provenance: Mapping | None = None,
                  seeds: Mapping | None = None) -> Run:
        """Record a new run (status 'running') and return it. ``settings`` may be a dict
        or a dataclass (e.g. VmmSettings); ``provenance`` holds station file contents,
        instrument identities, calibration ids...; ``seeds`` the random seeds used."""
        check_name(kind, "run kind")
        if self.readonly:
            raise StoreError(f"run store {self.path} is opened read-only: cannot start a run")
        uid = uuid.uuid4().hex
        now = time.time()
        row = (uid, kind, str(backend_uri), str(chip_id), "running", now, now, socket.gethostname(),
               os.getpid(), dumps(_versions(), "versions"), dumps(settings or {}, "settings"),
               dumps(provenance or {}, "provenance"),
               None if seeds is None else dumps(seeds, "seeds"))

        def insert(db):
            return db.execute(
                "INSERT INTO runs (uid, kind, backend_uri, chip_id, status, started_at, heartbeat_at,"
                " host, pid, versions, settings, provenance, seeds) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row).lastrowid

        with self._lock:
            self._db()
            run = Run(self, self._commit(f"start a {kind} run", insert), uid, kind)
            self._open[run.id] = run
            OPEN_RUNS.add((self.key, run.id))
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = start_flusher(self)
        return run

    def run(self, kind: str, backend_uri: str = "", chip_id: str = "", settings=None,
            provenance=None, seeds=None) -> Run:
        """:meth:`start_run`, for ``with store.run(...) as run:``."""
        return self.start_run(kind, backend_uri, chip_id, settings, provenance, seeds)

    def flush(self) -> None:
        """Commit all staged writes of every run of this store, now."""
        with self._lock:
            if self._conn is None:
                return
            self._raise_background_error()
            if self._staged:
                self._commit("commit")

    def stage(self, run: Run, make_ops: Callable[[], list], doing: str) -> None:
        """Stage the SQL ``(statement, params)`` pairs that ``make_ops()`` returns for
        ``run`` (called by :class:`Run`); commits them when the interval is due."""
        with self._lock:
            self._db()
            if not run.open or self._open.get(run.id) is not run:
                raise ValueError(f"run {run.id} is {run.status if not run.open else 'closed'}: "
                                 "cannot add data")
            self._raise_background_error()
            self._staged.extend(make_ops())
            if self._dirty_since is None:
                self._dirty_since = time.monotonic()
            if time.monotonic() - self._dirty_since >= self.commit_interval:
                self._commit(doing)

    def end_run(self, run: Run, status: str, reason: str) -> None:
        """Commit the staged writes and mark ``run`` ``status`` (called by :meth:`Run.finish`)."""
        with self._lock:
            self._db()
            self._commit(f"mark run {run.id} {status}", lambda db: db.execute(
                "UPDATE runs SET status=?, reason=?, finished_at=? WHERE id=?",
                (status, reason, time.time(), run.id)))
            run.status = status
            self._open.pop(run.id, None)
            OPEN_RUNS.discard((self.key, run.id))

    def tick(self) -> None:
        """Flusher step: commit due staged writes; refresh heartbeats of idle open runs."""
        with self._lock:
            if self._conn is None:
                return
            now = time.monotonic()
            due = bool(self._staged) and (self._dirty_since is None
                                          or now - self._dirty_since >= self.commit_interval)
            beat = bool(self._open) and now - self._last_beat >= HEARTBEAT_S
            if not (due or beat):
                return
            try:
                self._commit("commit")
            except StoreError as exc:
                if not isinstance(exc, StoreLockedError):
                    self._background_error = exc  # the writer sees it on its next call

    def _raise_background_error(self) -> None:
        if self._background_error is not None:
            exc, self._background_error = self._background_error, None
            raise exc

    def _commit(self, doing: str, extra: Callable[[sqlite3.Connection], Any] | None = None):
        """One short write transaction: the staged writes, ``extra(db)`` and the heartbeats
        of the open runs. Returns what ``extra`` returned. On a held lock the staged
        writes stay staged; on any other failure they are dropped (committed data stays)."""
        db = self._db()
        if self._blocked_by is not None:
            holder = write_lock_holder(self.path)
            if holder is not None and holder.pid == self._blocked_by and holder.stopped:
                raise locked_error(self.path, doing, LOCK_WAIT_S)
            self._blocked_by = None
        with signals_deferred():
            t0 = time.monotonic()
            try:
                begin_write(db)
            except sqlite3.Error as exc:
                if not is_locked(exc):
                    self._drop_staged()
                    raise translate(exc, self.path, doing) from None
                err = locked_error(self.path, doing, round(time.monotonic() - t0, 1))
                holder = write_lock_holder(self.path)
                self._blocked_by = holder.pid if holder is not None and holder.stopped else None
                raise err from None
            staged, self._staged = self._staged, []  # taken: never executed twice
            try:
                for sql, params in staged:
                    db.execute(sql, params)
                out = extra(db) if extra is not None else None
                if self._open:
                    now = time.time()
                    db.executemany("UPDATE runs SET heartbeat_at=? WHERE id=?",
                                   [(now, rid) for rid in self._open])
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                self._drop_staged()
                raise translate(exc, self.path, doing) from None
            except BaseException:  # not committed: the writes stay staged for the next commit
                with contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                self._staged[:0] = staged
                raise
            self._dirty_since = None
            self._last_beat = time.monotonic()
            for run in list(self._open.values()):
                run.commit_done()
        return out

    def _drop_staged(self) -> None:
        self._staged.clear()
        self._dirty_since = None
        for run in self._open.values():
            run.writes_dropped()

    # ---- reading
    def _read(self, fn, doing: str):
        with self._lock:
            db = self._db()
            if self._staged:  # a store reads its own writes
                self.flush()
            try:
                return fn(db)
            except sqlite3.Error as exc:
                raise translate(exc, self.path, doing) from None

    def load(self, run_ref) -> LoadedRun:
        """A stored run by id (int or digits), uid, or ``'latest'``; ValueError if absent."""
        def go(db):
            rid = reading.resolve(db, self.path, run_ref)
            row = db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", (rid,)).fetchone()
            return LoadedRun.from_row(row, reading.table_counts(db, rid), reading.array_names(db, rid), self)
        return self._read(go, f"read run {run_ref}")

    def list_runs(self, kind: str | None = None, limit: int | None = None) -> list[LoadedRun]:
        """Stored runs, oldest first (the last ``limit`` if given), optionally of one kind."""
        def go(db):
            where, params = ("WHERE kind=?", [kind]) if kind else ("", [])
            sql = f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY id DESC"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(int(limit))
            rows = db.execute(sql, params).fetchall()[::-1]
            counts, names = reading.all_table_counts(db), reading.all_array_names(db)
            return [LoadedRun.from_row(r, counts.get(r[0], {}), names.get(r[0], []), self) for r in rows]
        return self._read(go, "list runs")

    def read_points(self, rid: int, table: str) -> dict[str, np.ndarray]:
        """All committed points of point table ``table`` of run ``rid``, ``{column: array}``."""
        spec, rows = self._read(lambda db: reading.point_rows(db, rid, table), f"read points of run {rid}")
        try:
            return decode_batches(rows, spec_loads(spec), f"run store {self.path}: a batch of {table} "
                                                          f"in run {rid}")
        except ValueError as exc:
            raise StoreError(str(exc)) from None

    def read_arrays(self, rid: int) -> dict[str, np.ndarray]:
        """All named arrays of run ``rid``."""
        rows = self._read(lambda db: reading.array_rows(db, rid), f"read arrays of run {rid}")
        return {name: from_bytes(data, dtype, tuple(json.loads(shape)))
                for name, dtype, shape, data in rows}

    # ---- export
    def export_hdf5(self, run_ref, path: str | os.PathLike) -> Path:
        """Write one run to an HDF5 file (see :func:`labkit.store.hdf5.export_hdf5`)."""
        return export_hdf5(self, run_ref, path)
