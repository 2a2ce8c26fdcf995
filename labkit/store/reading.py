"""Queries that read the run store: resolve a run reference, count its data, fetch rows.

Each function takes an open ``sqlite3.Connection`` and the store's path (for messages).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def resolve(db: sqlite3.Connection, path: Path, run_ref) -> int:
    """The id of a run given by id (int or digits), uid or ``'latest'``; ValueError if absent."""
    if isinstance(run_ref, str) and run_ref.strip().lower() in ("latest", "last"):
        row = db.execute("SELECT max(id) FROM runs").fetchone()
        if row[0] is None:
            raise ValueError(f"run store {path} has no runs")
        return int(row[0])
    try:
        rid = int(run_ref)
    except (TypeError, ValueError):
        row = db.execute("SELECT id FROM runs WHERE uid=?", (str(run_ref),)).fetchone()
        if row is None:
            raise ValueError(f"no run {run_ref!r} in run store {path} "
                             "(expected a run id number, a uid or 'latest')") from None
        return int(row[0])
    if db.execute("SELECT 1 FROM runs WHERE id=?", (rid,)).fetchone() is None:
        raise ValueError(f"no run {rid} in run store {path}")
    return rid


def table_counts(db: sqlite3.Connection, rid: int) -> dict[str, int]:
    """Point table -> number of committed points of run ``rid``, in creation order."""
    rows = db.execute("SELECT t.name, coalesce(sum(b.n), 0) FROM point_tables t LEFT JOIN "
                      "point_batches b ON b.run_id=t.run_id AND b.tbl=t.name WHERE t.run_id=? "
                      "GROUP BY t.name ORDER BY t.rowid", (rid,)).fetchall()
    return {name: int(n) for name, n in rows}


def array_names(db: sqlite3.Connection, rid: int) -> list[str]:
    return [r[0] for r in db.execute("SELECT name FROM arrays WHERE run_id=? ORDER BY name", (rid,))]


def all_table_counts(db: sqlite3.Connection) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {}
    for rid, tbl, n in db.execute("SELECT run_id, tbl, sum(n) FROM point_batches GROUP BY run_id, tbl"):
        counts.setdefault(rid, {})[tbl] = int(n)
    return counts


def all_array_names(db: sqlite3.Connection) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for rid, name in db.execute("SELECT run_id, name FROM arrays ORDER BY run_id, name"):
        names.setdefault(rid, []).append(name)
    return names


def point_rows(db: sqlite3.Connection, rid: int, table: str) -> tuple[str, list]:
    """The column spec (JSON text) of a point table and its ``(n, blob)`` batches in order."""
    spec = db.execute("SELECT spec FROM point_tables WHERE run_id=? AND name=?", (rid, table)).fetchone()[0]
    rows = db.execute("SELECT n, data FROM point_batches WHERE run_id=? AND tbl=? ORDER BY seq",
                      (rid, table)).fetchall()
    return spec, rows


def array_rows(db: sqlite3.Connection, rid: int) -> list:
    return db.execute("SELECT name, dtype, shape, data FROM arrays WHERE run_id=? ORDER BY name",
                      (rid,)).fetchall()
