"""Cell currents: the read-current map of the array and Id-Vg curves of chosen cells.

Currents in A, gate and read voltages in V.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

from labkit.backend import GateSweep, SafeArray
from labkit.errors import SafetyError, UsageError
from labkit.measure.progress import Progress, no_progress
from labkit.units import si
from labkit.validate import all_in_range, check_int, finite

__all__ = ["cell_current_map", "operating_point", "gate_voltages", "IdVgCurves", "id_vg_sweep"]


def cell_current_map(backend: SafeArray, read_voltage_v=None, averages: int = 1, run=None,
                     name: str = "cell_current_a") -> np.ndarray:
    """Read current (A) of every cell, ``(rows, cols)``, averaged over ``averages`` reads.

    ``read_voltage_v`` (V, optional) applies a read voltage for this map only. With
    ``run`` (and a ``name``), the map is stored as that array."""
    averages = check_int("averages", averages, 1)
    with operating_point(backend, read_voltage_v):
        maps = [backend.read_currents() for _ in range(averages)]
    i = np.mean(maps, axis=0)
    if run is not None and name:
        run.put_array(name, i)
    return i


@contextlib.contextmanager
def operating_point(backend: SafeArray, read_voltage_v=None):
    """Apply the read voltage ``read_voltage_v`` (V) inside the block and restore the
    settings after it; ``None`` changes nothing."""
    if read_voltage_v is None:
        yield
        return
    old = backend.settings
    backend.configure(read_voltage_v=read_voltage_v)
    try:
        yield
    finally:
        backend.configure(old)


def gate_voltages(start_v, stop_v, points: int, backend: SafeArray | None = None) -> np.ndarray:
    """``points`` gate voltages (V) from ``start_v`` to ``stop_v``, checked against the
    envelope's read-voltage range (the gate range a cell may see outside programming)."""
    a, b = float(si(start_v, "V", "start_v")), float(si(stop_v, "V", "stop_v"))
    points = check_int("gate sweep points", points, 2, 10_000)
    if not (math.isfinite(a) and math.isfinite(b)) or not a < b:
        raise UsageError(f"gate sweep {a:g} V -> {b:g} V; expected finite start < stop")
    if backend is not None:
        lo, hi = backend.envelope.read_voltage_range_v
        if a < lo or b > hi:
            raise SafetyError(f"gate sweep {a:g} V -> {b:g} V is outside the allowed [{lo:g}, {hi:g}] V")
    return np.linspace(a, b, points)


@dataclass
class IdVgCurves:
    """Drain current ``current_a`` (cells, points) of each cell over ``gate_v`` (V)."""

    cells: np.ndarray
    gate_v: np.ndarray
    current_a: np.ndarray
    path: str  # 'source-measure' (GateSweep) or 'array-read' (read voltage stepped)
    compliance_a: float

    def subthreshold_slope_mv_per_decade(self) -> np.ndarray:
        """Steepest slope (mV/decade) of each curve below compliance; nan where undefined."""
        out = np.full(len(self.cells), np.nan)
        for k, i in enumerate(self.current_a):
            ok = (i > 0) & (i < 0.9 * self.compliance_a)
            if ok.sum() >= 2:
                d = np.diff(np.log10(i[ok])) / np.diff(self.gate_v[ok])
                if np.max(d) > 0:
                    out[k] = 1e3 / np.max(d)
        return out


def id_vg_sweep(backend: SafeArray, cells, gate_v, compliance_a: float = 1e-6, run=None,
                progress: Progress = no_progress) -> IdVgCurves:
    """Id-Vg of chosen cells: through the source-measure path (GateSweep) where the
    backend has one, else by stepping the read voltage and reading the cells (the
    operating point is restored afterwards). Table ``idvg``."""
    cells = backend.cells(cells)
    if len(cells) == 0:
        raise UsageError("id_vg_sweep needs at least one cell, got none")
    g = np.asarray(si(gate_v, "V", "gate_v"), dtype=float)
    if g.ndim != 1 or len(g) < 2:
        raise UsageError(f"gate_v has shape {g.shape}; expected at least 2 gate voltages")
    finite("gate_v", g)
    if np.ptp(g) == 0:
        raise UsageError(f"gate voltages all {g[0]:g} V; expected distinct values")
    all_in_range("gate voltage", g, backend.envelope.read_voltage_range_v, "V")
    comp = float(si(compliance_a, "A", "compliance_a"))
    if not 0 < comp <= backend.envelope.max_compliance_a:
        raise SafetyError(f"compliance_a={comp:g} A is outside the allowed (0, {backend.envelope.max_compliance_a:g}] A")
    sweep = backend.capability(GateSweep)
    out = np.empty((len(cells), len(g)))
    with progress("Id-Vg", len(cells)) as bar:
        if sweep is not None:
            path = "source-measure"
            for k, (r, c) in enumerate(cells):
                out[k] = np.minimum(sweep.id_vg((int(r), int(c)), g, comp), comp)
                _store_idvg(run, cells[k:k + 1], g, out[k:k + 1])
                bar.advance(1)
        else:
            path = "array-read"
            old = backend.settings
            try:
                for p, v in enumerate(g):
                    backend.configure(read_voltage_v=float(v))
                    out[:, p] = np.minimum(backend.read_currents(cells), comp)
            finally:
                backend.configure(old)
            _store_idvg(run, cells, g, out)
            bar.advance(len(cells))
    return IdVgCurves(cells, g, out, path, comp)


def _store_idvg(run, cells, g, current) -> None:
    if run is None:
        return
    n, p = current.shape
    run.add_points("idvg", cell=np.repeat(cells, p, axis=0), gate_v=np.tile(g, n), current_a=current.ravel())
