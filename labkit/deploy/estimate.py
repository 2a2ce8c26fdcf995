"""What a deployment will cost on the bench, stated before anything is programmed.

The counts come from the network (tiles per layer, inputs per tile) and the placement
on K chips; the seconds from a :class:`BenchTiming`, whose defaults are the virtual
bench's figures at 921,600 Bd (``benchmarks/bench_link.py``: 2,880 VMM vectors/s paced,
about 0.3 ms per command round trip) and program-and-verify's typical figures
(``benchmarks/bench_program.py``: median 7 pulses per cell, about 12 rounds).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BenchTiming:
    """Seconds per operation on one chip (SI)."""

    round_trip_s: float = 0.32e-3  # one command and its reply over the link
    pulse_s: float = 2e-6  # one programming pulse (width and settling)
    read_s: float = 50e-6  # one verify read of a cell
    erase_s: float = 10e-3  # one row erase
    vmm_s: float = 1 / 2880  # one VMM vector at the link rate
    pulses_per_cell: float = 7.0
    rounds_per_tile: float = 12.0


@dataclass(frozen=True)
class Estimate:
    """Counts and seconds of a deployment on ``chips`` chips."""

    tiles: int
    chips: int
    programmings: int  # tiles programmed, over all chips
    reprogrammings: int  # programmings of a chip that already held a tile
    cycles_per_chip: int  # erase-and-program cycles of the busiest chip
    pulses: int
    vmms: int
    program_s: float
    vmm_s: float

    @property
    def bench_s(self) -> float:
        """Wall time with the chips in parallel: the busiest chip's share."""
        return (self.program_s + self.vmm_s) / self.chips

    def to_dict(self) -> dict:
        return {**asdict(self), "bench_s": self.bench_s}


def estimate(tile_inputs: list[int], chips: int, reads: int = 1, rows: int = 16, cols: int = 16,
             timing: BenchTiming = BenchTiming()) -> Estimate:
    """The cost of programming ``len(tile_inputs)`` tiles (tile ``j`` needs
    ``tile_inputs[j]`` input vectors) onto ``chips`` chips, tile ``j`` on chip ``j mod
    chips``, each input read ``reads`` times."""
    n = len(tile_inputs)
    if chips < 1:
        raise ValueError(f"chips={chips}; expected at least one chip")
    cells = rows * cols
    pulses = int(round(n * cells * timing.pulses_per_cell))
    per_tile = (rows * timing.erase_s + cells * timing.pulses_per_cell * timing.pulse_s
                + timing.rounds_per_tile * (cells * timing.read_s + 2 * timing.round_trip_s))
    vmms = int(sum(tile_inputs)) * reads
    busiest = math.ceil(n / chips)
    return Estimate(tiles=n, chips=chips, programmings=n, reprogrammings=max(0, n - min(n, chips)),
                    cycles_per_chip=busiest, pulses=pulses, vmms=vmms, program_s=n * per_tile,
                    vmm_s=vmms * timing.vmm_s)
