"""Slow drift of the floating-gate cells between calibration and use (docs/physics.md).

Two effects on the virtual clock, each a switch of :class:`simulator.chip.Switches`:

- ``flicker``: 1/f noise of each cell's threshold, a sum of Ornstein-Uhlenbeck
  (Lorentzian) processes with corner frequencies two per decade from ``F_MIN_HZ`` to
  ``F_MAX_HZ``, equal variance each, so the one-sided spectrum is ``S0 / f`` in between;
- ``relaxation``: a fraction of the charge each programming pulse moves sits in traps
  and relaxes back with time constants spread log-uniformly from ``RELAX_TAU_S[0]`` to
  ``RELAX_TAU_S[1]``: about logarithmic in time over the first seconds to hours, then it
  settles.

Both have their own random streams, so switching one never moves another effect's draws.
"""

from __future__ import annotations

import numpy as np

FLICKER_S0_V2_PER_HZ = 5e-10  # gate-referred 1/f noise at 1 Hz of one cell (median)
F_MIN_HZ, F_MAX_HZ = 1e-5, 1.0
RELAX_FRACTION = 3e-3  # part of a pulse's threshold step that relaxes back (median)
RELAX_TAU_S = (1.0, 1e4)
PER_DECADE = 2


class Drift:
    """Drift state of every cell; :meth:`shift_v` adds to the floating-gate overdrive."""

    def __init__(self, seed: int, rows: int, cols: int, variability: bool):
        params = np.random.default_rng([seed, 0xD41F7])
        var = 1.0 if variability else 0.0
        self.rng = np.random.default_rng([seed, 0xF1F])  # flicker increments
        n_f = int(round(PER_DECADE * np.log10(F_MAX_HZ / F_MIN_HZ))) + 1
        self.flicker_tau_s = 1.0 / (2 * np.pi * np.logspace(np.log10(F_MIN_HZ), np.log10(F_MAX_HZ), n_f))
        s0 = FLICKER_S0_V2_PER_HZ * params.lognormal(0.0, 0.5 * var + 1e-9, size=(rows, cols))
        # one-sided S(f) = sum 4 sigma^2 tau / (1 + (2 pi f tau)^2) = sigma^2 PER_DECADE / (ln 10 f)
        self.flicker_sigma_v = np.sqrt(s0 * np.log(10.0) / PER_DECADE)[..., None] * np.ones(n_f)
        self.flicker_v = self.flicker_sigma_v * self.rng.standard_normal((rows, cols, n_f))  # stationary start
        n_r = int(round(PER_DECADE * np.log10(RELAX_TAU_S[1] / RELAX_TAU_S[0]))) + 1
        self.relax_tau_s = np.logspace(np.log10(RELAX_TAU_S[0]), np.log10(RELAX_TAU_S[1]), n_r)
        self.relax_fraction = RELAX_FRACTION * np.clip(params.lognormal(0.0, 0.5 * var + 1e-9, size=(rows, cols)),
                                                       0.2, 5.0)
        self.relax_total_v = np.zeros((rows, cols))  # charge ever put into traps (as threshold volts)
        self.relax_pending_v = np.zeros((rows, cols, n_r))  # still trapped, per time constant

    def advance(self, seconds: float, flicker: bool, relaxation: bool) -> None:
        """Let ``seconds`` of virtual time pass (exact OU and exponential updates)."""
        if seconds <= 0:
            return
        if flicker:
            keep = np.exp(-seconds / self.flicker_tau_s)
            kick = self.flicker_sigma_v * np.sqrt(-np.expm1(-2 * seconds / self.flicker_tau_s))
            self.flicker_v = self.flicker_v * keep + kick * self.rng.standard_normal(self.flicker_v.shape)
        if relaxation:
            self.relax_pending_v *= np.exp(-seconds / self.relax_tau_s)

    def programmed(self, r: int, c: int, step_v: float) -> None:
        """A pulse lowered cell (r, c) by ``step_v`` (V): part of it will relax back."""
        q = self.relax_fraction[r, c] * step_v
        self.relax_total_v[r, c] += q
        self.relax_pending_v[r, c] += q / len(self.relax_tau_s)

    def erased(self, r: int) -> np.ndarray:
        """Row ``r`` is erased: traps empty. Returns the relaxed shift (V) made permanent."""
        done = self.relax_total_v[r] - self.relax_pending_v[r].sum(axis=-1)
        self.relax_total_v[r] = 0.0
        self.relax_pending_v[r] = 0.0
        return done

    def shift_v(self, flicker: bool, relaxation: bool) -> np.ndarray | float:
        """Overdrive change (V) of every cell now: + relaxed charge, + 1/f wander."""
        out = 0.0
        if relaxation:
            out = out + (self.relax_total_v - self.relax_pending_v.sum(axis=-1))
        if flicker:
            out = out + self.flicker_v.sum(axis=-1)
        return out
