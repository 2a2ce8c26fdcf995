"""Progress reporting of the measurement routines.

A routine takes ``progress(label, total)``, a factory returning a context manager with
``advance(n, status="")`` (``Console.progress`` fits); :func:`no_progress` shows nothing.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["Progress", "no_progress"]

#: ``progress(label, total)`` -> a context manager with ``advance(n=1, status="")``.
Progress = Callable[[str, int], object]


class _NullBar:
    def advance(self, n: int = 1, status: str = "") -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def no_progress(label: str, total: int) -> _NullBar:
    """A progress factory that shows nothing."""
    return _NullBar()
