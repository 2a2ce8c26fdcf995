"""Training and evaluation of the networks.

Three modes:

- **ideal**: :func:`train` on the plain torch network (floating point).
- **hw** (hardware-aware): :func:`hardware_aware` converts a network to analog layers
  (:mod:`labkit.nn`) whose tiles carry chip parameters (from calibrations, or sampled
  from a spread) and sets the input scales from data; :func:`train` then trains it with
  the tile physics in the forward pass (readout noise and quantization on in training).
- **in-loop** (chip in the loop): :func:`train_in_loop` fine-tunes a deployed analog
  network (:mod:`labkit.deploy.deployment`), i.e. the network built on in-loop tiles
  (:class:`labkit.nn.InLoopTiles`): every forward pass is measured on the chip tiles, the
  backward pass goes through the model tiles' Jacobian; the weights are programmed onto
  the chips again after every epoch.

:func:`train` also runs data-parallel in several processes (``torchrun``, gloo on CPU):
when ``torch.distributed`` is initialized each rank trains on its shard
(DistributedSampler) and gradients are averaged (DistributedDataParallel), so every
rank ends with the same weights; :func:`init_distributed` sets the process group up from
the torchrun environment.

:func:`train` is deterministic given ``seed`` (shuffling and dropout draw from a seeded
generator; initialise the model under ``torch.manual_seed`` too for a fully repeatable
run). Checkpoints are in :mod:`labkit.train.checkpoint`.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from labkit.model.memory import keep_freed_memory
from labkit.validate import check_positive

__all__ = ["train", "evaluate", "MODES", "hardware_aware", "train_in_loop", "init_distributed",
           "is_main_process"]

MODES = ("ideal", "hw", "in-loop")

#: ``progress(epoch, epochs, metrics)`` after each epoch; metrics as in the history.
ProgressFn = Callable[[int, int, dict], None]


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, batch_size: int = 1024) -> float:
    """Fraction of ``ds`` (``(x, y)`` pairs) that ``model`` classifies correctly (argmax)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the data set is empty")
    return correct / total


def init_distributed() -> bool:
    """Join the process group described by the torchrun environment (``WORLD_SIZE`` > 1),
    with the gloo backend on CPU. Returns True when running distributed."""
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group("gloo")
    return dist.get_world_size() > 1


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """False on every rank but 0 of a distributed run."""
    import torch.distributed as dist

    return not _distributed() or dist.get_rank() == 0


def train(model: nn.Module, train_ds: Dataset, test_ds: Dataset | None, epochs: int,
          lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
          progress: ProgressFn | None = None, weight_decay: float = 0.0,
          step_hook: Callable[[], None] | None = None, epoch_hook: Callable[[int], None] | None = None,
          final_train_accuracy: bool = True, lr_schedule: str | None = None) -> dict:
    """Train ``model`` with Adam on cross-entropy; the model is updated in place.

    Works for plain and analog networks alike. In a distributed run (see
    :func:`init_distributed`) each rank trains on its shard of ``train_ds`` with
    ``batch_size`` examples per rank and gradients averaged across ranks.
    ``step_hook()`` runs after every optimizer step, ``epoch_hook(epoch)`` after every
    epoch (before the test accuracy is taken). ``lr_schedule="cosine"`` anneals the
    learning rate to zero over the run (steadier final weights for fine-tuning). The
    process keeps freed memory for reuse from then on
    (:func:`labkit.model.keep_freed_memory`: no page faults for each step's large
    temporaries).

    Returns ``{"accuracy": final test accuracy (None without test_ds),
    "train_accuracy": final accuracy on train_ds, "history": [per-epoch dicts with
    epoch, loss, train_accuracy (running, during the epoch), test_accuracy, seconds]}``.
    """
    check_positive("epochs", epochs)
    check_positive("batch_size", batch_size)
    check_positive("lr", lr, integer=False)
    if len(train_ds) == 0:
        raise ValueError("train: the training set is empty")
    keep_freed_memory()  # the same large temporaries every step: no page faults
    generator = torch.Generator().manual_seed(int(seed))
    distributed = _distributed()
    net = model
    sampler = None
    if distributed:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, shuffle=True, seed=int(seed), drop_last=False)
        loader = DataLoader(train_ds, batch_size=int(batch_size), sampler=sampler)
        net = DistributedDataParallel(model)
    else:
        loader = DataLoader(train_ds, batch_size=int(batch_size), shuffle=True, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if lr_schedule not in (None, "cosine"):
        raise ValueError(f"lr_schedule={lr_schedule!r}: expected None or 'cosine'")
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, int(epochs) * max(len(loader), 1))
                 if lr_schedule == "cosine" else None)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))  # dropout, readout noise and any other in-model randomness
        for epoch in range(1, int(epochs) + 1):
            t0 = time.monotonic()
            if sampler is not None:
                sampler.set_epoch(epoch)
            net.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in loader:
                optimizer.zero_grad()
                logits = net(x)
                loss = loss_fn(logits, y)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"train: loss became {float(loss.detach())} in epoch {epoch}; "
                                             f"lower lr={lr}")
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if step_hook is not None:
                    step_hook()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
            if epoch_hook is not None:
                epoch_hook(epoch)
            entry = {
                "epoch": epoch,
                "loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "test_accuracy": evaluate(model, test_ds) if test_ds is not None else None,
                "seconds": time.monotonic() - t0,
            }
            history.append(entry)
            if progress is not None and is_main_process():
                progress(epoch, int(epochs), entry)
    model.eval()
    return {
        "accuracy": history[-1]["test_accuracy"],
        "train_accuracy": evaluate(model, train_ds) if final_train_accuracy else history[-1]["train_accuracy"],
        "history": history,
    }


# --------------------------------------------------------------------------- hardware-aware

def hardware_aware(model: nn.Module, train_ds: Dataset, tiles=None, config=None, percentile: float = 99.9,
                   scale_examples: int = 2048, seed: int = 0) -> nn.Module:
    """An analog copy of ``model`` for hardware-aware training or deployment.

    ``tiles``: chip parameters of the tiles (see :func:`labkit.nn.convert`: per-tile
    calibrations in tile-plan order, one for all, a ChipSpread, or None for nominal).
    Input scales: the ``percentile`` of each layer's input activations over
    ``scale_examples`` training examples (seeded).
    """
    from labkit.nn import AnalogConfig, analog_layers, convert, input_scales

    config = config or AnalogConfig()
    if analog_layers(model):
        return model
    g = torch.Generator().manual_seed(int(seed))
    n = len(train_ds)
    idx = torch.randperm(n, generator=g)[: min(n, int(scale_examples))]
    x = torch.stack([train_ds[int(i)][0] for i in idx])
    scales = input_scales(model, x, percentile)
    return convert(model, tiles, config, scales=scales)


# --------------------------------------------------------------------------- chip in the loop

def train_in_loop(deployment, train_ds: Dataset, test_ds: Dataset | None, epochs: int, lr: float = 1e-4,
                  batch_size: int = 64, seed: int = 0, progress: ProgressFn | None = None,
                  reprogram: bool = True, program=None, reads: int = 1, update: str = "all",
                  lr_schedule: str | None = None) -> dict:
    """Chip-in-the-loop fine-tuning of a deployed analog network (a
    :class:`labkit.deploy.deployment.Deployment`): forward passes measured on the chips, gradients
    through the model's Jacobian (the tile physics at the measured operating point).

    ``update``: ``"all"`` trains every parameter and, after every epoch, programs the
    updated weights onto the chips again (``reprogram``); ``"digital"`` keeps the
    programmed weights and trains only what is applied digitally (biases): no
    reprogramming, so no new programming error, and every measured forward is exact for
    the state being trained. ``reads``: VMMs averaged per input while training (readout
    noise / sqrt(reads), reads times the chip time); ``lr_schedule`` as in :func:`train`
    (``"cosine"`` settles the last noisy steps). The test accuracy in the history is
    measured on the chips (at the deployment's own reads).

    Returns the dict of :func:`train` with ``accuracy`` measured on the chips and
    ``vmms``, the chip VMMs the fine-tuning ran (test evaluation excluded).
    """
    from labkit.nn import analog_layers

    if update not in ("all", "digital"):
        raise ValueError(f"update={update!r}; expected 'all' or 'digital'")
    if not isinstance(reads, int) or reads < 1:
        raise ValueError(f"reads={reads!r}; expected a whole number of VMMs per input >= 1")

    def epoch_hook(epoch: int) -> None:
        if reprogram and update == "all":
            deployment.reprogram(program)

    frozen = []
    if update == "digital":
        for _, layer in analog_layers(deployment.model):
            if layer.weight.requires_grad:
                layer.weight.requires_grad_(False)
                frozen.append(layer.weight)
    saved_reads, vmms = deployment.reads, deployment.vmm_count
    deployment.reads = reads
    try:
        result = train(deployment.in_loop, train_ds, None, epochs, lr=lr, batch_size=batch_size, seed=seed,
                       progress=None, epoch_hook=epoch_hook, final_train_accuracy=False, lr_schedule=lr_schedule)
    finally:
        deployment.reads = saved_reads
        for w in frozen:
            w.requires_grad_(True)
    result["vmms"] = deployment.vmm_count - vmms
    deployment.model.eval()
    accuracy = deployment.evaluate(test_ds) if test_ds is not None else None
    for h in result["history"]:
        h["test_accuracy"] = None
    if result["history"]:
        result["history"][-1]["test_accuracy"] = accuracy
    result["accuracy"] = accuracy
    result["train_accuracy"] = result["history"][-1]["train_accuracy"] if result["history"] else None
    if progress is not None:
        for h in result["history"]:
            progress(h["epoch"], int(epochs), h)
    return result
