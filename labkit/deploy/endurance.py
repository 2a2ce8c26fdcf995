"""Endurance: each chip's erase-and-program cycles from its chip-state file, checked up front.

Every programming of a tile (program-and-verify, refresh) adds its row erases and
program pulses to the chip's chip-state file (:mod:`labkit.program.chipstate`, written
ahead of each call, atomically). A cell's cycles are the erases of its row; a chip has
used the cycles of its busiest row (:attr:`ChipState.cycles_used`). A deployment needs
one cycle per tile it programs onto a chip (the block erase of the tile's rows; an
overshoot's partial erases come on top). :func:`check` refuses, before any pulse, a
deployment that would take a chip past the budget (cells are rated for 1e4 - 1e5 cycles).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from labkit.errors import UsageError
from labkit.program.chipstate import ChipState, state_file_name
from labkit.program.pipeline import check_state_path


class EnduranceError(UsageError):
    """A deployment that would take a chip past its endurance budget; nothing was programmed."""


def state_path(folder: str | Path, chip_id: str) -> Path:
    """The chip-state file of ``chip_id`` in ``folder`` (``chipstate-CHIPID.json``, as ``labkit program``)."""
    return Path(folder) / state_file_name(chip_id)


def check_budget(budget) -> int | None:
    """``budget`` as a whole number of cycles >= 1 (None: no limit); ValueError otherwise."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 1 <= budget < 2**62 or budget != int(budget):
        raise ValueError(f"endurance={budget!r}; expected a whole number of erase-and-program cycles >= 1")
    return int(budget)


def cycles_used(path: str | Path | None, identity) -> int:
    """Cycles ``identity``'s chip has used according to its chip-state file at ``path``
    (0 when there is none yet). UsageError if the file is unreadable or of another chip."""
    earlier: ChipState | None = check_state_path(path, identity)
    return 0 if earlier is None else earlier.cycles_used


def check(chips: Iterable[tuple[object, str | Path | None, int]], budget) -> dict[str, int]:
    """For each ``(backend, state_path, cycles_needed)``: the cycles used on record,
    returned by chip id; :class:`EnduranceError` naming the first chip whose used plus
    needed cycles exceed ``budget`` (None: no limit, the files are still checked)."""
    budget = check_budget(budget)
    used = {}
    for backend, path, need in chips:
        ident = backend.identity
        n = used[ident.chip_id] = cycles_used(path, ident)
        if budget is not None and n + need > budget:
            where = f" ({path})" if path is not None else ""
            raise EnduranceError(f"chip {ident.chip_id}: {n:,} erase-and-program cycles used on record{where}, "
                                 f"this deployment needs {need:,} more; the endurance budget is {budget:,} "
                                 f"cycles (more chips, or a larger budget)")
    return used
