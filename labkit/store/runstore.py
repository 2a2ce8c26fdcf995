"""The run store: every bench run in one SQLite file (WAL mode), crash-safe.

A run is one row of metadata (kind, backend, chip, operating point, provenance,
versions, seeds, status) plus its data: *point tables* appended in batches while the
run goes on (``run.add_points("vmm", inputs=X, outputs=Y, t=T)``), whole named arrays
(``run.put_array("currents", I)``) and a summary JSON (``run.put_result({...})``).

Crash safety: writes go into one open transaction that is committed at most
``commit_interval`` seconds (default 1 s) after the first uncommitted write, by the
writer itself or by a background flusher thread, and always on finish/abort/close.
A SIGKILL therefore loses at most the last second of points (plus the time of a
commit in progress: milliseconds at bench rates, about a second when appending flat
out at 250,000 points/s); a batch is one row, so it is either wholly stored or not at
all. ``synchronous=FULL``: committed data also survives a power cut. ``Run.committed``
and ``Run.on_commit`` tell a writer what is durable (the crash tests use them).

Status of a run: ``running`` -> ``completed`` | ``aborted`` (KeyboardInterrupt, SIGINT,
or SIGTERM through :func:`sigterm_as_keyboard_interrupt`; the reason is kept) |
``failed`` (any other exception; its text is kept). A run whose process died without
finishing (SIGKILL, power cut) keeps ``running`` in the file; readers *show* it as
``interrupted`` when its process is gone (same host) or its heartbeat is older than
:data:`STALE_AFTER_S` (other hosts). The file itself is never rewritten by a reader.

Arrays are stored as raw little-endian bytes with their dtype string and shape (no
pickle). Units: times are seconds since the epoch (``time.time()``); point and array
values are whatever SI quantity the caller stores.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import signal
import socket
import sqlite3
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote

import numpy as np

SCHEMA_VERSION = 1
STALE_AFTER_S = 120.0  # a 'running' run whose heartbeat is older is shown 'interrupted'
HEARTBEAT_S = 10.0  # how often an idle open run refreshes its heartbeat
DEFAULT_FILENAME = "labkit-runs.sqlite"
ENV_VAR = "LABKIT_STORE"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
_KINDS = set("biufcSUmM")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    backend_uri TEXT NOT NULL,
    chip_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    finished_at REAL,
    heartbeat_at REAL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    versions TEXT NOT NULL,
    settings TEXT NOT NULL,
    provenance TEXT NOT NULL,
    seeds TEXT,
    result TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS point_tables (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS point_batches (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    tbl TEXT NOT NULL,
    seq INTEGER NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (run_id, tbl, seq)
);
CREATE TABLE IF NOT EXISTS arrays (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""


class StoreError(OSError):
    """The run store file cannot be opened or written (read-only, full disk, ...).

    The message is one line naming the path; data committed before the error is kept.
    """


def default_store_path() -> Path:
    """``$LABKIT_STORE`` if set, else ``labkit-runs.sqlite`` in the current directory."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env) if env else Path.cwd() / DEFAULT_FILENAME


# --------------------------------------------------------------------------- helpers


def _translate(exc: sqlite3.Error, path: Path, doing: str) -> StoreError:
    msg = str(exc)
    low = msg.lower()
    if "readonly" in low or "read-only" in low:
        text = f"run store {path} is read-only: cannot {doing}"
    elif "disk is full" in low or "database or disk is full" in low:
        text = f"run store {path}: disk full, cannot {doing} (data committed so far is kept)"
    elif "unable to open" in low:
        text = f"run store {path}: cannot open the file (missing directory or no permission)"
    elif "not a database" in low or "malformed" in low:
        text = f"run store {path} is not a labkit run store ({msg})"
    else:
        text = f"run store {path}: cannot {doing}: {msg}"
    return StoreError(text)


def _json_default(obj):
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


def _dumps(value, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default, sort_keys=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serializable (dicts, lists, numbers, strings): {exc}") from None


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} {name!r} is not a valid name (letters, digits, _ . -; "
                         "starting with a letter or _)")
    return name


def _le_array(name: str, value) -> np.ndarray:
    """``value`` as a C-contiguous little-endian array (the stored byte layout)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in _KINDS or arr.dtype.fields is not None:
        raise ValueError(f"{name}: dtype {arr.dtype} cannot be stored (expected numbers, "
                         "booleans, strings or datetimes; no objects)")
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr)


_LITTLE = np.little_endian


def _from_bytes(data: bytes, dtype: str, shape) -> np.ndarray:
    arr = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    return arr.astype(arr.dtype.newbyteorder("="), copy=True) if not _LITTLE else arr.copy()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


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


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back (main thread only) while a run's end is written."""
    block = {signal.SIGINT, signal.SIGTERM}
    can = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    if can:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, block)
    try:
        yield
    finally:
        if can:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt('SIGTERM')`` in the main
    thread, so a ``with store.run(...)`` block marks the run ``aborted`` on ``kill``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# Runs open in this process: (resolved store path, run id). A 'running' run of this pid
# that is not in here was left behind (its Run object was never finished).
_OPEN_RUNS: set[tuple[str, int]] = set()
_STORES: "weakref.WeakSet[RunStore]" = weakref.WeakSet()


@atexit.register
def _flush_all_at_exit() -> None:
    for store in list(_STORES):
        if store._pid == os.getpid():  # not in a forked child: the connection is the parent's
            with contextlib.suppress(Exception):
                store.flush()


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class _Column:
    name: str
    dtype: str  # little-endian dtype string, e.g. '<f8'
    shape: tuple[int, ...]  # trailing shape of one point

    @property
    def point_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize * math.prod(self.shape)


def _spec_dumps(cols: list[_Column]) -> str:
    return json.dumps([[c.name, c.dtype, list(c.shape)] for c in cols])


def _spec_loads(text: str) -> list[_Column]:
    return [_Column(n, d, tuple(s)) for n, d, s in json.loads(text)]


class Run:
    """An open run: append data, then finish. Use as ``with store.run(...) as run:``.

    Leaving the block marks the run ``completed``; a ``KeyboardInterrupt`` (Ctrl-C, or
    SIGTERM under :func:`sigterm_as_keyboard_interrupt`) marks it ``aborted`` and any
    other exception ``failed`` with the exception text, then re-raises.

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
        self._specs: dict[str, list[_Column]] = {}
        self._new_specs: set[str] = set()  # tables whose spec row is not committed yet
        self._seq: dict[str, int] = {}
        self._result: dict = {}

    # ---- data
    def add_points(self, table: str, **columns) -> int:
        """Append a batch of points to ``table``; each keyword is one column whose first
        axis is the point index (all columns the same length B, e.g. ``inputs`` (B, 16),
        ``outputs`` (B, 16), ``t`` (B,)). Columns, dtypes and per-point shapes are fixed
        by the first batch (later batches are cast when that is safe). Returns B."""
        _check_name(table, "point table")
        if not columns:
            raise ValueError(f"add_points({table!r}) needs at least one column, e.g. inputs=X")
        arrays = {}
        for name, value in columns.items():
            _check_name(name, "column")
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
            les = {k: _le_array(f"{table}.{k}", a) for k, a in arrays.items()}
            spec = [_Column(k, a.dtype.str, tuple(a.shape[1:])) for k, a in les.items()]
            new_spec = spec
        else:
            new_spec = None
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
                les[c.name] = _le_array(f"{table}.{c.name}", a)
        blob = b"".join(les[c.name].tobytes() for c in spec)
        self.store._write_batch(self, table, n, blob, new_spec)
        return n

    def put_array(self, name: str, array) -> None:
        """Store (or replace) a whole named array, e.g. a (16, 16) current map in A."""
        _check_name(name, "array")
        arr = _le_array(name, array)
        self.store._write(self, "INSERT OR REPLACE INTO arrays VALUES (?, ?, ?, ?, ?)",
                          (self.id, name, arr.dtype.str, json.dumps(list(arr.shape)), arr.tobytes()),
                          f"store array {name!r} of run {self.id}")

    def put_result(self, result: Mapping[str, Any]) -> None:
        """Merge ``result`` (JSON-able: numbers, strings, lists, dicts) into the summary."""
        if not isinstance(result, Mapping):
            raise ValueError(f"put_result expects a dict, got {type(result).__name__}")
        merged = {**self._result, **result}
        text = _dumps(merged, "result")
        self.store._write(self, "UPDATE runs SET result=? WHERE id=?", (text, self.id),
                          f"store the result of run {self.id}")
        self._result = merged

    def flush(self) -> None:
        """Commit everything written so far, now."""
        self.store.flush()

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
        with _signals_deferred():
            self.store._end(self, status, reason)

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


@dataclass
class LoadedRun:
    """A stored run read back: metadata here, data through :meth:`points` and :attr:`arrays`."""

    id: int
    uid: str
    kind: str
    backend_uri: str
    chip_id: str
    status: str  # as shown: 'interrupted' for a dead 'running' run (see stored_status)
    stored_status: str
    reason: str
    started_at: float  # s since epoch
    finished_at: float | None
    heartbeat_at: float | None
    host: str
    pid: int
    versions: dict
    settings: dict
    provenance: dict
    seeds: dict | None
    result: dict
    tables: dict[str, int] = field(default_factory=dict)  # point table -> number of points
    array_names: list[str] = field(default_factory=list)
    store: "RunStore | None" = field(default=None, repr=False, compare=False)
    _arrays: dict | None = field(default=None, repr=False, compare=False)

    @property
    def duration_s(self) -> float | None:
        end = self.finished_at or self.heartbeat_at
        return None if end is None else end - self.started_at

    def points(self, table: str) -> dict[str, np.ndarray]:
        """All committed points of ``table`` as ``{column: array}``, in write order."""
        if table not in self.tables:
            raise ValueError(f"run {self.id} has no point table {table!r} "
                             f"(has: {', '.join(self.tables) or 'none'})")
        return self.store._load_points(self.id, table)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = self.store._load_arrays(self.id)
        return self._arrays

    def to_dict(self) -> dict:
        """Metadata as a JSON-able dict (no point data)."""
        keys = ("id", "uid", "kind", "backend_uri", "chip_id", "status", "stored_status", "reason",
                "started_at", "finished_at", "duration_s", "host", "pid", "versions", "settings",
                "provenance", "seeds", "result", "tables", "array_names")
        return {k: getattr(self, k) for k in keys}


# --------------------------------------------------------------------------- store


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
        self._lock = threading.RLock()
        self._open: dict[int, Run] = {}
        self._dirty_since: float | None = None
        self._last_beat = 0.0
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._key = str(self.path.resolve())
        self._pid = os.getpid()
        if not create and not self.path.exists():
            raise StoreError(f"no run store at {self.path}")
        if self.path.is_dir():
            raise StoreError(f"run store {self.path} is a directory, expected a .sqlite file")
        head = b""
        with contextlib.suppress(OSError):  # never turn someone else's file into a store
            with open(self.path, "rb") as f:
                head = f.read(16)
        if head and head != b"SQLite format 3\x00":
                raise StoreError(f"run store {self.path} is not a labkit run store (not an SQLite file)")
        self._conn = self._connect()
        _STORES.add(self)

    def _connect(self) -> sqlite3.Connection:
        mode = "ro" if self.readonly else "rwc"
        uri = f"file:{quote(str(self.path.absolute()))}?mode={mode}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, "open it") from None
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if names and "meta" not in names:
                raise StoreError(f"run store {self.path} is not a labkit run store "
                                 f"(an SQLite file with tables {sorted(names)[:5]})")
            if not self.readonly:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"run store {self.path}: cannot switch to WAL mode (got {mode})")
                conn.execute("PRAGMA synchronous=FULL")
                # Only a new file needs the tables: an existing one must open without
                # waiting for the write lock another process may hold (up to 1 s).
                if not names:
                    conn.execute("BEGIN IMMEDIATE")
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
                    conn.execute("COMMIT")
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise _translate(exc, self.path, "set up the run tables") from None
        except StoreError:
            conn.close()
            raise
        if row is None or int(row[0]) > SCHEMA_VERSION:
            conn.close()
            raise StoreError(f"run store {self.path} has schema {row and row[0]}, "
                             f"this labkit reads up to {SCHEMA_VERSION}")
        return conn

    # ---- lifecycle
    def close(self) -> None:
        """Commit pending writes and close the file (open runs stay 'running')."""
        with self._lock:
            if self._conn is None:
                return
            self._stop.set()
            try:
                self.flush()
            finally:
                for run in self._open.values():
                    _OPEN_RUNS.discard((self._key, run.id))
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
        _check_name(kind, "run kind")
        if self.readonly:
            raise StoreError(f"run store {self.path} is opened read-only: cannot start a run")
        uid = uuid.uuid4().hex
        now = time.time()
        row = (uid, kind, str(backend_uri), str(chip_id), "running", now, now, socket.gethostname(),
               os.getpid(), _dumps(_versions(), "versions"), _dumps(settings or {}, "settings"),
               _dumps(provenance or {}, "provenance"),
               None if seeds is None else _dumps(seeds, "seeds"))
        with self._lock:
            db = self._db()
            try:
                self._begin()
                cur = db.execute(
                    "INSERT INTO runs (uid, kind, backend_uri, chip_id, status, started_at, heartbeat_at,"
                    " host, pid, versions, settings, provenance, seeds) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    row)
                run = Run(self, cur.lastrowid, uid, kind)
                self._commit()
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, self.path, f"start a {kind} run") from None
            self._open[run.id] = run
            _OPEN_RUNS.add((self._key, run.id))
            self._ensure_flusher()
        return run

    def run(self, kind: str, backend_uri: str = "", chip_id: str = "", settings=None,
            provenance=None, seeds=None) -> Run:
        """:meth:`start_run`, for ``with store.run(...) as run:``."""
        return self.start_run(kind, backend_uri, chip_id, settings, provenance, seeds)

    def flush(self) -> None:
        """Commit all pending writes of every run of this store."""
        with self._lock:
            if self._conn is None or not self._conn.in_transaction:
                return
            try:
                self._commit()
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, self.path, "commit") from None

    def _begin(self) -> None:
        if not self._conn.in_transaction:
            self._dirty_since = time.monotonic()
            self._conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        db = self._conn
        if db.in_transaction:
            now = time.time()
            if self._open:
                db.executemany("UPDATE runs SET heartbeat_at=? WHERE id=?",
                               [(now, rid) for rid in self._open])
            db.execute("COMMIT")
        self._dirty_since = None
        self._last_beat = time.monotonic()
        for run in list(self._open.values()):
            run._new_specs.clear()
            if run._pending:
                while run._pending:  # pop first: an interrupt may undercount, never double
                    t, k = run._pending.popitem()
                    run.committed[t] = run.committed.get(t, 0) + k
                if run.on_commit is not None:
                    with contextlib.suppress(Exception):
                        run.on_commit(run)

    def _rollback(self) -> None:
        """After a failed write: drop the uncommitted transaction (committed data stays)."""
        with contextlib.suppress(sqlite3.Error):
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        self._dirty_since = None
        for run in self._open.values():
            run._pending.clear()
            for table in run._new_specs:  # their spec rows were rolled back too
                run._specs.pop(table, None)
            run._new_specs.clear()

    def _check_open(self, run: Run) -> None:
        if not run.open or self._open.get(run.id) is not run:
            raise ValueError(f"run {run.id} is {run.status if not run.open else 'closed'}: "
                             "cannot add data")

    def _maybe_commit(self) -> None:
        if (self._conn.in_transaction and self._dirty_since is not None
                and time.monotonic() - self._dirty_since >= self.commit_interval):
            self._commit()

    def _write(self, run: Run, sql: str, params, doing: str) -> None:
        with self._lock:
            self._db()
            self._check_open(run)
            try:
                self._begin()
                self._conn.execute(sql, params)
                self._maybe_commit()
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, self.path, doing) from None

    def _write_batch(self, run: Run, table: str, n: int, blob: bytes,
                     new_spec: list[_Column] | None) -> None:
        # Ordered so that a KeyboardInterrupt between any two steps leaves a consistent
        # state: a seq gap at worst, and ``committed`` may undercount, never overcount.
        with self._lock:
            self._db()
            self._check_open(run)
            try:
                self._begin()
                if new_spec is not None:
                    self._conn.execute("INSERT OR REPLACE INTO point_tables VALUES (?, ?, ?)",
                                       (run.id, table, _spec_dumps(new_spec)))
                    run._specs[table] = new_spec
                    run._new_specs.add(table)
                seq = run._seq.get(table, 0)
                run._seq[table] = seq + 1
                self._conn.execute("INSERT INTO point_batches VALUES (?, ?, ?, ?, ?)",
                                   (run.id, table, seq, n, blob))
                run._pending[table] = run._pending.get(table, 0) + n
                self._maybe_commit()
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, self.path, f"store points of run {run.id}") from None

    def _end(self, run: Run, status: str, reason: str) -> None:
        with self._lock:
            self._db()
            try:
                self._begin()
                self._conn.execute("UPDATE runs SET status=?, reason=?, finished_at=? WHERE id=?",
                                   (status, reason, time.time(), run.id))
                self._commit()
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, self.path, f"mark run {run.id} {status}") from None
            run.status = status
            self._open.pop(run.id, None)
            _OPEN_RUNS.discard((self._key, run.id))

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=_flusher_loop, args=(weakref.ref(self),),
                                             name=f"labkit-store-flusher:{self.path.name}", daemon=True)
            self._flusher.start()

    def _tick(self) -> None:
        """Flusher step: commit a due transaction; refresh heartbeats of idle open runs."""
        with self._lock:
            if self._conn is None:
                return
            try:
                if self._conn.in_transaction:
                    if self._dirty_since is None:
                        self._dirty_since = time.monotonic()
                    self._maybe_commit()
                elif self._open and time.monotonic() - self._last_beat >= HEARTBEAT_S:
                    self._begin()
                    self._commit()
            except sqlite3.Error:
                self._rollback()  # the writer sees the error on its next call

    # ---- reading
    def _resolve(self, run_ref) -> int:
        db = self._db()
        if isinstance(run_ref, str) and run_ref.strip().lower() in ("latest", "last"):
            row = db.execute("SELECT max(id) FROM runs").fetchone()
            if row[0] is None:
                raise ValueError(f"run store {self.path} has no runs")
            return int(row[0])
        try:
            rid = int(run_ref)
        except (TypeError, ValueError):
            row = db.execute("SELECT id FROM runs WHERE uid=?", (str(run_ref),)).fetchone()
            if row is None:
                raise ValueError(f"no run {run_ref!r} in run store {self.path} "
                                 "(expected a run id number, a uid or 'latest')") from None
            return int(row[0])
        if db.execute("SELECT 1 FROM runs WHERE id=?", (rid,)).fetchone() is None:
            raise ValueError(f"no run {rid} in run store {self.path}")
        return rid

    def _shown_status(self, status: str, host: str, pid: int, heartbeat: float | None, rid: int) -> str:
        if status != "running":
            return status
        if host == socket.gethostname():
            if pid == os.getpid():
                return "running" if (self._key, rid) in _OPEN_RUNS else "interrupted"
            return "running" if _pid_alive(pid) else "interrupted"
        if heartbeat is not None and time.time() - heartbeat > STALE_AFTER_S:
            return "interrupted"
        return "running"

    _COLS = ("id, uid, kind, backend_uri, chip_id, status, reason, started_at, finished_at, "
             "heartbeat_at, host, pid, versions, settings, provenance, seeds, result")

    def _loaded(self, row, tables, arrays) -> LoadedRun:
        (rid, uid, kind, uri, chip, status, reason, t0, t1, hb, host, pid, versions, settings,
         provenance, seeds, result) = row
        return LoadedRun(
            id=rid, uid=uid, kind=kind, backend_uri=uri, chip_id=chip,
            status=self._shown_status(status, host, pid, hb, rid), stored_status=status,
            reason=reason, started_at=t0, finished_at=t1, heartbeat_at=hb, host=host, pid=pid,
            versions=json.loads(versions), settings=json.loads(settings),
            provenance=json.loads(provenance), seeds=None if seeds is None else json.loads(seeds),
            result=json.loads(result), tables=tables, array_names=arrays, store=self)

    def _read(self, fn, doing: str):
        with self._lock:
            db = self._db()
            try:
                return fn(db)
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, doing) from None

    def load(self, run_ref) -> LoadedRun:
        """A stored run by id (int or digits), uid, or ``'latest'``; ValueError if absent."""
        def go(db):
            rid = self._resolve(run_ref)
            row = db.execute(f"SELECT {self._COLS} FROM runs WHERE id=?", (rid,)).fetchone()
            return self._loaded(row, self._table_counts(db, rid), self._array_names(db, rid))
        return self._read(go, f"read run {run_ref}")

    def list_runs(self, kind: str | None = None, limit: int | None = None) -> list[LoadedRun]:
        """Stored runs, oldest first (the last ``limit`` if given), optionally of one kind."""
        def go(db):
            where, params = ("WHERE kind=?", [kind]) if kind else ("", [])
            sql = f"SELECT {self._COLS} FROM runs {where} ORDER BY id DESC"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(int(limit))
            rows = db.execute(sql, params).fetchall()[::-1]
            counts: dict[int, dict[str, int]] = {}
            for rid, tbl, n in db.execute("SELECT run_id, tbl, sum(n) FROM point_batches GROUP BY run_id, tbl"):
                counts.setdefault(rid, {})[tbl] = int(n)
            names: dict[int, list[str]] = {}
            for rid, name in db.execute("SELECT run_id, name FROM arrays ORDER BY run_id, name"):
                names.setdefault(rid, []).append(name)
            return [self._loaded(r, counts.get(r[0], {}), names.get(r[0], [])) for r in rows]
        return self._read(go, "list runs")

    @staticmethod
    def _table_counts(db, rid: int) -> dict[str, int]:
        rows = db.execute("SELECT t.name, coalesce(sum(b.n), 0) FROM point_tables t LEFT JOIN "
                          "point_batches b ON b.run_id=t.run_id AND b.tbl=t.name WHERE t.run_id=? "
                          "GROUP BY t.name ORDER BY t.rowid", (rid,)).fetchall()
        return {name: int(n) for name, n in rows}

    @staticmethod
    def _array_names(db, rid: int) -> list[str]:
        return [r[0] for r in db.execute("SELECT name FROM arrays WHERE run_id=? ORDER BY name", (rid,))]

    def _load_points(self, rid: int, table: str) -> dict[str, np.ndarray]:
        def go(db):
            spec = _spec_loads(db.execute("SELECT spec FROM point_tables WHERE run_id=? AND name=?",
                                          (rid, table)).fetchone()[0])
            rows = db.execute("SELECT n, data FROM point_batches WHERE run_id=? AND tbl=? ORDER BY seq",
                              (rid, table)).fetchall()
            return rows, spec
        rows, spec = self._read(go, f"read points of run {rid}")
        total = sum(n for n, _ in rows)
        out = {c.name: np.empty((total, *c.shape), dtype=np.dtype(c.dtype).newbyteorder("="))
               for c in spec}
        start = 0
        for n, data in rows:
            off = 0
            for c in spec:
                size = n * c.point_bytes
                out[c.name][start:start + n] = np.frombuffer(data, dtype=c.dtype, count=n * math.prod(c.shape),
                                                             offset=off).reshape((n, *c.shape))
                off += size
            if off != len(data):
                raise StoreError(f"run store {self.path}: a batch of {table} in run {rid} is corrupt "
                                 f"({len(data)} bytes, expected {off})")
            start += n
        return out

    def _load_arrays(self, rid: int) -> dict[str, np.ndarray]:
        rows = self._read(lambda db: db.execute(
            "SELECT name, dtype, shape, data FROM arrays WHERE run_id=? ORDER BY name", (rid,)).fetchall(),
            f"read arrays of run {rid}")
        return {name: _from_bytes(data, dtype, tuple(json.loads(shape))) for name, dtype, shape, data in rows}

    # ---- export
    def export_hdf5(self, run_ref, path: str | os.PathLike) -> Path:
        """Write one run to an HDF5 file: root attributes hold the metadata (dicts as JSON
        strings), ``/points/<table>/<column>`` and ``/arrays/<name>`` the data."""
        import h5py

        run = self.load(run_ref)
        path = Path(path)
        if not path.parent.is_dir():
            raise StoreError(f"cannot write HDF5 file {path}: directory {path.parent} does not exist")
        tmp = path.with_name(path.name + ".part")
        try:
            with h5py.File(tmp, "w", libver=("v108", "latest")) as f:
                for key in ("id", "uid", "kind", "backend_uri", "chip_id", "status", "stored_status",
                            "reason", "started_at", "host", "pid"):
                    f.attrs[key] = getattr(run, key)
                f.attrs["finished_at"] = np.nan if run.finished_at is None else run.finished_at
                f.attrs["store_path"] = str(self.path)
                f.attrs["format"] = "labkit-run/1"
                for key in ("versions", "settings", "provenance", "seeds", "result"):
                    f.attrs[key] = json.dumps(getattr(run, key))
                pts = f.create_group("points")
                for table in run.tables:
                    g = pts.create_group(table)
                    for name, arr in run.points(table).items():
                        g.create_dataset(name, data=_h5able(arr))
                arrs = f.create_group("arrays")
                for name, arr in run.arrays.items():
                    arrs.create_dataset(name, data=_h5able(arr))
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot write HDF5 file {path}: {str(exc).splitlines()[0]}") from None
        return path


def _h5able(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "U":
        return np.char.encode(arr, "utf-8")
    if arr.dtype.kind in "mM":
        return arr.view(np.int64)
    return arr


def _flusher_loop(ref: "weakref.ref[RunStore]") -> None:
    if hasattr(signal, "pthread_sigmask"):  # Ctrl-C / SIGTERM belong to the main thread
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    while True:
        store = ref()
        if store is None or store._stop.is_set():
            return
        period = min(store.commit_interval / 4, 0.25)
        stop = store._stop
        store._tick()
        del store
        if stop.wait(period):
            return
