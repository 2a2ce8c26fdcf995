"""Validators for values a user hands to labkit: one line naming the value and what was expected.

Each raises before anything reaches a chip: :class:`~labkit.errors.UsageError` (a
``ValueError``) for a malformed value, :class:`~labkit.errors.SafetyError` for one outside
the safety envelope (``in_range``, ``all_in_range``, used by SafeArray and its capability
guards). The ``check_*`` functions return the checked value in the form the caller goes
on with.
"""

from __future__ import annotations

import math

import numpy as np

from labkit.errors import SafetyError, UsageError

__all__ = ["check_int", "check_positive", "check_fraction", "check_inputs", "finite", "in_range", "all_in_range"]


def finite(name: str, a: np.ndarray) -> None:
    """UsageError naming the first non-finite value of ``a``."""
    if not np.all(np.isfinite(a)):
        bad = a[~np.isfinite(a)].ravel()[0]
        raise UsageError(f"{name} contains {bad}; expected finite values")


def in_range(name: str, value: float, rng: tuple[float, float], unit: str) -> None:
    """SafetyError unless ``rng[0] <= value <= rng[1]`` (``unit`` for the message)."""
    if not (math.isfinite(value) and rng[0] <= value <= rng[1]):
        raise SafetyError(f"{name}={value:g} {unit} is outside the allowed [{rng[0]:g}, {rng[1]:g}] {unit}")


def all_in_range(name: str, values: np.ndarray, rng: tuple[float, float], unit: str) -> None:
    """SafetyError naming the first value of ``values`` outside ``rng``."""
    bad = (values < rng[0]) | (values > rng[1])
    if np.any(bad):
        in_range(name, float(values[bad].ravel()[0]), rng, unit)


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` as an int, refused unless it is an integer (not a bool) in ``[lo, hi]``
    (``hi=None``: no upper bound)."""
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not integer or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise UsageError(f"{name}={value!r}; expected an integer {rng}")
    return int(value)


def check_positive(name: str, value, integer: bool = True) -> None:
    """Refuse ``value`` unless it is a finite number > 0 (a whole one where ``integer``)."""
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    if integer:
        ok = ok and int(value) == value
    if not ok:
        kind = "a positive whole number" if integer else "a positive number"
        raise UsageError(f"{name}={value!r}: expected {kind}")


def check_fraction(name: str, value, closed: bool = True) -> float:
    """``value`` as a float, refused unless it is a real number in ``[0, 1]``
    (``closed=False``: in ``[0, 1)``)."""
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not (real and (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0)):
        raise UsageError(f"{name}={value!r}; expected a fraction in [0, 1{']' if closed else ')'}")
    return float(value)


def check_inputs(name: str, x, rows: int) -> np.ndarray:
    """Normalized VMM inputs ``x`` as a float array ``(B >= 1, rows)``, every value finite
    and in [0, 1] (fractions of the integration window)."""
    a = np.asarray(x, dtype=float)
    if a.ndim != 2 or a.shape[1] != rows or a.shape[0] == 0:
        raise UsageError(f"{name} has shape {a.shape}; expected (B >= 1, {rows})")
    finite(name, a)
    if a.min() < 0 or a.max() > 1:
        raise UsageError(f"{name} must be in [0, 1], got range [{a.min():g}, {a.max():g}]")
    return a
