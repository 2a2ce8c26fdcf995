"""VMM datasets read back from a stored run (e.g. for calibration), as they were measured.

``run`` is a stored :class:`~labkit.store.runstore.Run` (``RunStore.load(id)``). Outputs
``y = t0 - t`` (s) are recomputed from the run's ``baseline`` table, so they equal
what was stored.
"""

from __future__ import annotations

from labkit.errors import UsageError
from labkit.measure.acquire import Baseline, RepeatData, VmmData
from labkit.measure.vmm import OneHotData

__all__ = ["load_baseline", "load_dataset", "load_repeats"]


def load_baseline(run) -> Baseline:
    """The zero-input baseline of a stored run (its ``baseline`` table)."""
    return Baseline.from_times(run.points("baseline")["t"])


def load_dataset(run, table: str = "vmm_random") -> VmmData | OneHotData | RepeatData:
    """A VMM dataset of a stored run: ``VmmData``; ``OneHotData`` for ``vmm_onehot``;
    ``RepeatData`` (repeat, pattern, cols) for ``vmm_repeat`` (its complete repeats)."""
    if table == "vmm_repeat":
        return load_repeats(run, table)
    pts = _vmm_points(run, table)
    t0 = load_baseline(run).t0_s
    x, t = pts["x"], pts["t"]
    if table == "vmm_onehot" and "row" in pts:
        return OneHotData(x, t, t0 - t, pts["row"].astype(int))
    return VmmData(x, t, t0 - t)


def load_repeats(run, table: str = "vmm_repeat", min_repeats: int = 1) -> RepeatData:
    """A repeat table of a stored run (columns ``pattern`` and ``repeat``) as
    ``RepeatData`` (R, B, cols), keeping the complete repeats of an interrupted run;
    UsageError with fewer than ``min_repeats`` of them."""
    pts = _vmm_points(run, table)
    if not {"repeat", "pattern"} <= set(pts):
        raise UsageError(f"table {table!r} of run {run.id} is not a repeat table (columns {sorted(pts)})")
    return RepeatData.from_points(pts["x"], pts["t"], load_baseline(run).t0_s, pts["repeat"], pts["pattern"],
                                  min_repeats, f"run {run.id} table {table}")


def _vmm_points(run, table: str) -> dict:
    pts = run.points(table)
    if not {"x", "t"} <= set(pts):
        raise UsageError(f"table {table!r} of run {run.id} is not a VMM dataset (columns {sorted(pts)})")
    return pts
