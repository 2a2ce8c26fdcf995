"""Training and evaluation of the networks (ideal, floating-point), and checkpoints.

:func:`train` is deterministic given ``seed`` (shuffling and dropout draw from a seeded
generator; initialise the model under ``torch.manual_seed`` too for a fully repeatable
run). Checkpoints are a state dict plus plain metadata, written with ``torch.save`` and
read back with ``torch.load(..., weights_only=True)``: loading one never runs code.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["train", "evaluate", "save_checkpoint", "load_checkpoint", "Checkpoint"]

#: ``progress(epoch, epochs, metrics)`` after each epoch; metrics as in the history.
ProgressFn = Callable[[int, int, dict], None]

CHECKPOINT_FORMAT = "labkit-checkpoint"
CHECKPOINT_VERSION = 1


def _check_positive(name: str, value, integer: bool = True) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    if integer:
        ok = ok and int(value) == value
    if not ok:
        kind = "a positive whole number" if integer else "a positive number"
        raise ValueError(f"{name}={value!r}: expected {kind}")


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


def train(model: nn.Module, train_ds: Dataset, test_ds: Dataset | None, epochs: int,
          lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
          progress: ProgressFn | None = None, weight_decay: float = 0.0) -> dict:
    """Train ``model`` with Adam on cross-entropy; the model is updated in place.

    Returns ``{"accuracy": final test accuracy (None without test_ds),
    "train_accuracy": final accuracy on train_ds, "history": [per-epoch dicts with
    epoch, loss, train_accuracy (running, during the epoch), test_accuracy, seconds]}``.
    """
    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    _check_positive("lr", lr, integer=False)
    if len(train_ds) == 0:
        raise ValueError("train: the training set is empty")
    generator = torch.Generator().manual_seed(int(seed))
    loader = DataLoader(train_ds, batch_size=int(batch_size), shuffle=True, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))  # dropout and any other in-model randomness
        for epoch in range(1, int(epochs) + 1):
            t0 = time.monotonic()
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in loader:
                optimizer.zero_grad()
                logits = model(x)
                loss = loss_fn(logits, y)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"train: loss became {float(loss.detach())} in epoch {epoch}; "
                                             f"lower lr={lr}")
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
            entry = {
                "epoch": epoch,
                "loss": loss_sum / seen,
                "train_accuracy": correct / seen,
                "test_accuracy": evaluate(model, test_ds) if test_ds is not None else None,
                "seconds": time.monotonic() - t0,
            }
            history.append(entry)
            if progress is not None:
                progress(epoch, int(epochs), entry)
    model.eval()
    return {
        "accuracy": history[-1]["test_accuracy"],
        "train_accuracy": evaluate(model, train_ds),
        "history": history,
    }


# --------------------------------------------------------------------------- checkpoints

def _check_plain(value, where: str = "meta") -> None:
    """Metadata must be plain (what ``torch.load(weights_only=True)`` accepts and JSON shows)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a str")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise ValueError(f"{where}={value!r}: expected plain data (None, bool, int, float, str, "
                     f"list, tuple, dict), got {type(value).__name__}")


@dataclass
class Checkpoint:
    """A saved network: its registry name, weights and metadata."""

    model_name: str
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def build(self) -> nn.Module:
        """The network rebuilt from :data:`labkit.networks.NETWORKS` with the saved weights.

        Builder arguments are taken from ``meta["network_kwargs"]`` when present.
        """
        from .networks import build

        model = build(self.model_name, **self.meta.get("network_kwargs", {}))
        model.load_state_dict(self.state_dict)
        model.eval()
        return model


def save_checkpoint(path: str | Path, model_name: str, model: nn.Module, meta: dict | None = None) -> Path:
    """Write ``model``'s weights and ``meta`` (plain data only) to ``path``; returns the path."""
    meta = dict(meta or {})
    _check_plain(meta)
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name={model_name!r}: expected a network name")
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": model_name,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a labkit checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a labkit checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')!r}, "
                         f"expected {CHECKPOINT_VERSION}")
    return Checkpoint(payload["model_name"], payload["state_dict"], payload.get("meta", {}))
