"""One rank of a two-process time-multiplexed deployment (run under torchrun by
tests/test_multiplex.py): K chips in all, this rank holds chips rank, rank + 2, ..."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from labkit.backend import open_backend
from labkit.deploy.multiplex import ChipPool, Journal, multiplexed
from labkit.nn import ChipTile, analog_layers
from tests.test_multiplex import CHIPS, _net_and_data


def main(out: Path, chips: int) -> None:
    dist.init_process_group("gloo")
    model, ds = _net_and_data()
    cfg = analog_layers(model)[0][1].config
    backends = []

    def chip(k: int) -> ChipTile:
        backends.append(open_backend(f"{CHIPS}{k}").__enter__())
        return ChipTile(backends[-1], cfg)

    pool = ChipPool.distributed(chip, chips)
    journal = Journal()
    with torch.no_grad():
        y = multiplexed(model, pool, journal)(ds.tensors[0])
    torch.save({"outputs": y, "tiles": {"/".join(map(str, k)): torch.as_tensor(v) for k, v in journal._done.items()},
                "programmings": [log.programmings for log in pool.logs]}, out / f"rank{dist.get_rank()}.pt")
    for b in backends:
        b.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
