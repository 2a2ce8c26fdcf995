"""Program-and-verify: write target currents into floating-gate cells, on any ArrayBackend.

Everything goes through the contract (``read_currents``, ``program_pulses``,
``erase_rows``), batched: each round reads every pending cell in one call (``reads``
repeats, averaged) and gives every cell that still needs charge one pulse in one call.

The job, cell by cell::

    block-erase the rows -> read -> in [target (1 - 0.9 tol), target (1 + 0.75 tol)]? done
                                 -> above? one program pulse, voltage from the planner
                                 -> below (overshoot)? partial erase of its row, retry the row
    ... until no cell is pending -> final verify pass over every cell (catches disturb of
    cells finished earlier by their neighbours' later pulses) -> re-open and fix, bounded

The acceptance band is asymmetric (``guard``, ``final_guard``): half-select disturb only
ever pulls finished cells down, and fixing a cell below target costs an erase of its
whole row. Reads are averaged; a cell whose reads scatter (telegraph noise at nA) gets
more of them (up to ``max_reads``) until its standard error is 7 % of the tolerance.

Bounded: at most ``max_pulses`` program pulses per cell, ``max_partial_erases`` partial
and ``max_block_erases`` full erases per row, ``final_passes`` verify passes; cells that
cannot make it are ``failed`` with a reason (target above the erased current, pulse
budget spent, overshoot with the erase budget spent), never an endless loop.

Planners (what voltage the next pulse gets):

- :class:`IsppPlanner`, the baseline: incremental step pulse programming, coarse /
  medium / fine phases chosen by the distance to target, the voltage rising by a fixed
  step after each verify that is not yet there, restarting lower in each phase.
- :class:`AdaptivePlanner`: learns each cell's programming response from its own pulses
  (log step = a_cell + b V + c u, ``b`` and ``c`` pooled over the array, half-select
  disturb ``delta`` from cells that were not pulsed) and plans each pulse to land just
  above target, shrinking the step by the model's uncertainty so an overshoot stays rare.

Internally currents are mapped to the EKV normalized overdrive
``u = 2 ln(exp(sqrt(I / I_s)) - 1)``, with ``I_s`` per cell = its measured erased current
(every cell is taken to erase to the same normalized overdrive): ``u = ln(I / I_s)`` in
subthreshold and linear in floating-gate charge everywhere, so a pulse moves ``u`` by an
amount that does not depend on where the cell is in moderate or weak inversion.
Units: A, V, s; ``u`` and steps are dimensionless (nats of current in subthreshold).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from labkit.program.chipstate import ChipState

# ---------------------------------------------------------------- configuration


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
        if not 0 < self.tolerance < 0.5:
            raise ValueError(f"tolerance={self.tolerance}; expected a fraction in (0, 0.5), e.g. 0.01")
        if not 0 < self.guard <= 1:
            raise ValueError(f"guard={self.guard}; expected 0 < guard <= 1")
        for name in ("max_pulses", "reads", "final_reads", "max_reads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected >= 1")
        if self.final_passes < 0 or self.max_partial_erases < 0 or self.max_block_erases < 0:
            raise ValueError("final_passes, max_partial_erases and max_block_erases must be >= 0")
        if not 0 < self.v_min < self.v_max:
            raise ValueError(f"program voltage range [{self.v_min}, {self.v_max}] V; expected 0 < v_min < v_max")


# ---------------------------------------------------------------- EKV coordinates


def to_u(current_a, i_spec_a: float) -> np.ndarray:
    """EKV normalized overdrive of a current (A): ``2 ln(exp(sqrt(I / I_s)) - 1)``."""
    r = np.sqrt(np.maximum(np.asarray(current_a, dtype=float), 1e-30) / i_spec_a)
    return 2.0 * np.log(np.expm1(r))


def from_u(u, i_spec_a: float) -> np.ndarray:
    """Inverse of :func:`to_u`: current (A) ``I_s ln^2(1 + exp(u / 2))``."""
    return i_spec_a * np.logaddexp(0.0, np.asarray(u, dtype=float) / 2.0) ** 2


# ---------------------------------------------------------------- planners


class Planner(Protocol):
    """Chooses the voltage of each cell's next pulse (fixed width) and learns from results."""

    name: str

    def start(self, cells: np.ndarray, target_u: np.ndarray, tol_u: np.ndarray, v_range: tuple[float, float]) -> None:
        """A job over ``cells`` (N, 2) begins; ``tol_u``: the tolerance in u per cell."""

    def plan(self, idx: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Voltages (V) of the next pulse of job cells ``idx`` at state ``u``; NaN = hold this round."""

    def observe(self, idx: np.ndarray, volts: np.ndarray, u_before: np.ndarray, u_after: np.ndarray,
                sigma: np.ndarray) -> None:
        """Result of the last round for read cells ``idx`` (``volts`` NaN where not pulsed);
        ``sigma``: standard error of each ``u`` read."""

    def erased(self, idx: np.ndarray) -> None:
        """Cells whose row was erased (their state jumped)."""

    def export(self) -> dict:
        """What was learned, JSON-able (kept in the chip-state file for a later refresh)."""


@dataclass
class IsppPlanner:
    """Baseline: incremental step pulse programming with coarse-to-fine phases.

    ``phases``: ``(distance_u, v_start, v_step, v_cap)`` from coarse to fine; a cell uses
    the first phase whose ``distance_u`` is below its distance to target (in u). On
    entering a phase the voltage restarts at ``v_start``; after every pulse that did not
    reach the target it rises by ``v_step``, up to ``v_cap``. No model, no prediction.
    """

    phases: tuple[tuple[float, float, float, float], ...] = (
        (1.0, 5.0, 0.1, 5.2),  # coarse: more than e-fold above target
        (0.15, 4.3, 0.05, 4.65),  # medium
        (0.04, 4.0, 0.05, 4.4),  # fine
        (0.0, 3.6, 0.05, 3.95),  # finest: the last 4 %
    )
    name: str = "ispp"

    def start(self, cells, target_u, tol_u, v_range):
        self.t = np.asarray(target_u, float)
        self.phase = np.full(len(cells), -1)
        self.v = np.full(len(cells), np.nan)
        self.v_range = v_range

    def plan(self, idx, u):
        d = u - self.t[idx]
        thresholds = np.array([p[0] for p in self.phases])
        phase = np.array([int(np.argmax(x > thresholds)) if np.any(x > thresholds) else len(self.phases) - 1
                          for x in d])
        table = np.array(self.phases)
        new = phase != self.phase[idx]
        v = np.where(new, table[phase, 1], np.minimum(self.v[idx] + table[phase, 2], table[phase, 3]))
        v = np.clip(v, *self.v_range)
        self.phase[idx], self.v[idx] = phase, v
        return v

    def observe(self, idx, volts, u_before, u_after, sigma):
        pass

    def erased(self, idx):
        self.phase[idx] = -1

    def export(self) -> dict:
        return {"planner": self.name}


@dataclass
class AdaptivePlanner:
    """Learns each cell's response online and plans pulses to land just above target.

    Model of one pulse at voltage V from state u (log step in u; ``v_ref`` = 5 V)::

        ln step = a_cell + b (V - v_ref) + c u          (+ disturb delta * sum of neighbours' steps)

    ``a_cell`` per cell (Kalman filter over its own pulses; the state drift between
    pulses adds process noise ``drift * step``), ``b`` and ``c`` pooled over all cells from
    consecutive pulses of the same cell (ridge toward the priors), ``delta`` from cells
    read while a neighbour in their row or column was pulsed. The step variance is
    multiplicative ``var(a_cell) + sigma_m**2`` (model and cycle-to-cycle spread) plus an
    additive ``granule * step`` (injected charge comes in electrons; ``granule`` is
    learned from the residuals of small steps). A pulse aims at ``target + aim * tol``
    less the disturb its row and column neighbours' remaining steps will still add (a
    cell the disturb alone brings home holds), and is shrunk until its ``z``-sigma landing,
    this round's disturb included, stays above ``target - 0.8 tol``: overshoot stays rare.

    Before anything is known about the chip, a few pilot cells (about one per row) pulse
    first with the prior; the rest hold one round (their reads measure the disturb) and
    then start from the population the pilots measured.
    The priors are the chip family's nominal values; ``model`` (from a chip-state file)
    restores what an earlier job learned.
    """

    v_ref: float = 5.0
    a0: float = math.log(0.2)
    sigma_a0: float = 0.7
    b0: float = 3.0
    sigma_b0: float = 0.5
    c0: float = 0.0
    sigma_c0: float = 0.15
    sigma_m: float = 0.05
    granule: float = 0.002
    drift: float = 0.1
    z: float = 3.0
    aim: float = 0.35
    pilot: bool = True
    model: dict | None = None
    name: str = "adaptive"

    def start(self, cells, target_u, tol_u, v_range):
        n = len(cells)
        self.cells = np.asarray(cells)
        self.t = np.asarray(target_u, float)
        self.tol = np.asarray(tol_u, float)
        self.v_range = v_range
        self.b, self.c, self.delta = self.b0, self.c0, 0.0
        self.a_pop, self.var_pop = self.a0, self.sigma_a0**2
        self.known_pop = False
        self.a = np.full(n, np.nan)
        self.p = np.full(n, np.nan)
        # observation history (one entry per pulse): cell, V, u0, step, R, segment id
        self.obs = {k: [] for k in ("cell", "v", "u0", "s", "r", "seg")}
        self.seg = np.zeros(n, dtype=int)  # increments on erase: differences never span one
        self.dist_x, self.dist_y = [], []  # disturb regression data
        self.noise_x, self.noise_y = [], []  # noise-model regression data
        self.sigma_m0, self.granule0 = self.sigma_m, self.granule
        m = self.model or {}
        if m.get("planner") == self.name:
            self.b, self.c = float(m.get("b", self.b)), float(m.get("c", self.c))
            self.delta = float(m.get("delta", 0.0))
            self.sigma_m = float(m.get("sigma_m", self.sigma_m))
            self.granule = float(m.get("granule", self.granule))
            self.a_pop, self.var_pop = float(m.get("a_pop", self.a_pop)), float(m.get("var_pop", self.var_pop))
            self.known_pop = True
            grid = m.get("a")
            if grid is not None:
                g = np.array([[np.nan if x is None else x for x in row] for row in grid], dtype=float)
                ok = (self.cells[:, 0] < g.shape[0]) & (self.cells[:, 1] < g.shape[1])
                a = np.full(n, np.nan)
                a[ok] = g[self.cells[ok, 0], self.cells[ok, 1]]
                have = np.isfinite(a)
                self.a[have] = a[have]
                self.p[have] = 0.1**2
        self.a_init, self.p_init = self.a.copy(), self.p.copy()

    # -- model
    def _cell_prior(self, idx):
        a = np.where(np.isfinite(self.a[idx]), self.a[idx], self.a_pop)
        p = np.where(np.isfinite(self.p[idx]), self.p[idx], self.var_pop)
        return a, p

    def _neighbour_sum(self, idx, steps):
        """For each cell of idx: sum of ``steps`` of the other listed cells in its row or column."""
        rows, cols = self.cells[idx, 0], self.cells[idx, 1]
        same = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])
        np.fill_diagonal(same, False)
        return same.astype(float) @ np.nan_to_num(steps)

    def plan(self, idx, u):
        idx = np.asarray(idx)
        a, p = self._cell_prior(idx)
        d = u - self.t[idx]
        spread = np.exp(self.z * np.sqrt(p + self.sigma_m**2))  # multiplicative: model + cycle-to-cycle
        gran = self.z * np.sqrt(self.granule)  # additive: granular charge, std sqrt(granule * step)

        tol = self.tol[idx]

        def size(disturb, coming):
            want = d - self.aim * tol - coming
            room = np.maximum(d + 0.8 * tol - disturb, 0.0)
            # largest s with s * spread + gran * sqrt(s) <= room (z-sigma landing above target - 0.8 tol)
            x = (-gran + np.sqrt(gran**2 + 4 * spread * room)) / (2 * spread)
            return np.minimum(want, x**2)

        s = size(0.0, 0.0)
        hold = np.zeros(len(idx), bool)
        if self.delta > 0:
            # neighbours' pulses pull each cell down by delta * (their steps): this round's
            # must not overshoot it, and all still to come (they have d - aim tol to go) are
            # left for the disturb to do; cells the disturb alone brings to their aim point hold
            coming = self.delta * self._neighbour_sum(idx, np.maximum(d - self.aim * tol, 0.0))
            for _ in range(2):
                now = self.delta * self._neighbour_sum(idx, np.where(hold, 0.0, np.maximum(s, 0.0)))
                s = size(now, np.maximum(coming, now))
                hold = s < 0.1 * tol
            if hold.all():
                s, hold = size(0.0, 0.0), np.zeros(len(idx), bool)
        s = np.maximum(s, 1e-6)
        v = self.v_ref + (np.log(s) - a - self.c * u) / self.b
        v = np.where(hold, np.nan, np.clip(v, *self.v_range))
        if not self.known_pop and self.pilot and len(idx) > 4:
            # pilots spread over the job (a diagonal on a full array); the rest hold a round
            n_pilot = min(len(idx), max(4, len(np.unique(self.cells[idx, 0]))))
            pilots = np.zeros(len(idx), bool)
            pilots[np.round(np.linspace(0, len(idx) - 1, n_pilot)).astype(int)] = True
            v = np.where(pilots, v, np.nan)
        return v

    def observe(self, idx, volts, u_before, u_after, sigma):
        idx = np.asarray(idx)
        pulsed = np.isfinite(volts) & np.isfinite(u_before) & np.isfinite(u_after)
        if not np.any(pulsed):
            return
        step = u_before - u_after
        # disturb: cells read but not pulsed, against the steps of pulsed neighbours
        nsum = self._neighbour_sum(idx, np.where(pulsed, step, 0.0))
        held = ~np.isfinite(volts) & np.isfinite(step) & (nsum > 0)
        self.dist_x.extend(nsum[held].tolist())
        self.dist_y.extend(step[held].tolist())
        if len(self.dist_x) >= 8:
            x, y = np.array(self.dist_x), np.array(self.dist_y)
            self.delta = float(np.clip(np.sum(x * y) / np.sum(x * x), 0.0, 0.05))
        own = step - self.delta * nsum
        # uncertainty of a step: two reads, plus the disturb subtracted (delta and the
        # neighbours' steps are known to ~25 %): a step buried in either teaches nothing
        sd = np.sqrt(2.0 * sigma**2 + (0.25 * self.delta * nsum) ** 2)
        a, _ = self._cell_prior(idx)
        expected = np.exp(a + self.b * (np.nan_to_num(volts) - self.v_ref) + self.c * u_before)
        ok = pulsed & (own > 3 * sd)
        # a response lost in read noise teaches only when a clearly larger step was expected
        weak = pulsed & ~ok & (expected > 10 * sd)
        use = ok | weak
        if not np.any(use):
            return
        # noise model from one-step-ahead residuals of clean observations:
        # var(own - expected) = expected^2 (p + sigma_m^2) + granule * expected + sd^2
        _, p_prior = self._cell_prior(idx)
        clean = ok & (expected < 0.05)
        self.noise_x.extend(expected[clean].tolist())
        self.noise_y.extend(((own - expected) ** 2 - expected**2 * (p_prior + self.sigma_m**2) - sd**2)[clean].tolist())
        self._fit_noise()
        k = idx[use]
        s_obs = np.where(ok, own, np.maximum(own, sd))[use]
        r = np.where(ok[use], self.sigma_m**2 + self.granule / s_obs + (sd[use] / s_obs) ** 2, 0.5)
        for key, val in (("cell", k), ("v", volts[use]), ("u0", u_before[use]), ("s", s_obs), ("r", r),
                         ("seg", self.seg[k])):
            self.obs[key].extend(np.asarray(val).tolist())
        self._refit()

    def erased(self, idx):
        self.seg[np.asarray(idx)] += 1

    def _fit_noise(self) -> None:
        """The charge granule from small-step residuals: mean of (residual^2 - known) / step."""
        if len(self.noise_y) < 40:
            return
        x, y = np.array(self.noise_x), np.array(self.noise_y)
        q = float(np.mean(np.clip(y / x, 0.0, 20.0 * self.granule0)))
        self.granule = float(np.clip(q, 0.2 * self.granule0, 5.0 * self.granule0))

    def _refit(self):
        o = {k: np.asarray(v) for k, v in self.obs.items()}
        cell, v, u0, s, r, seg = o["cell"], o["v"], o["u0"], o["s"], o["r"], o["seg"]
        y = np.log(s)
        # pooled b, c from consecutive observations of the same cell (same erase segment)
        order = np.lexsort((np.arange(len(cell)), cell))
        c_o, s_o = cell[order], seg[order]
        same = (c_o[1:] == c_o[:-1]) & (s_o[1:] == s_o[:-1])
        if np.any(same):
            i1, i0 = order[1:][same], order[:-1][same]
            dv, du, dy = v[i1] - v[i0], u0[i1] - u0[i0], y[i1] - y[i0]
            w = 1.0 / (r[i1] + r[i0] + (self.drift * s[i0]) ** 2)
            A = np.array([[np.sum(w * dv * dv) + 1 / self.sigma_b0**2, np.sum(w * dv * du)],
                          [np.sum(w * dv * du), np.sum(w * du * du) + 1 / self.sigma_c0**2]])
            rhs = np.array([np.sum(w * dv * dy) + self.b0 / self.sigma_b0**2,
                            np.sum(w * du * dy) + self.c0 / self.sigma_c0**2])
            b, c = np.linalg.solve(A, rhs)
            self.b = float(np.clip(b, 0.5 * self.b0, 2.0 * self.b0))
            self.c = float(np.clip(c, self.c0 - 3 * self.sigma_c0, self.c0 + 3 * self.sigma_c0))
        # per-cell Kalman over each cell's observations in time order
        resid = y - self.b * (v - self.v_ref) - self.c * u0
        n = len(self.a)
        a = np.full(n, np.nan)
        p = np.full(n, np.nan)
        last_s = np.zeros(n)
        for j in range(len(cell)):  # observations are few (<= pulses); plain loop is fine
            i = cell[j]
            if np.isnan(a[i]):
                known = np.isfinite(self.a_init[i])
                a[i] = self.a_init[i] if known else self.a_pop
                p[i] = self.p_init[i] if known else self.var_pop
            else:
                p[i] += (self.drift * last_s[i]) ** 2
            kg = p[i] / (p[i] + r[j])
            a[i] += kg * (resid[j] - a[i])
            p[i] *= 1 - kg
            last_s[i] = s[j]
        seen = np.isfinite(a)
        keep = ~seen & np.isfinite(self.a)
        a[keep], p[keep] = self.a[keep], self.p[keep]
        self.a, self.p = a, p
        if np.any(seen):
            aa = a[seen]
            med = float(np.median(aa))
            mad = 1.4826 * float(np.median(np.abs(aa - med)))
            # a spread measured on few cells (the pilots) is widened: first pulses rely on it
            spread = max(mad, 0.15) * (1 + 1.5 / np.sqrt(len(aa))) if len(aa) >= 8 else 0.3
            self.a_pop = med
            self.var_pop = spread**2 + float(np.median(p[seen]))
            self.known_pop = True

    def export(self) -> dict:
        shape = tuple(self.cells.max(axis=0) + 1) if len(self.cells) else (0, 0)
        grid = np.full(shape, np.nan)
        grid[self.cells[:, 0], self.cells[:, 1]] = self.a
        return {"planner": self.name, "b": self.b, "c": self.c, "delta": self.delta, "a_pop": self.a_pop,
                "var_pop": self.var_pop, "sigma_m": self.sigma_m, "granule": self.granule, "v_ref": self.v_ref,
                "a": [[None if not np.isfinite(x) else float(x) for x in row] for row in grid]}


PLANNERS: dict[str, Callable[[], Planner]] = {"adaptive": AdaptivePlanner, "ispp": IsppPlanner}


def make_planner(name: str, model: dict | None = None) -> Planner:
    """A fresh planner by name (``adaptive`` or ``ispp``); ``model`` restores a learned one."""
    if name not in PLANNERS:
        raise ValueError(f"unknown programming algorithm {name!r}; expected one of {sorted(PLANNERS)}")
    planner = PLANNERS[name]()
    if model is not None and hasattr(planner, "model"):
        planner.model = model
    return planner


# ---------------------------------------------------------------- result


@dataclass
class ProgramResult:
    """Outcome of one job; arrays are per job cell (``cells`` is ``(N, 2)``), currents in A."""

    chip_id: str
    algorithm: str
    tolerance: float
    cells: np.ndarray
    targets_a: np.ndarray
    achieved_a: np.ndarray  # averaged read of the last verify of each cell
    pulses: np.ndarray  # program pulses in this job
    status: np.ndarray  # done | failed
    reasons: dict = field(default_factory=dict)  # "r,c" -> reason
    erases: int = 0  # erase pulses on rows (block + partial), the initial erase included
    partial_erases: int = 0
    rounds: int = 0
    final_reopened: int = 0  # cells the final verify passes found out of tolerance
    elapsed_s: float = 0.0

    def grid(self, name: str, rows: int, cols: int) -> np.ndarray:
        """A per-cell array of this result (e.g. ``achieved_a``) as a ``(rows, cols)`` grid (NaN elsewhere)."""
        out = np.full((rows, cols), np.nan)
        out[self.cells[:, 0], self.cells[:, 1]] = getattr(self, name)
        return out

    @property
    def rel_error(self) -> np.ndarray:
        return self.achieved_a / self.targets_a - 1.0

    def summary(self) -> dict:
        """Figures of the job (the ``--json`` object of ``labkit program``)."""
        e = self.rel_error
        ok = np.isfinite(e)
        ee = np.where(ok, e, np.inf)
        p = self.pulses
        failed = [{"row": int(r), "col": int(c), "reason": self.reasons.get(f"{r},{c}", "")}
                  for (r, c), s in zip(self.cells, self.status) if s == "failed"]
        return {
            "chip_id": self.chip_id, "algorithm": self.algorithm, "tolerance": self.tolerance,
            "cells": int(len(self.cells)),
            "rms_rel_error": float(np.sqrt(np.mean(e[ok] ** 2))) if ok.any() else None,
            "max_rel_error": float(np.max(np.abs(e[ok]))) if ok.any() else None,
            "within_tolerance_fraction": float(np.mean(np.abs(ee) <= self.tolerance)) if len(e) else 1.0,
            "pulses_median": float(np.median(p)) if len(p) else 0.0,
            "pulses_p95": float(np.percentile(p, 95)) if len(p) else 0.0,
            "pulses_max": int(np.max(p)) if len(p) else 0,
            "pulses_total": int(np.sum(p)),
            "failed_cells": len(failed), "failed": failed,
            "erases": self.erases, "partial_erases": self.partial_erases, "rounds": self.rounds,
            "final_reopened": self.final_reopened, "elapsed_s": self.elapsed_s,
        }


# ---------------------------------------------------------------- the job


def check_targets(targets_a, backend) -> np.ndarray:
    """Validated ``(rows, cols)`` float copy; NaN = leave the cell alone. ValueError otherwise."""
    g, sheet = backend.geometry, backend.datasheet
    t = np.asarray(targets_a, dtype=float)
    if t.shape != (g.rows, g.cols):
        raise ValueError(f"targets have shape {t.shape}; expected {(g.rows, g.cols)} (NaN for cells to leave alone)")
    if np.any(np.isinf(t)):
        r, c = np.argwhere(np.isinf(t))[0]
        raise ValueError(f"target of cell ({r}, {c}) is {t[r, c]}; expected a finite current in A")
    lo, hi = sheet.cell_current_range_a
    bad = np.isfinite(t) & ((t < lo) | (t > hi))
    if np.any(bad):
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"target of cell ({r}, {c}) is {t[r, c]:g} A, outside the programmable [{lo:g}, {hi:g}] A")
    if not np.any(np.isfinite(t)):
        raise ValueError("no cell has a target (all NaN)")
    return t


Progress = Callable[[int, int, str], None]


class _Job:
    """One program-and-verify job over the targeted cells of a ChipState."""

    def __init__(self, backend, state: ChipState, cfg: ProgramConfig, planner: Planner,
                 state_path: str | Path | None, progress: Progress | None, cells: np.ndarray):
        self.b, self.st, self.cfg, self.planner = backend, state, cfg, planner
        self.path, self.progress = state_path, progress
        self.cells = cells
        self.n = len(cells)
        self.rc = (cells[:, 0], cells[:, 1])
        self.target = state.targets_a[self.rc]
        self.u = np.full(self.n, np.nan)
        self.sig = np.zeros(self.n)
        self.read_ss = np.zeros(self.n)  # forgetting sums of squared read deviations (u^2) and dof
        self.read_dof = np.zeros(self.n)
        self.i_meas = np.full(self.n, np.nan)
        self.pulses = np.zeros(self.n, dtype=int)
        self.status = np.full(self.n, "pending", dtype=object)
        self.full_erased = np.zeros(self.n, bool)
        erased = state.model.get("erased_a")
        top = np.full(self.n, float(backend.datasheet.erased_current_a))
        if erased is not None:
            g = np.array([[np.nan if x is None else x for x in row] for row in erased], dtype=float)
            if g.shape == (state.rows, state.cols):
                top = np.where(np.isfinite(g[self.rc]) & (g[self.rc] > 0), g[self.rc], top)
        self._set_scale(top)
        self.erase_rate = float(state.model.get("erase_rate_per_s", cfg.partial_erase_rate_per_s))
        self.partial = np.zeros(state.rows, dtype=int)
        self.block = np.zeros(state.rows, dtype=int)
        self.erases = 0
        self.pending_erase: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}
        self.rounds = 0
        self.final_reopened = 0
        self.started = False
        env = backend.envelope
        self.v_range = (max(cfg.v_min, 0.0), min(cfg.v_max, env.max_program_voltage_v))
        lo, hi = env.program_width_range_s
        if not lo <= cfg.width_s <= hi:
            raise ValueError(f"width_s={cfg.width_s:g} s is outside the envelope's [{lo:g}, {hi:g}] s")
        for name in ("erase_v", "partial_erase_v"):
            if getattr(cfg, name) > env.max_erase_voltage_v:
                raise ValueError(f"{name}={getattr(cfg, name):g} V is above the envelope's "
                                 f"{env.max_erase_voltage_v:g} V; lower it in the ProgramConfig")
        lo, hi = env.erase_width_range_s
        if not lo <= cfg.erase_width_s <= hi:
            raise ValueError(f"erase_width_s={cfg.erase_width_s:g} s is outside the envelope's [{lo:g}, {hi:g}] s")

    def _set_scale(self, erased_a: np.ndarray) -> None:
        """Per-cell EKV scale I_s from the erased current (A): every cell is taken to erase
        to the same normalized overdrive, so its erased current measures its I_s."""
        self.i_s = np.asarray(erased_a, dtype=float).copy()
        self.t_u = to_u(self.target, self.i_s)
        self.tol_u = to_u(self.target * (1 + self.cfg.tolerance), self.i_s) - self.t_u
        self.u_top = to_u(self.i_s, self.i_s)

    # -- bookkeeping
    def _key(self, j) -> str:
        return f"{self.cells[j, 0]},{self.cells[j, 1]}"

    def _fail(self, js, reason: str) -> None:
        for j in np.atleast_1d(js):
            self.status[j] = "failed"
            self.st.reasons[self._key(j)] = reason

    def _sync(self, pulsing: np.ndarray | None = None) -> None:
        st = self.st
        status = self.status.copy()
        if pulsing is not None:
            status[pulsing] = "pulsing"
        st.status[self.rc] = status
        st.achieved_a[self.rc] = self.i_meas
        st.pulses[self.rc] = self.base_pulses + self.pulses
        st.row_erases = [int(x) for x in np.asarray(st.row_erases)]
        if self.started:
            st.model.update(self.planner.export())
        st.model["erase_rate_per_s"] = self.erase_rate
        if self.path is not None:
            st.save(self.path)

    def _report(self, text: str) -> None:
        if self.progress is not None:
            self.progress(int(np.sum(self.status != "pending")), self.n, text)

    # -- chip access
    def _read(self, js: np.ndarray, reads: int) -> None:
        """Averaged reads of job cells ``js``: u, its standard error and the current.

        Each cell's read noise is estimated from the scatter of its repeated reads,
        pooled over rounds (recent rounds weigh more) and shrunk toward the job's median;
        cells whose noise needs it (telegraph noise at low currents) get more reads, up
        to ``max_reads``, in one more call, until the standard error is ``read_se * tol``."""
        cfg = self.cfg
        cells = np.repeat(self.cells[js], reads, axis=0)
        i_s = self.i_s[js]
        u = to_u(np.asarray(self.b.read_currents(cells), dtype=float).reshape(len(js), reads), i_s[:, None])
        mean = u.mean(axis=1)
        self.read_ss[js] = 0.5 * self.read_ss[js] + ((u - mean[:, None]) ** 2).sum(axis=1)
        self.read_dof[js] = 0.5 * self.read_dof[js] + (reads - 1)
        sd = self._read_sd(js)
        want = cfg.read_se * self.tol_u[js]
        n = np.full(len(js), float(reads))
        extra = np.clip(np.ceil((sd / want) ** 2) - reads, 0, cfg.max_reads - reads).astype(int)
        if np.any(extra > 0):
            more = np.flatnonzero(extra > 0)
            cells = np.repeat(self.cells[js[more]], extra[more], axis=0)
            owner = np.repeat(more, extra[more])
            u2 = to_u(np.asarray(self.b.read_currents(cells), dtype=float), i_s[owner])
            total = mean * n
            np.add.at(total, owner, u2)
            n[more] += extra[more]
            mean = total / n
            dev = np.zeros(len(js))
            np.add.at(dev, owner, (u2 - mean[owner]) ** 2)
            self.read_ss[js] += dev
            self.read_dof[js] += extra
            sd = self._read_sd(js)
        self.u[js] = mean
        self.sig[js] = sd / np.sqrt(n)
        self.i_meas[js] = from_u(mean, i_s)

    def _read_sd(self, js: np.ndarray) -> np.ndarray:
        """Read-noise standard deviation (in u) per cell, shrunk toward the job median."""
        have = self.read_dof > 0
        var = self.read_ss[have] / self.read_dof[have]
        prior = float(np.median(var)) if len(var) else 1e-6
        prior_dof = 4.0
        v = (self.read_ss[js] + prior_dof * prior) / (self.read_dof[js] + prior_dof)
        return np.maximum(np.sqrt(v), 1e-5)

    def _erase(self, rows: np.ndarray, volts: float, width: float) -> None:
        self.b.erase_rows(np.asarray(rows, dtype=np.int64), volts, width)
        for r in rows:
            self.st.row_erases[int(r)] += 1
        self.erases += len(rows)

    def _block_erase(self, rows: np.ndarray, notify: bool = True) -> np.ndarray:
        """Full erase of ``rows``; returns the job cells in them (re-opened, state unknown)."""
        self._erase(rows, self.cfg.erase_v, self.cfg.erase_width_s)
        js = np.flatnonzero(np.isin(self.cells[:, 0], rows) & (self.status != "failed"))
        self.status[js] = "pending"
        self.u[js] = np.nan
        self.full_erased[js] = True
        if notify:
            self.planner.erased(js)
        return js

    # -- overshoot
    def _overshoot(self, over: np.ndarray) -> set[int]:
        """Erase the rows of overshot cells (partial, then block); returns the rows erased."""
        done_rows: set[int] = set()
        cfg = self.cfg
        for row in np.unique(self.cells[over, 0]):
            mine = over[self.cells[over, 0] == row]
            if np.any(self.full_erased[mine]):
                self._fail(mine, "unreachable: target above the erased current")
                continue
            in_row = np.flatnonzero((self.cells[:, 0] == row) & (self.status != "failed"))
            if self.partial[row] < cfg.max_partial_erases:
                gap = self.u_top[mine] - self.u[mine]
                need = np.clip((self.t_u[mine] + cfg.partial_erase_margin - self.u[mine]) / np.maximum(gap, 0.1),
                               1e-4, 0.95)
                width = -math.log(1.0 - float(np.max(need))) / self.erase_rate
                lo, hi = self.b.envelope.erase_width_range_s
                width = float(np.clip(width, lo, hi))
                fresh = in_row[np.isfinite(self.u[in_row]) & (self.status[in_row] == "pending")]
                self.pending_erase[int(row)] = (width, fresh, self.u[fresh].copy())
                self._erase([row], cfg.partial_erase_v, width)
                self.partial[row] += 1
            elif self.block[row] < cfg.max_block_erases:
                self._erase([row], cfg.erase_v, cfg.erase_width_s)
                self.block[row] += 1
                self.full_erased[in_row] = True
            else:
                self._fail(mine, "overshoot: below target with the row's erase budget spent")
                in_row = in_row[self.status[in_row] != "failed"]
            self.status[in_row] = "pending"
            self.u[in_row] = np.nan
            self.planner.erased(in_row)
            done_rows.add(int(row))
        return done_rows

    def _learn_erase(self) -> None:
        rates = []
        for row, (width, js, u0) in self.pending_erase.items():
            ok = np.isfinite(self.u[js])
            if not np.any(ok):
                continue
            k = (self.u[js][ok] - u0[ok]) / np.maximum(self.u_top[js][ok] - u0[ok], 0.1)
            k = k[(k > 1e-4) & (k < 0.99)]
            if len(k):
                rates.append(float(np.median(-np.log1p(-k) / width)))
        self.pending_erase.clear()
        if rates:
            self.erase_rate = float(np.exp(0.5 * np.log(self.erase_rate) + 0.5 * np.mean(np.log(rates))))

    # -- the loop
    def run(self, erase: bool) -> None:
        cfg = self.cfg
        self.base_pulses = self.st.pulses[self.rc].copy()
        if erase:
            rows = np.unique(self.cells[:, 0])
            self._block_erase(rows, notify=False)
            self._sync()
            self._read(np.arange(self.n), cfg.reads)
            self._set_scale(self.i_meas)
            self.u = to_u(self.i_meas, self.i_s)
            grid = np.full((self.st.rows, self.st.cols), np.nan)
            if erased := self.st.model.get("erased_a"):
                grid = np.array([[np.nan if x is None else x for x in r] for r in erased], dtype=float)
            grid[self.rc] = self.i_meas
            self.st.model["erased_a"] = [[None if not np.isfinite(x) else float(x) for x in r] for r in grid]
        else:  # a refresh: cells verified within tolerance stay as they are
            self._read(np.arange(self.n), cfg.final_reads)
            err = self.i_meas / self.target - 1
            self.status[np.abs(err) <= cfg.tolerance] = "done"
        # the final pass of a refresh re-opens only cells out of tolerance (not the guard band)
        reopen = cfg.tolerance * (cfg.final_guard if erase else 1.0)
        self.planner.start(self.cells, self.t_u, self.tol_u, self.v_range)
        self.started = True
        passes_left = cfg.final_passes
        prev: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        while self.rounds < cfg.max_rounds:
            js = np.flatnonzero(self.status == "pending")
            if len(js) == 0:
                if passes_left == 0:
                    break
                passes_left -= 1
                js = np.flatnonzero(self.status == "done")
                self._read(js, cfg.final_reads)
                err = self.i_meas[js] / self.target[js] - 1
                bad = js[np.abs(err) > reopen]
                self.final_reopened += len(bad)
                self._sync()
                if len(bad) == 0:
                    break
                if passes_left == 0:
                    out = js[np.abs(err) > cfg.tolerance]
                    self._fail(out, "out of tolerance at the last final verify")
                    break
                self.status[bad] = "pending"
                prev = None
                continue
            self.rounds += 1
            unknown = np.isnan(self.u[js])
            if prev is not None or np.any(unknown):
                self._read(js, cfg.reads)
                if prev is not None:
                    pj, pv, pu = prev
                    read = np.isin(pj, js)
                    self.planner.observe(pj[read], pv[read], pu[read], self.u[pj[read]], self.sig[pj[read]])
                self._learn_erase()
            prev = None
            err = self.i_meas[js] / self.target[js] - 1
            above = js[err > cfg.guard * cfg.tolerance]
            low = -cfg.final_guard * cfg.tolerance
            over = js[err < low]
            ok = js[(err >= low) & (err <= cfg.guard * cfg.tolerance)]
            self.status[ok] = "done"
            self.full_erased[ok] = False
            spent = above[self.pulses[above] >= cfg.max_pulses]
            if len(spent):
                self._fail(spent, f"not within tolerance after {cfg.max_pulses} pulses")
                above = above[self.pulses[above] < cfg.max_pulses]
            erased_rows = self._overshoot(over) if len(over) else set()
            above = above[~np.isin(self.cells[above, 0], list(erased_rows))]
            above = above[self.status[above] == "pending"]
            if len(above):
                volts = self.planner.plan(above, self.u[above])
                go = np.isfinite(volts)
                if not np.any(go):  # a planner may hold cells, never all of them
                    volts = np.where(go, volts, self.v_range[0])
                    go[:] = True
                # every read pending cell is observed next round (held ones teach disturb)
                obs_v = np.full(len(js), np.nan)
                pos = np.searchsorted(js, above)
                obs_v[pos] = volts
                # observe next round only cells whose change is due to pulses (not erases)
                watch = (self.status[js] == "pending") & ~np.isin(self.cells[js, 0], list(erased_rows))
                pj = above[go]
                self._sync(pulsing=pj)
                self.b.program_pulses(self.cells[pj], volts[go], self.cfg.width_s)
                self.pulses[pj] += 1
                self.full_erased[pj] = False
                prev = (js[watch], obs_v[watch], self.u[js[watch]].copy())
            elif not erased_rows:
                continue  # everything classified; next iteration sees no pending cells
            self._sync()
            self._report(f"round {self.rounds}")
        else:
            left = np.flatnonzero(self.status == "pending")
            self._fail(left, "round limit reached")
        self._report("verified")


def program_array(backend, targets_a, *, config: ProgramConfig | None = None, algorithm: str | Planner = "adaptive",
                  state_path: str | Path | None = None, progress: Progress | None = None,
                  weights: np.ndarray | None = None, window: dict | None = None,
                  erase: bool = True) -> ProgramResult:
    """Erase, then program-and-verify every cell with a finite target (A) in ``targets_a``
    (``(rows, cols)``, NaN = leave alone). Only rows holding targets are erased.

    ``state_path``: chip-state file written atomically after every round (an existing
    file there must belong to this chip). ``weights`` / ``window`` are recorded in it.
    ``progress(done, total, text)`` is called after every round. Validation errors are
    raised before anything touches the chip.
    """
    cfg = config or ProgramConfig()
    t = check_targets(targets_a, backend)
    ident = backend.identity
    if state_path is not None and Path(state_path).exists():
        ChipState.load(state_path).check_chip(ident)
    planner = make_planner(algorithm) if isinstance(algorithm, str) else algorithm
    g = backend.geometry
    state = ChipState.new(ident, g.rows, g.cols, t, tolerance=cfg.tolerance, algorithm=planner.name,
                          settings=_settings(backend), window=window,
                          weights=None if weights is None else np.asarray(weights, dtype=float))
    return _execute(backend, state, cfg, planner, state_path, progress, erase=erase, event="program")


def program_weights(backend, weights, *, window=None, headroom: float = 0.9, scheme: str = "offset",
                    clip: bool = False, pad: bool = False, config: ProgramConfig | None = None,
                    algorithm: str | Planner = "adaptive", state_path: str | Path | None = None,
                    progress: Progress | None = None):
    """Map a signed weight matrix ``(rows, signed outputs)`` onto dual-branch currents
    and program it (one tile = one array). Returns ``(result, window, achieved)``:
    the ProgramResult, the WeightWindow used (default: the backend's, see
    labkit.program.mapping) and the weights the verified currents represent, ``(rows, pairs)``.
    ``pad`` accepts a smaller tile (zeros elsewhere); ``clip`` clips |w| > 1."""
    from labkit.program.mapping import WeightWindow, check_weights, map_weights, unmap_currents

    g = backend.geometry
    win = window or WeightWindow.for_backend(backend, headroom=headroom, scheme=scheme)
    w = check_weights(weights, g, clip=clip, pad=pad)
    targets = map_weights(w, win, g)
    result = program_array(backend, targets, config=config, algorithm=algorithm, state_path=state_path,
                           progress=progress, weights=w, window=win.to_dict())
    return result, win, unmap_currents(result.grid("achieved_a", g.rows, g.cols), win, g)


def refresh(backend, state: ChipState | str | Path, *, config: ProgramConfig | None = None,
            algorithm: str | Planner | None = None, state_path: str | Path | None = None,
            progress: Progress | None = None) -> ProgramResult:
    """Re-verify a programmed chip against its chip-state record and re-program only
    the cells out of tolerance (no block erase; a cell below target costs a partial
    erase of its row, after which that row's cells are re-verified and touched up).

    ``state``: a ChipState or the path of its file (then also the default ``state_path``).
    ChipMismatchError before any action if the record is of another chip.
    """
    if not isinstance(state, ChipState):
        state_path = state_path or state
        state = ChipState.load(state)
    state.check_chip(backend.identity)
    g = backend.geometry
    if (state.rows, state.cols) != (g.rows, g.cols):
        raise ValueError(f"chip-state grid {state.rows}x{state.cols} does not match the array {g.rows}x{g.cols}")
    check_targets(state.targets_a, backend)
    cfg = config or ProgramConfig(tolerance=state.tolerance)
    name = algorithm if algorithm is not None else (state.algorithm or "adaptive")
    planner = make_planner(name, state.model) if isinstance(name, str) else name
    state.settings = _settings(backend)
    return _execute(backend, state, cfg, planner, state_path, progress, erase=False, event="refresh")


def _settings(backend) -> dict:
    s = backend.settings
    return {"read_voltage_v": s.read_voltage_v, "integration_time_s": s.integration_time_s,
            "temperature_k": backend.temperature_k()}


def _execute(backend, state, cfg, planner, state_path, progress, *, erase: bool, event: str) -> ProgramResult:
    t0 = time.time()
    targeted = state.targets_a
    cells = np.argwhere(np.isfinite(targeted))
    job = _Job(backend, state, cfg, planner, state_path, progress, cells)
    state.run_status = "programming" if event == "program" else "refreshing"
    state.tolerance = cfg.tolerance
    state.history.append({"time": t0, "event": event, "algorithm": planner.name, "tolerance": cfg.tolerance})
    try:
        job.run(erase=erase)
    except BaseException as exc:
        state.run_status = "interrupted"
        state.history.append({"time": time.time(), "event": "interrupted", "reason": f"{type(exc).__name__}: {exc}"})
        if state_path is not None:
            state.save(state_path)  # the statuses already on record stay exact
        raise
    state.run_status = "complete"
    result = ProgramResult(
        chip_id=state.chip_id, algorithm=planner.name, tolerance=cfg.tolerance, cells=cells,
        targets_a=job.target, achieved_a=job.i_meas.copy(), pulses=job.pulses.copy(),
        status=job.status.copy(), reasons={k: v for k, v in state.reasons.items()},
        erases=job.erases, partial_erases=int(job.partial.sum()), rounds=job.rounds,
        final_reopened=job.final_reopened, elapsed_s=time.time() - t0)
    state.history.append({"time": time.time(), "event": f"{event} complete",
                          **{k: v for k, v in result.summary().items() if k != "failed"}})
    if state_path is not None:
        state.save(state_path)
    return result


__all__ = ["ProgramConfig", "ProgramResult", "AdaptivePlanner", "IsppPlanner", "Planner", "make_planner",
           "program_array", "program_weights", "refresh", "check_targets", "to_u", "from_u"]
