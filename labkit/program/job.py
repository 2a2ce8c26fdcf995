"""The per-array program-and-verify job: reads, pulses and erases through the contract.

The job, cell by cell::

    block-erase the rows -> read -> in [target (1 - 0.9 tol), target (1 + 0.75 tol)]? done
                                 -> above? one program pulse, voltage from the planner
                                 -> below (overshoot)? partial erase of its row, retry the row
    ... until no cell is pending -> final verify pass over every cell (catches disturb of
    cells finished earlier by their neighbours' later pulses) -> re-open and fix, bounded

Everything goes through the contract (``read_currents``, ``program_pulses``,
``erase_rows``), batched: each round reads every pending cell in one call (``reads``
repeats, averaged) and gives every cell that still needs charge one pulse in one call.

The acceptance band is asymmetric (``guard``, ``final_guard``): half-select disturb only
ever pulls finished cells down, and fixing a cell below target costs an erase of its
whole row. Reads are averaged; a cell whose reads scatter (telegraph noise at nA) gets
more of them (up to ``max_reads``) until its standard error is 7 % of the tolerance.

Bounded: at most ``max_pulses`` program pulses per cell, ``max_partial_erases`` partial
and ``max_block_erases`` full erases per row, ``final_passes`` verify passes; cells that
cannot make it are ``failed`` with a reason (target above the erased current, pulse
budget spent, overshoot with the erase budget spent), never an endless loop.
Units: A, V, s; states in u (labkit.program.config).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from labkit.program.chipstate import ChipState
from labkit.program.config import ProgramConfig, from_u, to_u
from labkit.program.planners import Planner

Progress = Callable[[int, int, str], None]


class ProgramJob:
    """One program-and-verify job over the targeted cells of a ChipState.

    Every erase and pulse call is announced in the chip-state file first (write-ahead,
    :meth:`_announce`): the cells it touches are written ``unknown`` / ``pulsing``, and
    their counts are raised, before the call; a later read makes them known again.
    ``v_range``: the program voltages (V) allowed, from :func:`check_recipe`.
    """

    def __init__(self, backend, state: ChipState, cfg: ProgramConfig, planner: Planner,
                 state_path: str | Path | None, progress: Progress | None, cells: np.ndarray,
                 v_range: tuple[float, float]):
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
        self.stale = np.full(self.n, "", dtype=object)  # "unknown" / "pulsing" until the cell is read again
        self.ops = 0  # erase and pulse calls so far
        self.read_at = np.full(self.n, -1)  # ops count at each cell's last read
        self.row_touch = np.full(state.rows, -1)  # ops count of the last pulse in each row / column
        self.col_touch = np.full(state.cols, -1)
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
        self.v_range = v_range

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

    def _sync(self) -> None:
        """Copy the job's view into the ChipState and write it (cells not read since an
        erase or pulse are written with that unknown status, never as done)."""
        st = self.st
        status = self.status.copy()
        stale = (self.stale != "") & (status != "failed")
        status[stale] = self.stale[stale]
        status[(status == "done") & ~self.verified()] = "unknown"  # half-select disturb since its read
        st.status[self.rc] = status
        st.achieved_a[self.rc] = self.i_meas
        st.pulses[self.rc] = self.base_pulses + self.pulses
        st.row_erases = [int(x) for x in np.asarray(st.row_erases)]
        if self.started:
            st.model.update(self.planner.export())
        st.model["erase_rate_per_s"] = self.erase_rate
        if self.path is not None:
            st.save(self.path)

    def verified(self) -> np.ndarray:
        """Per job cell: read since the last pulse in its row or column and the last erase."""
        touched = np.maximum(self.row_touch[self.cells[:, 0]], self.col_touch[self.cells[:, 1]])
        return (self.read_at >= touched) & (self.stale == "")

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
        self.stale[js] = ""
        self.read_at[js] = self.ops
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

    def _announce(self, intent: dict) -> None:
        """Write-ahead: the operation and its (possible) effects are on record before the call."""
        self.st.intent = {**intent, "time": time.time()}
        self._sync()

    def _erase(self, rows, volts: float, width: float) -> None:
        rows = [int(r) for r in np.atleast_1d(rows)]
        st = self.st
        self.stale[np.isin(self.cells[:, 0], rows)] = "unknown"
        for r in rows:
            st.row_erases[r] += 1
            st.row_erases_unconfirmed[r] += 1
        st.erase_cycles += len(rows)
        self.erases += len(rows)
        self._announce({"op": "erase", "rows": rows})
        self.b.erase_rows(np.asarray(rows, dtype=np.int64), volts, width)
        self.ops += 1
        for r in rows:
            st.row_erases_unconfirmed[r] -= 1
        st.intent = None

    def _pulse(self, js: np.ndarray, volts: np.ndarray) -> None:
        """One program pulse for each job cell ``js``, counted before the call (possibly applied)."""
        st = self.st
        rc = (self.cells[js, 0], self.cells[js, 1])
        self.pulses[js] += 1
        st.pulses_unconfirmed[rc] += 1
        st.life_pulses[rc] += 1
        st.life_pulses_unconfirmed[rc] += 1
        st.program_cycles += len(js)
        self.stale[js] = "pulsing"
        self.full_erased[js] = False
        self._announce({"op": "pulse", "cells": self.cells[js].tolist()})
        self.row_touch[self.cells[js, 0]] = self.ops + 1  # reads from now on are older than this pulse
        self.col_touch[self.cells[js, 1]] = self.ops + 1
        self.b.program_pulses(self.cells[js], volts, self.cfg.width_s)
        self.ops += 1
        st.pulses_unconfirmed[rc] -= 1
        st.life_pulses_unconfirmed[rc] -= 1
        st.intent = None

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
        else:  # a refresh: every cell is unknown until read again (nothing on record is trusted)
            self.stale[:] = "unknown"
            self._sync()
            self._read(np.arange(self.n), cfg.final_reads)
            self.st.intent = None  # whatever was in flight is now measured
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
                self._pulse(above[go], volts[go])
                prev = (js[watch], obs_v[watch], self.u[js[watch]].copy())
            elif not erased_rows:
                continue  # everything classified; next iteration sees no pending cells
            self._sync()
            self._report(f"round {self.rounds}")
        else:
            left = np.flatnonzero(self.status == "pending")
            self._fail(left, "round limit reached")
        self._final_verify()
        self._report("verified")

    def _final_verify(self) -> None:
        """Done cells not read since the chip last changed are read now (``complete``
        is only ever written after this); those out of tolerance fail."""
        js = np.flatnonzero((self.status == "done") & ~self.verified())
        if len(js):
            self._read(js, self.cfg.final_reads)
            err = self.i_meas[js] / self.target[js] - 1
            self._fail(js[np.abs(err) > self.cfg.tolerance], "out of tolerance at the final verify")
        self._sync()
