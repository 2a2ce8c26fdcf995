"""Checkpoints: a network's registry name, its state dict and plain metadata.

Written with ``torch.save``; read back with ``torch.load(..., weights_only=True)``, so
loading one never runs code. :func:`load_checkpoint` checks the file before it is
trusted: a regular file of at most :data:`MAX_CHECKPOINT_BYTES`, the labkit format and
version, a known network name, plain metadata (nesting bounded), tensors of real or
integer dtype with finite values, and exactly the keys and shapes of the network it
names. Every refusal is one :class:`~labkit.files.FileFormatError` line naming the file,
the field and what was expected.
"""

from __future__ import annotations

import math
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from labkit.files import MAX_DEPTH, FileFormatError

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "check_plain", "CHECKPOINT_FORMAT",
           "CHECKPOINT_VERSION", "MAX_CHECKPOINT_BYTES"]

CHECKPOINT_FORMAT = "labkit-checkpoint"
CHECKPOINT_VERSION = 1
MAX_CHECKPOINT_BYTES = 1 << 30  # 1 GiB: far above the registry's networks (kB to MB)


def check_plain(value, where: str = "meta", depth: int = 0) -> None:
    """Metadata must be plain (what ``torch.load(weights_only=True)`` accepts and JSON
    shows), nested at most :data:`~labkit.files.MAX_DEPTH` levels."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested over {MAX_DEPTH} levels; expected plain shallow data")
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a str")
            check_plain(v, f"{where}[{k!r}]", depth + 1)
        return
    raise ValueError(f"{where}={value!r}: expected plain data (None, bool, int, float, str, "
                     f"list, tuple, dict), got {type(value).__name__}")


@dataclass
class Checkpoint:
    """A saved network: its registry name, weights and metadata (``meta["analog"]``
    holds the analog configuration and tile chips of an analog network)."""

    model_name: str
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def _network(self) -> nn.Module:
        from labkit.train.networks import build

        model = build(self.model_name, **self.meta.get("network_kwargs", {}))
        analog = self.meta.get("analog")
        if analog:
            from labkit.nn.analog import AnalogConfig, analog_layers, convert

            model = convert(model, None, AnalogConfig.from_dict(analog.get("config", {})))
            chips = analog.get("tile_chips") or []
            start = 0
            for _, layer in analog_layers(model):
                layer.tile_chips = list(chips[start:start + layer.n_tiles]) or [""] * layer.n_tiles
                start += layer.n_tiles
        return model

    def build(self) -> nn.Module:
        """The network rebuilt from :data:`labkit.train.networks.NETWORKS` with the saved weights.

        Builder arguments are taken from ``meta["network_kwargs"]`` when present.
        """
        model = self._network()
        model.load_state_dict(self.state_dict)
        model.eval()
        return model

    @property
    def mode(self) -> str:
        """Training mode recorded in the metadata (``ideal`` when absent)."""
        return str(self.meta.get("mode", "ideal"))


def save_checkpoint(path: str | Path, model_name: str, model: nn.Module, meta: dict | None = None) -> Path:
    """Write ``model``'s weights and ``meta`` (plain data only) to ``path``; returns the path."""
    meta = dict(meta or {})
    from labkit.nn.analog import analog_layers

    layers = analog_layers(model)
    if layers and "analog" not in meta:
        meta["analog"] = {"config": layers[0][1].config.to_dict(),
                          "tile_chips": [c for _, m in layers for c in m.tile_chips]}
    check_plain(meta)
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


def _one_line(exc: BaseException) -> str:
    """torch.load's multi-line messages as their most telling line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    pick = next((ln for ln in lines if ln.startswith(("WeightsUnpickler error", "Unsupported"))), None)
    text = pick or (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"[:300]


def _fail(path: Path, detail: str) -> FileFormatError:
    return FileFormatError(f"checkpoint {path}: {detail}")


def _check_tensors(path: Path, state) -> None:
    if not isinstance(state, dict) or not state:
        raise _fail(path, "state_dict: expected a non-empty dict of tensors")
    for key, t in state.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor):
            raise _fail(path, f"state_dict[{key!r}]: expected a tensor under a str key, "
                              f"got {type(t).__name__}")
        if t.is_complex() or t.dtype in (torch.bool,) or t.is_quantized or t.layout != torch.strided:
            raise _fail(path, f"state_dict[{key!r}]: dtype {t.dtype}; expected real or integer")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _fail(path, f"state_dict[{key!r}]: holds NaN or infinite values; expected finite numbers")


def _check_matches(path: Path, ck: Checkpoint) -> None:
    """The keys and shapes of ``ck.state_dict`` are exactly those of the network it names."""
    try:
        want = {k: tuple(v.shape) for k, v in ck._network().state_dict().items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _fail(path, f"meta: cannot rebuild network {ck.model_name!r} from it ({exc})".splitlines()[0]) from None
    got = {k: tuple(v.shape) for k, v in ck.state_dict.items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
        raise _fail(path, f"state_dict: missing {', '.join(missing[:5])}; expected the keys of {ck.model_name!r}")
    if extra:
        raise _fail(path, f"state_dict: unexpected {', '.join(extra[:5])}; expected the keys of {ck.model_name!r}")
    for k, shape in want.items():
        if got[k] != shape:
            raise _fail(path, f"state_dict[{k!r}]: shape {got[k]}; expected {shape}")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    from labkit.train.networks import NETWORKS

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "is not a regular file; expected a checkpoint file")
    if st.st_size > MAX_CHECKPOINT_BYTES:
        raise _fail(path, f"is {st.st_size} bytes; expected at most {MAX_CHECKPOINT_BYTES}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise _fail(path, f"not a labkit checkpoint ({_one_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise _fail(path, "not a labkit checkpoint (no 'format': 'labkit-checkpoint')")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise _fail(path, f"checkpoint version {payload.get('version')!r}, expected {CHECKPOINT_VERSION}")
    name = payload.get("model_name")
    if not isinstance(name, str) or name not in NETWORKS:
        raise _fail(path, f"model_name {name!r}; expected one of {', '.join(NETWORKS)}")
    meta = payload.get("meta", {})
    if not isinstance(meta, dict):
        raise _fail(path, f"meta: expected a dict, got {type(meta).__name__}")
    try:
        check_plain(meta)
    except ValueError as exc:
        raise _fail(path, str(exc)) from None
    kwargs = meta.get("network_kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(v, (int, float, bool, str)) and
                                               (not isinstance(v, float) or math.isfinite(v))
                                               for v in kwargs.values()):
        raise _fail(path, "meta['network_kwargs']: expected a dict of plain numbers and strings")
    _check_tensors(path, payload.get("state_dict"))
    ck = Checkpoint(name, payload["state_dict"], meta)
    _check_matches(path, ck)
    return ck
