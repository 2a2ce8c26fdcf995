"""Retention: how the cell currents drift over elapsed time (s).

Uses the backend's VirtualClock where it has one; otherwise real time passes. Table
``retention`` (``elapsed_s``, ``cell_current_a`` (rows, cols)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from labkit.backend import SafeArray, VirtualClock
from labkit.errors import UsageError
from labkit.measure.currents import cell_current_map
from labkit.measure.progress import Progress, no_progress
from labkit.units import si

__all__ = ["Retention", "retention_check"]


@dataclass
class Retention:
    """Current maps ``currents_a`` (K, rows, cols) at ``elapsed_s`` after the first map.

    ``relative_change`` (rows, cols): last / first - 1. ``per_decade`` (rows, cols): the
    change of ln(I) per decade of elapsed time, fit over the points with elapsed >= 1 s
    (nan with fewer than two such points). ``virtual``: time came from a VirtualClock."""

    elapsed_s: np.ndarray
    currents_a: np.ndarray
    relative_change: np.ndarray
    per_decade: np.ndarray
    virtual: bool


def retention_check(backend: SafeArray, checkpoints_s: Sequence[float] = (0, 10, 100, 1e3, 1e4, 1e5),
                    averages: int = 4, max_real_wait_s: float = 60.0, run=None,
                    progress: Progress = no_progress) -> Retention:
    """Current maps at increasing elapsed times (s): the backend's VirtualClock is
    advanced where it has one; otherwise real time passes (refused above
    ``max_real_wait_s``). Table ``retention``."""
    cp = np.asarray([float(si(c, "s", "checkpoint")) for c in np.atleast_1d(checkpoints_s)])
    if len(cp) < 2 or not np.all(np.isfinite(cp)) or cp[0] < 0 or np.any(np.diff(cp) <= 0):
        raise UsageError(f"retention checkpoints {cp.tolist()} s; expected >= 2 increasing times >= 0 s")
    clock = backend.capability(VirtualClock)
    if clock is None and cp[-1] - cp[0] > max_real_wait_s:
        raise UsageError(f"retention check over {cp[-1] - cp[0]:g} s of real time exceeds "
                         f"max_real_wait_s={max_real_wait_s:g} s (backend has no virtual clock)")
    maps, elapsed = [], []
    origin = time.monotonic()
    with progress("retention", len(cp)) as bar:
        for k, c in enumerate(cp):
            if k > 0:
                step = c - cp[k - 1]
                if clock is not None:
                    clock.advance_time_s(float(step))
                else:
                    time.sleep(max(0.0, origin + (c - cp[0]) - time.monotonic()))
            i = cell_current_map(backend, averages=averages, name="")
            maps.append(i)
            elapsed.append(c - cp[0] if clock is not None else time.monotonic() - origin)
            if run is not None:
                run.add_points("retention", elapsed_s=[elapsed[-1]], cell_current_a=i[None])
            bar.advance(1)
    cur, el = np.array(maps), np.array(elapsed)
    rel = cur[-1] / cur[0] - 1.0
    ok = el >= 1.0
    if ok.sum() >= 2:
        logs = np.log(np.maximum(cur[ok], 1e-15)).reshape(ok.sum(), -1)
        per = np.polyfit(np.log10(el[ok]), logs, 1)[0].reshape(cur.shape[1:])
    else:
        per = np.full(cur.shape[1:], np.nan)
    return Retention(el, cur, rel, per, clock is not None)
