"""Conversion of torch networks to analog networks, and what acts on all their layers.

:func:`convert` replaces every ``nn.Linear`` / ``nn.Conv2d`` by its analog layer;
:func:`tile_plan` / :func:`count_tiles` give the tiles (and chips) a network needs, in
the order they are assigned; :func:`input_scales` sets each layer's input scale from
data; :func:`set_noise` and :func:`resample_tiles` change the training noise and the tile
parameters of every layer; :func:`with_tiles` builds the same network (parameters
shared) on other tiles, such as chips (:mod:`labkit.nn.tiles`).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from labkit.nn.config import AnalogConfig
from labkit.nn.layers import AnalogConv2d, AnalogLayer, AnalogLinear
from labkit.nn.tileparams import ChipSpread
from labkit.nn.tiles import LayerTiles

__all__ = ["convert", "analog_layers", "tile_plan", "count_tiles", "input_scales", "set_noise", "resample_tiles",
           "with_tiles"]


def count_tiles(module: nn.Module, config: AnalogConfig = AnalogConfig()) -> int:
    """Tiles a Linear / Conv2d (or an analog layer) needs."""
    R, P = config.operating.rows, config.operating.outputs_per_tile
    if isinstance(module, AnalogLayer):
        return module.n_tiles
    if isinstance(module, nn.Linear):
        k, n = module.in_features, module.out_features
    elif isinstance(module, nn.Conv2d):
        k, n = module.in_channels * module.kernel_size[0] * module.kernel_size[1], module.out_channels
    else:
        raise ValueError(f"{type(module).__name__} is not a Linear or Conv2d layer")
    return -(-k // R) * -(-n // P)


def _convertible(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d, AnalogLayer)) and name]


def tile_plan(model: nn.Module, config: AnalogConfig = AnalogConfig()) -> list[tuple[str, int]]:
    """``(layer name, tiles)`` in network order: the order tiles (and chips) are assigned."""
    return [(name, count_tiles(m, config)) for name, m in _convertible(model)]


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def convert(model: nn.Module, tiles=None, config: AnalogConfig = AnalogConfig(),
            scales: dict[str, float] | None = None, fuse_relu: bool = True) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` / ``nn.Conv2d`` replaced by its analog
    counterpart (weights and biases copied).

    ``tiles``: the chip parameters of the tiles, in :func:`tile_plan` order: None
    (nominal datasheet values), a :class:`ChipSpread` (each tile sampled with its own
    seed), one :class:`TileParams` / ArrayModel for every tile, or a sequence with one
    per tile in network order. ``scales``: input scale per layer name (from
    :func:`input_scales`). ``fuse_relu``: a ReLU that directly follows a layer inside an
    ``nn.Sequential`` becomes that layer's time-domain ReLU (replaced by ``nn.Identity``
    so parameter names stay those of the original model).
    """
    new = copy.deepcopy(model)
    plan = _convertible(new)
    total = sum(count_tiles(m, config) for _, m in plan)
    if isinstance(tiles, (list, tuple)) and len(tiles) != total:
        raise ValueError(f"{len(tiles)} tiles given; the network needs {total} ({tile_plan(model, config)})")
    if isinstance(tiles, ChipSpread):
        spread = tiles
        tiles = iter([spread.sample(config.operating, seed=i) for i in range(total)])
    elif isinstance(tiles, (list, tuple)):
        tiles = iter(tiles)
    for name, m in plan:
        if isinstance(m, AnalogLayer):
            continue
        relu = False
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        if fuse_relu and isinstance(parent, nn.Sequential):
            keys = list(parent._modules)
            i = keys.index(child)
            if i + 1 < len(keys) and isinstance(parent._modules[keys[i + 1]], nn.ReLU):
                relu = True
                parent._modules[keys[i + 1]] = nn.Identity()
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise ValueError(f"layer {name}: only groups=1 convolutions with numeric zero padding convert")
            a = AnalogConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                             m.bias is not None, relu=relu, config=config, tiles=tiles)
        else:
            a = AnalogLinear(m.in_features, m.out_features, m.bias is not None, relu=relu, config=config,
                             tiles=tiles)
        with torch.no_grad():
            a.weight.copy_(m.weight)
            if m.bias is not None:
                a.bias.copy_(m.bias)
        if scales and name in scales:
            a.input_scale.fill_(float(scales[name]))
        _set_module(new, name, a)
    return new


def analog_layers(model: nn.Module) -> list[tuple[str, AnalogLayer]]:
    """``(name, layer)`` of every analog layer, in network (tile) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AnalogLayer)]


@torch.no_grad()
def input_scales(model: nn.Module, x: torch.Tensor, percentile: float = 99.9,
                 batch_size: int = 256) -> dict[str, float]:
    """Input scale per Linear / Conv2d (or analog) layer of ``model``: the ``percentile``
    of the absolute activations entering it over the examples ``x`` (a tensor batch)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile}; expected in (0, 100]")
    layers = _convertible(model)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n, _ in layers}
    hooks = []
    for name, m in layers:
        def hook(mod, inp, out, name=name):
            a = inp[0].detach().abs().flatten()
            if a.numel() > 200_000:
                a = a[torch.randint(0, a.numel(), (200_000,))]
            seen[name].append(a)
        hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    out = {}
    for name, parts in seen.items():
        a = torch.cat(parts).float()
        v = float(torch.quantile(a[:1_000_000], percentile / 100.0)) if a.numel() else 1.0
        out[name] = v if v > 0 else 1.0
    return out


def set_noise(model: nn.Module, noise_std_s: float, relative: float | None = None) -> None:
    """Change the training readout noise (floor in s; the part relative to the output,
    unchanged when None) of every analog layer of ``model``."""
    change = {"noise_std_s": float(noise_std_s)}
    if relative is not None:
        change["noise_relative"] = float(relative)
    for _, m in analog_layers(model):
        m.config = m.config.with_noise(**change)


def resample_tiles(model: nn.Module, spread: ChipSpread, seed: int) -> None:
    """Give every tile of ``model`` new parameters drawn from ``spread`` (hardware-aware
    training for chips that are not calibrated: a new draw per epoch makes the network
    robust to the chip-to-chip spread instead of fitting one draw)."""
    i = 0
    for _, m in analog_layers(model):
        m.set_tiles([spread.sample(m.config.operating, seed=int(seed) * 1_000_003 + i + k) for k in range(m.n_tiles)])
        i += m.n_tiles


def with_tiles(model: nn.Module, tiles: Callable[[str, AnalogLayer], LayerTiles]) -> nn.Module:
    """The analog network ``model`` built on other tiles: a copy whose analog layer
    ``name`` computes through ``tiles(name, layer)``. Parameters and buffers are shared
    with ``model`` (training the copy trains ``model``)."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    new = copy.deepcopy(model, memo)
    for name, layer in analog_layers(new):
        layer.tiles = tiles(name, layer)
    return new
