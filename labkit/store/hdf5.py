"""Export of one stored run to an HDF5 file (h5py): root attributes hold the metadata
(dicts as JSON strings), ``/points/<table>/<column>`` and ``/arrays/<name>`` the data."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from labkit.store.connection import StoreError


def h5able(arr: np.ndarray) -> np.ndarray:
    """``arr`` in a type HDF5 stores: unicode as UTF-8 bytes, datetimes as int64."""
    if arr.dtype.kind == "U":
        return np.char.encode(arr, "utf-8")
    if arr.dtype.kind in "mM":
        return arr.view(np.int64)
    return arr


def export_hdf5(store, run_ref, path: str | os.PathLike) -> Path:
    """Write run ``run_ref`` of ``store`` (a RunStore) to ``path`` atomically; returns it."""
    import h5py

    run = store.load(run_ref)
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
            f.attrs["store_path"] = str(store.path)
            f.attrs["format"] = "labkit-run/1"
            for key in ("versions", "settings", "provenance", "seeds", "result"):
                f.attrs[key] = json.dumps(getattr(run, key))
            pts = f.create_group("points")
            for table in run.tables:
                g = pts.create_group(table)
                for name, arr in run.points(table).items():
                    g.create_dataset(name, data=h5able(arr))
            arrs = f.create_group("arrays")
            for name, arr in run.arrays.items():
                arrs.create_dataset(name, data=h5able(arr))
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot write HDF5 file {path}: {str(exc).splitlines()[0]}") from None
    return path
