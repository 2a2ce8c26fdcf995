"""The one pint unit registry of labkit, and conversion to SI magnitudes at the edges.

Public functions accept plain floats (taken as SI) or pint Quantities; hot loops only
ever see SI floats / numpy arrays, converted once by :func:`si`.
"""

from __future__ import annotations

import numpy as np
import pint

ureg = pint.UnitRegistry()
pint.set_application_registry(ureg)
Q_ = ureg.Quantity


def si(value, unit: str, name: str = "value"):
    """Magnitude of ``value`` in ``unit`` (a float or ndarray).

    Plain numbers and arrays are taken to be in ``unit`` already; a Quantity of the
    wrong dimension is a ``ValueError`` naming ``name``.
    """
    if isinstance(value, pint.Quantity):
        try:
            return value.to(unit).magnitude
        except pint.DimensionalityError as exc:
            raise ValueError(f"{name}={value!s} is not convertible to {unit}") from exc
    if isinstance(value, str):
        try:
            return Q_(value).to(unit).magnitude
        except (pint.errors.UndefinedUnitError, pint.DimensionalityError, ValueError) as exc:
            raise ValueError(f"{name}={value!r} is not a quantity in {unit}") from exc
    return value


def fmt(value: float, unit: str, digits: int = 3) -> str:
    """Human-readable SI value with a prefix, e.g. ``fmt(1.2e-9, 'A') -> '1.2 nA'``."""
    if value == 0 or not np.isfinite(value):
        return f"{value:g} {unit}"
    q = Q_(value, unit).to_compact()
    return f"{q.magnitude:.{digits}g} {q.units:~}"
