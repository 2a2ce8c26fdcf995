"""What a calibration measures and how it fits: :class:`CalibrationConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from labkit.measure import onehot_patterns
from labkit.validate import check_fraction, check_int

__all__ = ["METHODS", "CalibrationConfig"]

#: The three extractions, in report order.
METHODS = ("naive", "linear", "model")


@dataclass(frozen=True)
class CalibrationConfig:
    """Dataset sizes and fit settings (``quick()``: same code, smaller sets)."""

    seed: int = 0
    baseline_repeats: int = 256
    fit_patterns: int = 3072
    holdout_patterns: int = 1024
    zero_fraction: float = 0.4  # of random patterns (0.3-0.5 separates edges from durations)
    onehot_levels: tuple[float, ...] = (0.5, 1.0)
    onehot_repeats: int = 16
    activation_patterns: int = 1024
    activation_zero_fraction: float = 0.5
    repeat_patterns: int = 128
    repeats: int = 16
    fit_iterations: int = 200  # L-BFGS iterations (at most; it stops earlier when converged)
    eta_per_cell: bool = False  # refine with a drain coefficient per cell (slower)
    programmed_states: int = 0  # program the chip to N weight-like states and fit the chip on them (reprograms!)

    @classmethod
    def quick(cls, **changes) -> "CalibrationConfig":
        """Small datasets (a few seconds on the emulator), for tests and a first look."""
        small = dict(baseline_repeats=128, fit_patterns=1536, holdout_patterns=512, onehot_repeats=8,
                     activation_patterns=512, repeat_patterns=64, repeats=8, fit_iterations=150)
        return cls(**{**small, **changes})

    def validate(self) -> "CalibrationConfig":
        """Check every size and range (UsageError naming the bad one) before measuring."""
        check_int("seed", self.seed, 0)
        for name in ("fit_patterns", "holdout_patterns", "activation_patterns", "repeat_patterns",
                     "onehot_repeats", "fit_iterations"):
            check_int(name, getattr(self, name), 1)
        check_int("baseline_repeats", self.baseline_repeats, 2)
        check_int("programmed_states", self.programmed_states, 0, 16)
        check_int("repeats", self.repeats, 2)
        for name in ("zero_fraction", "activation_zero_fraction"):
            check_fraction(name, getattr(self, name), closed=False)
        onehot_patterns(16, self.onehot_levels)
        return self
