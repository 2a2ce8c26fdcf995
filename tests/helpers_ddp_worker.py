"""Worker of tests/test_ddp.py, started by ``python -m torch.distributed.run``: trains a tiny
network data-parallel (gloo) and saves this rank's final weights and what it saw."""

import sys

import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset

from labkit.nn.analog import ChipSpread
from labkit.train.networks import mlp_lowres
from labkit.train.training import hardware_aware, init_distributed, train


def main(out: str, mode: str) -> None:
    assert init_distributed(), "expected a distributed run (WORLD_SIZE > 1)"
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(7)  # the same tiny data set on every rank
    x = torch.rand(96, 16, generator=g)
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).long()
    ds = TensorDataset(x, y)
    torch.manual_seed(100 + rank)  # a different initialization per rank: DDP must align them
    net = mlp_lowres(hidden=8)
    if mode == "hw":
        net = hardware_aware(net, ds, ChipSpread())
    init = {k: v.clone() for k, v in net.state_dict().items()}
    steps = []
    res = train(net, ds, None, epochs=3, lr=1e-2, batch_size=8, seed=0, step_hook=lambda: steps.append(1))
    torch.save({"state": net.state_dict(), "init": init, "steps": len(steps), "rank": rank,
                "world": dist.get_world_size(), "loss": [h["loss"] for h in res["history"]]},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
