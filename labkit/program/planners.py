"""Pulse planners: what voltage (V) each cell's next fixed-width program pulse gets.

- :class:`IsppPlanner`, the baseline: incremental step pulse programming, coarse /
  medium / fine phases chosen by the distance to target, the voltage rising by a fixed
  step after each verify that is not yet there, restarting lower in each phase.
- :class:`AdaptivePlanner`: learns each cell's programming response from its own pulses
  (log step = a_cell + b V + c u, ``b`` and ``c`` pooled over the array, half-select
  disturb ``delta`` from cells that were not pulsed) and plans each pulse to land just
  above target, shrinking the step by the model's uncertainty so an overshoot stays rare.

States are in u-space (labkit.program.config): dimensionless, nats of current in subthreshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from labkit.errors import UsageError


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

    @property
    def min_voltage_v(self) -> float:
        """The lowest voltage (V) its phases pulse at: a station limit below it cannot run them."""
        return min(p[1] for p in self.phases)

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
        # each cell's observations in time order; cells are independent, so the k-th
        # observation of every cell is one vector step (the same arithmetic per cell)
        nth = np.empty(len(cell), dtype=int)
        nth[order] = np.arange(len(cell)) - np.searchsorted(c_o, c_o)
        for k in range(int(nth.max(initial=-1)) + 1):
            j = np.flatnonzero(nth == k)
            i = cell[j]
            if k == 0:
                known = np.isfinite(self.a_init[i])
                a[i] = np.where(known, self.a_init[i], self.a_pop)
                p[i] = np.where(known, self.p_init[i], self.var_pop)
            else:
                p[i] += np.float_power(self.drift * last_s[i], 2.0)  # pow, as the scalar ** 2 (not x * x)
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
        cached = getattr(self, "_a_export", None)
        if cached is None or cached[0] is not self.a:  # self.a is replaced, never changed in place, once started
            shape = tuple(self.cells.max(axis=0) + 1) if len(self.cells) else (0, 0)
            grid = np.full(shape, np.nan)
            grid[self.cells[:, 0], self.cells[:, 1]] = self.a
            cached = self._a_export = (self.a, [[x if math.isfinite(x) else None for x in row] for row in grid.tolist()])
        return {"planner": self.name, "b": self.b, "c": self.c, "delta": self.delta, "a_pop": self.a_pop,
                "var_pop": self.var_pop, "sigma_m": self.sigma_m, "granule": self.granule, "v_ref": self.v_ref,
                "a": [list(row) for row in cached[1]]}


PLANNERS: dict[str, Callable[[], Planner]] = {"adaptive": AdaptivePlanner, "ispp": IsppPlanner}


def make_planner(name: str, model: dict | None = None) -> Planner:
    """A fresh planner by name (``adaptive`` or ``ispp``); ``model`` restores a learned one."""
    if name not in PLANNERS:
        raise UsageError(f"unknown programming algorithm {name!r}; expected one of {sorted(PLANNERS)}")
    planner = PLANNERS[name]()
    if model is not None and hasattr(planner, "model"):
        planner.model = model
    return planner
