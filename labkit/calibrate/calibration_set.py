"""The measured data a calibration is fitted and judged on: measured now, or read from the store.

Everything measured goes through :mod:`labkit.measure` into one run of the run store
(tables ``baseline``, ``vmm_fit``, ``vmm_onehot``, ``vmm_holdout``, ``vmm_activations``,
``vmm_repeat``, ``vmm_activation_repeat``), so a calibration can be refitted later
from the store (:func:`load_calibration_set`). Times in s.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from labkit.backend import Datasheet, Geometry, SafeArray, VmmSettings
from labkit.calibrate.config import CalibrationConfig
from labkit.errors import UsageError
from labkit.measure import (Baseline, OneHotData, RepeatData, VmmData, activation_like_patterns, load_baseline,
                            load_dataset, load_repeats, measure_baseline, measure_repeats, measure_vmm, no_progress,
                            random_patterns, vmm_activations, vmm_onehot, vmm_repeats)

__all__ = ["CalibrationSet", "measure_calibration_set", "load_calibration_set"]


@dataclass
class CalibrationSet:
    """The measured data a calibration is fitted and judged on (times in s)."""

    chip_id: str
    backend_uri: str
    geometry: Geometry
    datasheet: Datasheet
    settings: VmmSettings
    baseline: Baseline
    fit: VmmData  # random patterns, for fitting
    onehot: OneHotData  # one row at a time (naive extraction, model start)
    holdout: VmmData  # random patterns, held out
    activations: VmmData  # activation-like patterns, held out
    repeats: RepeatData  # repeated random patterns: noise floor
    activation_repeats: RepeatData | None = None  # repeated activation-like patterns
    run_ids: list[int] = field(default_factory=list)
    run_uids: list[str] = field(default_factory=list)
    store: str = ""
    duration_s: float = 0.0

    def sizes(self) -> dict[str, int]:
        """Measurements per dataset (VMMs; repeats count every repeat)."""
        out = {"baseline": int(self.baseline.n), "fit": len(self.fit.x), "onehot": len(self.onehot.x),
               "holdout": len(self.holdout.x), "activations": len(self.activations.x),
               "repeats": int(np.prod(self.repeats.y_s.shape[:2]))}
        if self.activation_repeats is not None:
            out["activation_repeats"] = int(np.prod(self.activation_repeats.y_s.shape[:2]))
        return out


def measure_calibration_set(backend: SafeArray, config: CalibrationConfig = CalibrationConfig(), run=None,
                            progress=no_progress) -> CalibrationSet:
    """Measure everything a calibration needs through the characterization routines,
    writing each dataset to ``run`` (a store Run) as it goes. Pattern seeds: fit
    ``seed``, held-out ``seed+1``, repeats ``seed+2``, activations ``seed+3``."""
    config.validate()
    t_start = time.perf_counter()
    rows, bits = backend.geometry.rows, backend.settings.input_bits
    s, zf = config.seed, config.zero_fraction
    base = measure_baseline(backend, config.baseline_repeats, run, progress)
    fit = measure_vmm(backend, random_patterns(config.fit_patterns, rows, zf, bits, s), base, run,
                      "vmm_fit", progress=progress, label="fit VMMs")
    onehot = vmm_onehot(backend, base, config.onehot_levels, config.onehot_repeats, run, progress)
    holdout = measure_vmm(backend, random_patterns(config.holdout_patterns, rows, zf, bits, s + 1), base,
                          run, "vmm_holdout", progress=progress, label="held-out VMMs")
    acts = activation_like_patterns(config.activation_patterns, rows, config.activation_zero_fraction, bits, s + 3)
    activations = vmm_activations(backend, base, acts, run, progress)
    repeats = vmm_repeats(backend, base, config.repeat_patterns, config.repeats, zf, s + 2, run, progress)
    act1 = activation_like_patterns(config.repeat_patterns, rows, config.activation_zero_fraction, bits, s + 4)
    act_rep = measure_repeats(backend, act1, config.repeats, base, run, "vmm_activation_repeat", progress,
                              "repeated activations")
    ident = backend.identity
    return CalibrationSet(
        chip_id=ident.chip_id, backend_uri=ident.backend, geometry=backend.geometry,
        datasheet=backend.datasheet, settings=backend.settings, baseline=base, fit=fit, onehot=onehot,
        holdout=holdout, activations=activations, repeats=repeats, activation_repeats=act_rep,
        run_ids=[run.id] if run is not None else [], run_uids=[run.uid] if run is not None else [],
        store=str(run.store.path) if run is not None else "", duration_s=time.perf_counter() - t_start)


def _from_fields(cls, d: Mapping | None, what: str):
    if not d:
        return cls()
    names = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in d.items():
        if k in names:
            kw[k] = tuple(tuple(p) if isinstance(p, list) else p for p in v) if isinstance(v, list) else v
    try:
        return cls(**kw)
    except TypeError as exc:
        raise UsageError(f"stored {what} cannot be read back: {exc}") from None


def load_calibration_set(store, run_ref, holdout_fraction: float = 0.25) -> CalibrationSet:
    """The datasets of a stored run (a ``calibration`` run, or a ``characterize`` run:
    its ``vmm_random`` table is split into fit and held-out parts, the last
    ``holdout_fraction`` held out). ``store`` is an open
    :class:`~labkit.store.runstore.RunStore`; ``run_ref`` an id, uid or ``'latest'``."""
    r = store.load(run_ref)
    have = set(r.tables)
    need = {"baseline", "vmm_onehot", "vmm_repeat"}
    if not need <= have or not ({"vmm_fit", "vmm_random"} & have):
        raise UsageError(f"run {r.id} ({r.kind}) lacks calibration data: has tables {sorted(have)}; needs "
                         f"{sorted(need)} and vmm_fit or vmm_random")
    prov = r.provenance or {}
    geometry = _from_fields(Geometry, prov.get("geometry"), "geometry")
    datasheet = _from_fields(Datasheet, prov.get("datasheet"), "datasheet")
    settings = _from_fields(VmmSettings, r.settings or prov.get("settings"), "settings")
    if "vmm_fit" in have:
        fit, holdout = load_dataset(r, "vmm_fit"), load_dataset(r, "vmm_holdout")
    else:
        allr = load_dataset(r, "vmm_random")
        k = int(round(len(allr.x) * (1.0 - holdout_fraction)))
        if not 0 < k < len(allr.x):
            raise UsageError(f"run {r.id}: {len(allr.x)} random patterns cannot be split into fit and held-out")
        fit = VmmData(allr.x[:k], allr.t_s[:k], allr.y_s[:k])
        holdout = VmmData(allr.x[k:], allr.t_s[k:], allr.y_s[k:])
    activations = load_dataset(r, "vmm_activations") if "vmm_activations" in have else holdout
    return CalibrationSet(
        chip_id=r.chip_id, backend_uri=r.backend_uri, geometry=geometry, datasheet=datasheet, settings=settings,
        baseline=load_baseline(r), fit=fit, onehot=load_dataset(r, "vmm_onehot"), holdout=holdout,
        activations=activations, repeats=load_repeats(r, "vmm_repeat", min_repeats=2),
        activation_repeats=load_repeats(r, "vmm_activation_repeat", min_repeats=2)
        if "vmm_activation_repeat" in have else None,
        run_ids=[r.id], run_uids=[r.uid], store=str(store.path), duration_s=r.duration_s or 0.0)
