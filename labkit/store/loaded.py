"""A stored run read back: :class:`LoadedRun` (metadata, and its data on demand)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from labkit.store.liveness import shown_status

if TYPE_CHECKING:
    from labkit.store import RunStore


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

    @classmethod
    def from_row(cls, row, tables: dict[str, int], arrays: list[str], store: "RunStore") -> "LoadedRun":
        """From a ``runs`` row in :data:`labkit.store.schema.RUN_COLUMNS` order."""
        (rid, uid, kind, uri, chip, status, reason, t0, t1, hb, host, pid, versions, settings,
         provenance, seeds, result) = row
        return cls(
            id=rid, uid=uid, kind=kind, backend_uri=uri, chip_id=chip,
            status=shown_status(status, host, pid, hb, (store.key, rid)), stored_status=status,
            reason=reason, started_at=t0, finished_at=t1, heartbeat_at=hb, host=host, pid=pid,
            versions=json.loads(versions), settings=json.loads(settings),
            provenance=json.loads(provenance), seeds=None if seeds is None else json.loads(seeds),
            result=json.loads(result), tables=tables, array_names=arrays, store=store)

    @property
    def duration_s(self) -> float | None:
        end = self.finished_at or self.heartbeat_at
        return None if end is None else end - self.started_at

    def points(self, table: str) -> dict[str, np.ndarray]:
        """All committed points of ``table`` as ``{column: array}``, in write order."""
        if table not in self.tables:
            raise ValueError(f"run {self.id} has no point table {table!r} "
                             f"(has: {', '.join(self.tables) or 'none'})")
        return self.store.read_points(self.id, table)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = self.store.read_arrays(self.id)
        return self._arrays

    def to_dict(self) -> dict:
        """Metadata as a JSON-able dict (no point data)."""
        keys = ("id", "uid", "kind", "backend_uri", "chip_id", "status", "stored_status", "reason",
                "started_at", "finished_at", "duration_s", "host", "pid", "versions", "settings",
                "provenance", "seeds", "result", "tables", "array_names")
        return {k: getattr(self, k) for k in keys}
