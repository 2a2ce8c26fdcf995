"""Range and finiteness checks shared by SafeArray and its capability guards."""

from __future__ import annotations

import math

import numpy as np

from labkit.errors import SafetyError, UsageError


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
