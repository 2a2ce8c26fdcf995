"""The run store's SQLite schema (version :data:`SCHEMA_VERSION`) and its file checks.

Tables: ``meta`` (key/value, holds ``schema_version``), ``runs`` (one row of metadata
per run; JSON text columns), ``point_tables`` (the column spec of each point table of a
run), ``point_batches`` (one row per appended batch: ``n`` points as raw bytes) and
``arrays`` (whole named arrays as raw bytes with dtype and shape).
"""

from __future__ import annotations

SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite file

SCHEMA = """
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

#: The ``runs`` columns in the order :func:`labkit.store.reading.loaded_run` expects.
RUN_COLUMNS = ("id, uid, kind, backend_uri, chip_id, status, reason, started_at, finished_at, "
               "heartbeat_at, host, pid, versions, settings, provenance, seeds, result")


def schema_statements() -> list[str]:
    """The ``CREATE TABLE`` statements of :data:`SCHEMA`, one per item."""
    return [s for s in SCHEMA.split(";") if s.strip()]
