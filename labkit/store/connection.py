"""Opening the run store's SQLite file, taking its write lock, and one-line errors.

Locking model (see :mod:`labkit.store.runstore`): WAL mode, so readers never wait for
writers; one writer at a time holds the write lock, for one short transaction
(``BEGIN IMMEDIATE`` ... ``COMMIT``). :func:`begin_write` waits at most
:data:`LOCK_WAIT_S` for it, then raises a :class:`StoreError` that names the process
holding it (:func:`labkit.store.locking.write_lock_holder`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from labkit.store.locking import write_lock_holder
from labkit.store.schema import SCHEMA_VERSION, schema_statements

LOCK_WAIT_S = 5.0  # the longest a writer waits for another's transaction (s)


class StoreError(OSError):
    """The run store file cannot be opened or written (read-only, full disk, locked by a
    stopped process, ...). The message is one line naming the path; data committed
    before the error is kept."""


class StoreLockedError(StoreError):
    """Another process held the store's write lock for longer than :data:`LOCK_WAIT_S`."""


def is_locked(exc: sqlite3.Error) -> bool:
    low = str(exc).lower()
    return "database is locked" in low or "database is busy" in low


def locked_error(path: Path, doing: str, waited_s: float) -> StoreLockedError:
    """The one-line error for a write lock not obtained within ``waited_s`` seconds."""
    holder = write_lock_holder(path)
    who = holder.describe() if holder is not None else "another process (not identified)"
    return StoreLockedError(f"run store {path}: cannot {doing}: its write lock has been held for "
                            f"over {waited_s:g} s by {who}")


def translate(exc: sqlite3.Error, path: Path, doing: str) -> StoreError:
    """An SQLite error as a one-line :class:`StoreError` naming ``path`` and ``doing``."""
    msg = str(exc)
    low = msg.lower()
    if is_locked(exc):
        return locked_error(path, doing, LOCK_WAIT_S)
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


def begin_write(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``: take the write lock, waiting at most :data:`LOCK_WAIT_S`
    (the connection's busy timeout); ``sqlite3.OperationalError`` 'database is locked'
    if another process holds it longer."""
    conn.execute("BEGIN IMMEDIATE")


def open_connection(path: Path, readonly: bool) -> sqlite3.Connection:
    """An autocommit connection to the store at ``path`` (WAL, ``synchronous=FULL``),
    creating the tables in a new file; StoreError if it is not a labkit store."""
    mode = "ro" if readonly else "rwc"
    uri = f"file:{quote(str(path.absolute()))}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=LOCK_WAIT_S, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise translate(exc, path, "open it") from None
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if names and "meta" not in names:
            raise StoreError(f"run store {path} is not a labkit run store "
                             f"(an SQLite file with tables {sorted(names)[:5]})")
        if not readonly:
            jmode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if jmode.lower() != "wal":
                raise StoreError(f"run store {path}: cannot switch to WAL mode (got {jmode})")
            conn.execute("PRAGMA synchronous=FULL")
            # Only a new file needs the tables: an existing one must open without
            # waiting for the write lock another process may hold.
            if not names:
                begin_write(conn)
                for stmt in schema_statements():
                    conn.execute(stmt)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
                conn.execute("COMMIT")
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise translate(exc, path, "set up the run tables") from None
    except StoreError:
        conn.close()
        raise
    if row is None or not str(row[0]).isdigit() or int(row[0]) > SCHEMA_VERSION:
        conn.close()
        raise StoreError(f"run store {path} has schema {row and row[0]}, "
                         f"this labkit reads up to {SCHEMA_VERSION}")
    return conn
