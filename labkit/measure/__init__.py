"""Measurement: backend-agnostic characterization of a 16x16 array (only the ArrayBackend contract).

Every routine takes a :class:`~labkit.backend.SafeArray`, returns numpy results (small
dataclasses), and, when given an open store :class:`~labkit.store.runstore.Run`, writes
its points to the run *as it goes* (in chunks), so an interrupted run keeps what was
measured. Optional ``progress(label, total)`` returns a context manager with
``advance(n)`` (``Console.progress`` fits; :func:`no_progress` shows nothing).

Output convention: ``y = t(x=0) - t(x)`` in seconds, from a baseline of repeated
zero-input VMMs (:func:`measure_baseline`); a larger charge gives a larger ``y``.
Multiply by the reference current for charge. Inputs ``x`` in [0, 1] are put on the
input clock grid (``1 / 2**input_bits``) before they are applied, so the stored ``x`` is
the applied ``x``. Volts reported here are *nominal*: derived from the datasheet's
bit-line capacitance and reference current (labkit knows nothing better).

Modules, by job: :mod:`~labkit.measure.patterns` (input patterns),
:mod:`~labkit.measure.acquire` (VMM batches, baseline, repeats),
:mod:`~labkit.measure.vmm` (the VMM datasets), :mod:`~labkit.measure.currents` (current
map, Id-Vg), :mod:`~labkit.measure.crosstalk`, :mod:`~labkit.measure.droop`,
:mod:`~labkit.measure.temperature`, :mod:`~labkit.measure.retention`,
:mod:`~labkit.measure.suite` (the standard suite and its tables),
:mod:`~labkit.measure.datasets` (datasets read back from the store),
:mod:`~labkit.measure.metrics` (SER, noise floor).
"""

from labkit.measure.acquire import (Baseline, RepeatData, VmmData, measure_baseline, measure_repeats, measure_times,
                                    measure_vmm)
from labkit.measure.crosstalk import CrosstalkMap, crosstalk_map, crosstalk_pattern
from labkit.measure.currents import IdVgCurves, cell_current_map, gate_voltages, id_vg_sweep, operating_point
from labkit.measure.datasets import load_baseline, load_dataset, load_repeats
from labkit.measure.droop import DroopSweep, droop_sweep, level_inputs, linearity_levels, linearity_step
from labkit.measure.patterns import (activation_like_patterns, input_steps, network_activations, onehot_patterns,
                                     quantize_inputs, random_patterns)
from labkit.measure.progress import Progress, no_progress
from labkit.measure.retention import Retention, retention_check
from labkit.measure.suite import Characterization, SuiteConfig, run_standard
from labkit.measure.temperature import TemperatureSweep, temperature_sweep
from labkit.measure.vmm import OneHotData, vmm_activations, vmm_onehot, vmm_random, vmm_repeats

__all__ = [
    "Baseline", "VmmData", "RepeatData", "OneHotData", "measure_times", "measure_baseline", "measure_vmm",
    "measure_repeats", "vmm_random", "vmm_onehot", "vmm_repeats", "vmm_activations",
    "input_steps", "quantize_inputs", "random_patterns", "onehot_patterns", "activation_like_patterns",
    "network_activations", "cell_current_map", "operating_point", "gate_voltages", "IdVgCurves", "id_vg_sweep",
    "CrosstalkMap", "crosstalk_map", "crosstalk_pattern", "DroopSweep", "droop_sweep", "linearity_levels",
    "level_inputs", "linearity_step", "TemperatureSweep", "temperature_sweep", "Retention", "retention_check",
    "SuiteConfig", "Characterization", "run_standard", "load_baseline", "load_dataset", "load_repeats",
    "Progress", "no_progress",
]
