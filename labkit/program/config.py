"""The recipe of a program-and-verify job, its checks against a backend, and u-space.

Internally currents are mapped to the EKV normalized overdrive
``u = 2 ln(exp(sqrt(I / I_s)) - 1)``, with ``I_s`` per cell = its measured erased current
(every cell is taken to erase to the same normalized overdrive): ``u = ln(I / I_s)`` in
subthreshold and linear in floating-gate charge everywhere, so a pulse moves ``u`` by an
amount that does not depend on where the cell is in moderate or weak inversion.
Units: A, V, s; ``u`` and steps are dimensionless (nats of current in subthreshold).

Everything here is checked before anything reaches a chip: :func:`check_targets` (the
target grid against the datasheet) and :func:`check_recipe` (the recipe's voltages and
widths against the SafetyEnvelope and the planner's range).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labkit.errors import UsageError

#: The smallest relative tolerance program-and-verify can reach: one program pulse moves a
#: cell by at least ~0.2 % of its current (charge comes in electrons) and the averaged
#: verify reads scatter by ~0.1 %; below this, cells fail after their whole pulse budget.
PRECISION_FLOOR = 0.002
MAX_PULSES = 10_000  # program pulses per cell and job, at most (the default budget is 150)
MAX_READS = 4096  # reads averaged per verify, at most


@dataclass(frozen=True)
class ProgramConfig:
    """Recipe of a program-and-verify job (SI units; tolerances relative to the target)."""

    tolerance: float = 0.01  # |I / I_target - 1| that counts as programmed
    guard: float = 0.75  # while programming, accept only up to +guard*tol (disturb pushes down later)
    max_pulses: int = 150  # program pulses per cell in one job
    reads: int = 4  # reads averaged per verify
    final_reads: int = 8  # reads averaged in the final verify pass
    read_se: float = 0.07  # noisy cells get more reads until the standard error is read_se*tol
    max_reads: int = 32
    final_passes: int = 3  # final verify passes (each may re-open cells)
    final_guard: float = 0.9  # the final pass re-opens cells beyond +-final_guard*tol
    width_s: float = 1e-6  # program pulse width
    v_min: float = 2.0  # program voltage range used (the SafetyEnvelope may lower v_max)
    v_max: float = 6.5
    erase_v: float = 13.0  # block (full) erase
    erase_width_s: float = 10e-3
    partial_erase_v: float = 10.0  # partial erase after an overshoot
    partial_erase_rate_per_s: float = 30.0  # prior of the erase rate at partial_erase_v (learned)
    partial_erase_margin: float = 0.04  # raise an overshot cell this far (in u) above its target
    max_partial_erases: int = 4  # per row and job
    max_block_erases: int = 1  # per row and job, after the partial ones
    max_rounds: int = 2000  # hard stop (never reached in practice)

    def __post_init__(self):
        if not 0 < self.tolerance < 0.5:  # NaN fails here too
            raise UsageError(f"tolerance={self.tolerance}; expected a fraction in (0, 0.5), e.g. 0.01")
        if self.tolerance < PRECISION_FLOOR:
            raise UsageError(f"tolerance={self.tolerance:g} is below the achievable precision {PRECISION_FLOOR:g} "
                             f"(one pulse's smallest charge step and the averaged read noise); expected >= "
                             f"{PRECISION_FLOOR:g}")
        if not 0 < self.guard <= 1:
            raise UsageError(f"guard={self.guard}; expected 0 < guard <= 1")
        for name, hi in (("max_pulses", MAX_PULSES), ("reads", MAX_READS), ("final_reads", MAX_READS),
                         ("max_reads", MAX_READS), ("max_rounds", 10 * MAX_PULSES)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 1 <= v <= hi:
                raise UsageError(f"{name}={v}; expected an integer in [1, {hi}]")
        if self.final_passes < 0 or self.max_partial_erases < 0 or self.max_block_erases < 0:
            raise UsageError("final_passes, max_partial_erases and max_block_erases must be >= 0")
        if not 0 < self.v_min < self.v_max:
            raise UsageError(f"program voltage range [{self.v_min}, {self.v_max}] V; expected 0 < v_min < v_max")


def to_u(current_a, i_spec_a: float) -> np.ndarray:
    """EKV normalized overdrive of a current (A): ``2 ln(exp(sqrt(I / I_s)) - 1)``."""
    r = np.sqrt(np.maximum(np.asarray(current_a, dtype=float), 1e-30) / i_spec_a)
    return 2.0 * np.log(np.expm1(r))


def from_u(u, i_spec_a: float) -> np.ndarray:
    """Inverse of :func:`to_u`: current (A) ``I_s ln^2(1 + exp(u / 2))``."""
    return i_spec_a * np.logaddexp(0.0, np.asarray(u, dtype=float) / 2.0) ** 2


def check_targets(targets_a, backend) -> np.ndarray:
    """Validated ``(rows, cols)`` float copy; NaN = leave the cell alone. UsageError otherwise."""
    g, sheet = backend.geometry, backend.datasheet
    raw = np.asarray(targets_a)
    if raw.dtype.kind not in "iuf":
        raise UsageError(f"targets have dtype {raw.dtype}; expected real currents in A")
    t = raw.astype(float)
    if t.shape != (g.rows, g.cols):
        raise UsageError(f"targets have shape {t.shape}; expected {(g.rows, g.cols)} (NaN for cells to leave alone)")
    if np.any(np.isinf(t)):
        r, c = np.argwhere(np.isinf(t))[0]
        raise UsageError(f"target of cell ({r}, {c}) is {t[r, c]}; expected a finite current in A")
    lo, hi = sheet.cell_current_range_a
    bad = np.isfinite(t) & ((t < lo) | (t > hi))
    if np.any(bad):
        r, c = np.argwhere(bad)[0]
        raise UsageError(f"target of cell ({r}, {c}) is {t[r, c]:g} A, outside the programmable [{lo:g}, {hi:g}] A")
    if not np.any(np.isfinite(t)):
        raise UsageError("no cell has a target (all NaN)")
    return t


def check_recipe(cfg: ProgramConfig, envelope, planner=None) -> tuple[float, float]:
    """The program voltage range (V) a job may use, after checking ``cfg`` against the
    backend's SafetyEnvelope and the planner's lowest useful voltage
    (``planner.min_voltage_v`` where it has one). UsageError naming the limit otherwise."""
    v_range = (max(cfg.v_min, 0.0), min(cfg.v_max, envelope.max_program_voltage_v))
    if v_range[1] <= v_range[0]:
        raise UsageError(f"the envelope's program voltage limit {envelope.max_program_voltage_v:g} V is below the "
                         f"recipe's v_min={cfg.v_min:g} V; expected a limit above {cfg.v_min:g} V (or lower v_min)")
    need = getattr(planner, "min_voltage_v", None)
    if need is not None and v_range[1] < need:
        raise UsageError(f"the program voltage limit {v_range[1]:g} V is below the {planner.name} planner's lowest "
                         f"pulse {need:g} V; expected a limit of at least {need:g} V")
    lo, hi = envelope.program_width_range_s
    if not lo <= cfg.width_s <= hi:
        raise UsageError(f"width_s={cfg.width_s:g} s is outside the envelope's [{lo:g}, {hi:g}] s")
    for name in ("erase_v", "partial_erase_v"):
        if getattr(cfg, name) > envelope.max_erase_voltage_v:
            raise UsageError(f"{name}={getattr(cfg, name):g} V is above the envelope's "
                             f"{envelope.max_erase_voltage_v:g} V; lower it in the ProgramConfig")
    lo, hi = envelope.erase_width_range_s
    if not lo <= cfg.erase_width_s <= hi:
        raise UsageError(f"erase_width_s={cfg.erase_width_s:g} s is outside the envelope's [{lo:g}, {hi:g}] s")
    return v_range
