"""The VMM datasets of a characterization: random, one-hot, repeated and network-activation patterns.

Each is measured against a zero-input :class:`~labkit.measure.acquire.Baseline` and
stored in its own table of the run (``vmm_random``, ``vmm_onehot``, ``vmm_repeat``,
``vmm_activations``): ``x`` (rows,), ``t`` (cols,) s, ``y`` (cols,) s per point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from labkit.backend import SafeArray
from labkit.measure.acquire import Baseline, RepeatData, VmmData, measure_repeats, measure_vmm
from labkit.measure.patterns import onehot_patterns, random_patterns
from labkit.measure.progress import Progress, no_progress
from labkit.validate import check_int

__all__ = ["OneHotData", "vmm_random", "vmm_onehot", "vmm_repeats", "vmm_activations"]


@dataclass
class OneHotData(VmmData):
    """One-hot VMMs: :class:`VmmData` with the active ``row`` of each pattern."""

    row: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    def cell_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean output per (level, row, col): ``levels`` (L,), ``y`` (L, rows, cols) in s."""
        level = self.x[np.arange(len(self.row)), self.row]
        levels = np.unique(level)
        rows = self.x.shape[1]
        y = np.zeros((len(levels), rows, self.y_s.shape[1]))
        for k, lv in enumerate(levels):
            for r in range(rows):
                sel = (level == lv) & (self.row == r)
                y[k, r] = self.y_s[sel].mean(axis=0)
        return levels, y


def vmm_random(backend: SafeArray, baseline: Baseline, n: int = 4096, zero_fraction: float = 0.4,
               seed: int = 0, run=None, progress: Progress = no_progress) -> VmmData:
    """Random-pattern dataset (table ``vmm_random``)."""
    x = random_patterns(n, backend.geometry.rows, zero_fraction, backend.settings.input_bits, seed)
    return measure_vmm(backend, x, baseline, run, "vmm_random", progress=progress, label="random VMMs")


def vmm_onehot(backend: SafeArray, baseline: Baseline, levels: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
               repeats: int = 8, run=None, progress: Progress = no_progress, table: str = "vmm_onehot") -> OneHotData:
    """Every row alone at each level, ``repeats`` times (table ``table``, with ``row``)."""
    repeats = check_int("one-hot repeats", repeats, 1)
    x1, row1 = onehot_patterns(backend.geometry.rows, levels)
    x, row = np.tile(x1, (repeats, 1)), np.tile(row1, repeats)
    d = measure_vmm(backend, x, baseline, run, table, {"row": row}, progress, "one-hot VMMs")
    return OneHotData(d.x, d.t_s, d.y_s, row)


def vmm_repeats(backend: SafeArray, baseline: Baseline, patterns: int = 128, repeats: int = 16,
                zero_fraction: float = 0.4, seed: int = 1, run=None, progress: Progress = no_progress) -> RepeatData:
    """The same random patterns measured ``repeats`` times, interleaved (all patterns,
    then again): the noise floor (table ``vmm_repeat``)."""
    repeats = check_int("repeats", repeats, 2)
    x1 = random_patterns(patterns, backend.geometry.rows, zero_fraction, backend.settings.input_bits, seed)
    return measure_repeats(backend, x1, repeats, baseline, run, "vmm_repeat", progress, "repeated VMMs")


def vmm_activations(backend: SafeArray, baseline: Baseline, activations, run=None,
                    progress: Progress = no_progress) -> VmmData:
    """VMMs of real network activations ``(B, rows)`` in [0, 1] (table ``vmm_activations``)."""
    return measure_vmm(backend, activations, baseline, run, "vmm_activations", progress=progress,
                       label="activation VMMs")
