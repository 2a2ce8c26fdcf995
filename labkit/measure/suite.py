"""The standard characterization suite: what it measures (:class:`SuiteConfig`), in
which order (:func:`run_standard`), and its headline figures (:class:`Characterization`).

Point tables the suite writes to a run (columns; shapes per point):

===================  ============================================================
``baseline``         ``t`` (cols,) s: zero-input VMMs
``idvg``             ``cell`` (2,), ``gate_v``, ``current_a``
``vmm_random``       ``x`` (rows,), ``t`` (cols,) s, ``y`` (cols,) s
``vmm_onehot``       ``x``, ``t``, ``y``, ``row``
``vmm_repeat``       ``x``, ``t``, ``y``, ``pattern``, ``repeat``
``vmm_activations``  ``x``, ``t``, ``y``
``crosstalk``        ``x``, ``t``, ``probe_row`` (-1: reference), ``width_s``, ``repeat``
``droop``            ``x``, ``t``, ``y``, ``level``
``temperature``      ``set_k``, ``measured_k``, ``cell_current_a`` (rows, cols)
``retention``        ``elapsed_s``, ``cell_current_a`` (rows, cols)
===================  ============================================================

and arrays ``cell_current_a``, ``crosstalk_step_s``, ``crosstalk_v``, ``droop_y_s`` ...
:func:`~labkit.measure.datasets.load_dataset` reads a VMM table of a stored run back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from labkit.backend import SafeArray, TemperatureControl, VirtualClock
from labkit.errors import UsageError
from labkit.measure.acquire import Baseline, RepeatData, VmmData, measure_baseline
from labkit.measure.crosstalk import CrosstalkMap, crosstalk_map
from labkit.measure.currents import IdVgCurves, cell_current_map, gate_voltages, id_vg_sweep
from labkit.measure.droop import DroopSweep, droop_sweep
from labkit.measure.metrics import effective_bits, to_db
from labkit.measure.patterns import network_activations, onehot_patterns
from labkit.measure.progress import Progress, no_progress
from labkit.measure.retention import Retention, retention_check
from labkit.measure.temperature import TemperatureSweep, temperature_sweep
from labkit.measure.vmm import OneHotData, vmm_activations, vmm_onehot, vmm_random, vmm_repeats
from labkit.validate import check_fraction, check_int

__all__ = ["SuiteConfig", "Characterization", "run_standard"]


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes of the standard characterization (``quick()``: same code, smaller sets)."""

    seed: int = 0
    baseline_repeats: int = 512
    current_averages: int = 4
    idvg_cells: tuple[tuple[int, int], ...] = ((0, 0), (0, 15), (7, 8), (15, 0), (15, 15))
    idvg_start_v: float = 1.0
    idvg_stop_v: float = 2.2
    idvg_points: int = 25
    idvg_compliance_a: float = 2e-6
    random_patterns: int = 4096
    zero_fraction: float = 0.4
    onehot_levels: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    onehot_repeats: int = 8
    repeat_patterns: int = 128
    repeats: int = 16
    activation_patterns: int = 1024
    crosstalk_widths: tuple[int, ...] = (1, 2, 3, 4)
    crosstalk_repeats: int = 128
    droop_levels: int = 16
    droop_repeats: int = 32
    temperature_offsets_k: tuple[float, ...] = (-10.0, 0.0, 10.0, 20.0, 30.0)
    retention_checkpoints_s: tuple[float, ...] = (0.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    temperature: bool = True  # where the backend has a temperature controller
    retention: bool = True  # where the backend has a virtual clock

    @classmethod
    def quick(cls, **changes) -> "SuiteConfig":
        """Small datasets (seconds on the emulator), for tests and a first look."""
        small = dict(baseline_repeats=64, current_averages=1, idvg_cells=((0, 0), (7, 8), (15, 15)),
                     idvg_points=9, random_patterns=512, onehot_levels=(0.5, 1.0), onehot_repeats=2,
                     repeat_patterns=32, repeats=8, activation_patterns=128, crosstalk_repeats=32,
                     droop_levels=12, droop_repeats=8, temperature_offsets_k=(-10.0, 0.0, 20.0),
                     retention_checkpoints_s=(0.0, 100.0, 1e4))
        return cls(**{**small, **changes})

    def validate(self, backend: SafeArray | None = None) -> "SuiteConfig":
        """Check every size and range (UsageError naming the bad one) before measuring."""
        for name in ("baseline_repeats", "current_averages", "random_patterns", "onehot_repeats",
                     "repeat_patterns", "activation_patterns"):
            check_int(name, getattr(self, name), 1)
        for name in ("repeats", "crosstalk_repeats"):
            check_int(name, getattr(self, name), 2)
        check_int("droop_levels", self.droop_levels, 4, 4096)
        check_int("droop_repeats", self.droop_repeats, 1)
        gate_voltages(self.idvg_start_v, self.idvg_stop_v, self.idvg_points, backend)
        if not 0 < self.idvg_compliance_a <= (backend.envelope.max_compliance_a if backend else math.inf):
            raise UsageError(f"compliance {self.idvg_compliance_a:g} A; expected > 0 and within the envelope")
        check_fraction("zero_fraction", self.zero_fraction)
        onehot_patterns(16, self.onehot_levels)
        k = np.asarray(self.crosstalk_widths)
        if len(k) < 2 or not np.issubdtype(k.dtype, np.integer) or k.min() < 1 or len(set(k.tolist())) != len(k):
            raise UsageError(f"crosstalk_widths={list(self.crosstalk_widths)}; expected >= 2 distinct clocks >= 1")
        if self.temperature and len(self.temperature_offsets_k) < 2:
            raise UsageError("temperature_offsets_k needs >= 2 offsets")
        cp = np.asarray(self.retention_checkpoints_s, dtype=float)
        if self.retention and (len(cp) < 2 or cp[0] < 0 or np.any(np.diff(cp) <= 0)):
            raise UsageError(f"retention checkpoints {cp.tolist()} s; expected >= 2 increasing times >= 0 s")
        if backend is not None:
            for r, c in self.idvg_cells:
                backend.cells([[r, c]])
        return self

    def steps(self, backend: SafeArray) -> list[str]:
        """Names of the steps this config runs on ``backend``."""
        names = ["baseline", "currents", "idvg", "random", "onehot", "repeats", "activations",
                 "crosstalk", "droop"]
        if self.temperature and backend.capability(TemperatureControl) is not None:
            names.append("temperature")
        if self.retention and backend.capability(VirtualClock) is not None:
            names.append("retention")
        return names


@dataclass
class Characterization:
    """Everything the standard suite measured (see :func:`run_standard`)."""

    backend: str
    chip_id: str
    rows: int
    cols: int
    config: SuiteConfig
    baseline: Baseline
    cell_current_a: np.ndarray
    idvg: IdVgCurves
    random: VmmData
    onehot: OneHotData
    repeats: RepeatData
    activations: VmmData
    crosstalk: CrosstalkMap
    droop: DroopSweep
    temperature: TemperatureSweep | None = None
    retention: Retention | None = None
    duration_s: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The headline figures (JSON-able; SI units; ``inf`` SER when there is no noise)."""
        i = self.cell_current_a
        nf = self.repeats.noise_floor_ser
        pat = self.crosstalk.pattern()
        out = {
            "noise_floor_ser": nf,
            "noise_floor_ser_db": to_db(nf),
            "noise_floor_bits": effective_bits(nf),
            "output_noise_s": float(np.mean(self.repeats.noise_std_s)),
            "baseline_t0_s": float(np.mean(self.baseline.t0_s)),
            "cell_current_median_a": float(np.median(i)),
            "cell_current_min_a": float(i.min()),
            "cell_current_max_a": float(i.max()),
            "cell_current_spread": float(i.std() / i.mean()),
            "crosstalk_mean_v": self.crosstalk.mean_v,
            "crosstalk_max_v": self.crosstalk.max_v,
            "crosstalk_fraction_of_full_scale": self.crosstalk.fraction_of_full_scale,
            "crosstalk_pattern": pat["description"],
            "crosstalk_layout": pat,
            "droop_fraction": self.droop.droop_fraction,
            "droop_fraction_max": float(np.nanmax(self.droop.droop_fraction_col))
            if np.any(np.isfinite(self.droop.droop_fraction_col)) else math.nan,
            "nonlinearity_max": float(np.max(self.droop.nonlinearity)),
            "idvg_path": self.idvg.path,
            "idvg_slope_mv_per_decade": float(np.nanmedian(self.idvg.subthreshold_slope_mv_per_decade()))
            if np.any(np.isfinite(self.idvg.subthreshold_slope_mv_per_decade())) else math.nan,
            "datasets": {"vmm_random": len(self.random.x), "vmm_onehot": len(self.onehot.x),
                         "vmm_repeat": int(np.prod(self.repeats.y_s.shape[:2])),
                         "vmm_activations": len(self.activations.x)},
            "skipped": list(self.skipped),
            "duration_s": self.duration_s,
        }
        if self.temperature is not None:
            out["current_temp_coeff_per_k"] = float(np.median(self.temperature.log_slope_per_k))
        if self.retention is not None:
            out["retention_change"] = float(np.median(self.retention.relative_change))
            out["retention_per_decade"] = float(np.nanmedian(self.retention.per_decade)) \
                if np.any(np.isfinite(self.retention.per_decade)) else math.nan
        return out


def run_standard(backend: SafeArray, config: SuiteConfig = SuiteConfig(), run=None,
                 progress: Progress = no_progress, activations=None) -> Characterization:
    """The standard characterization suite, in this order: zero-input baseline, cell
    current map, Id-Vg of ``config.idvg_cells``, random / one-hot / repeated / network-
    activation VMM datasets, crosstalk map, droop sweep, then (where the backend can)
    a temperature sweep around the starting temperature and a retention check last
    (it ages the chip). Every step writes to ``run`` as it goes; the summary is put
    into the run's result at the end. ``activations`` (B, rows) overrides the default
    digit-image activations."""
    config.validate(backend)
    t_start = time.perf_counter()
    rows, cols = backend.geometry.rows, backend.geometry.cols
    seed = config.seed
    base = measure_baseline(backend, config.baseline_repeats, run, progress)
    currents = cell_current_map(backend, averages=config.current_averages, run=run)
    g = gate_voltages(config.idvg_start_v, config.idvg_stop_v, config.idvg_points, backend)
    idvg = id_vg_sweep(backend, [list(c) for c in config.idvg_cells], g, config.idvg_compliance_a, run, progress)
    rnd = vmm_random(backend, base, config.random_patterns, config.zero_fraction, seed, run, progress)
    oh = vmm_onehot(backend, base, config.onehot_levels, config.onehot_repeats, run, progress)
    rep = vmm_repeats(backend, base, config.repeat_patterns, config.repeats, config.zero_fraction, seed + 1,
                      run, progress)
    acts = network_activations(config.activation_patterns, seed) if activations is None else activations
    act = vmm_activations(backend, base, acts, run, progress)
    xt = crosstalk_map(backend, config.crosstalk_widths, config.crosstalk_repeats, run=run, progress=progress)
    dr = droop_sweep(backend, base, config.droop_levels, config.droop_repeats, run=run, progress=progress)
    result = Characterization(backend.identity.backend, backend.identity.chip_id, rows, cols, config, base,
                              currents, idvg, rnd, oh, rep, act, xt, dr)
    if config.temperature and backend.capability(TemperatureControl) is not None and backend.temperature_k():
        t0 = float(backend.temperature_k())
        result.temperature = temperature_sweep(backend, [t0 + d for d in config.temperature_offsets_k],
                                               run=run, progress=progress)
    elif config.temperature:
        result.skipped.append("temperature (no temperature controller)")
    if config.retention and backend.capability(VirtualClock) is not None:
        result.retention = retention_check(backend, config.retention_checkpoints_s, run=run, progress=progress)
    elif config.retention:
        result.skipped.append("retention (no virtual clock; run retention_check over real time)")
    result.duration_s = time.perf_counter() - t_start
    if run is not None:
        run.put_result(result.summary())
    return result
