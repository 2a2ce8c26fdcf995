"""Analog neural networks on tiles of time-domain arrays.

- :mod:`labkit.nn.config`: :class:`AnalogConfig` = :class:`OperatingPoint` +
  :class:`WeightMapping` + :class:`TrainingNoise` + physics switches;
- :mod:`labkit.nn.tileparams`: chip parameters of tiles (:class:`TileParams`,
  :class:`ChipSpread`);
- :mod:`labkit.nn.tiles`: the :class:`Tile` seam (:class:`ModelTile`, :class:`ChipTile`)
  and a layer's tiles (:class:`ModelTiles`, :class:`ChipTiles`, :class:`InLoopTiles`);
- :mod:`labkit.nn.layers`: :class:`AnalogLinear`, :class:`AnalogConv2d`;
- :mod:`labkit.nn.conversion`: :func:`convert`, :func:`tile_plan`, :func:`input_scales`,
  :func:`with_tiles` and other whole-network operations.

The tile physics itself lives in :mod:`labkit.model.tile_physics`.
"""

from labkit.nn.config import AnalogConfig, OperatingPoint, TrainingNoise, WeightMapping
from labkit.nn.conversion import (analog_layers, convert, count_tiles, input_scales, resample_tiles, set_noise,
                                  tile_plan, with_tiles)
from labkit.nn.layers import AnalogConv2d, AnalogLayer, AnalogLinear
from labkit.nn.tileparams import ChipSpread, TileParams, tile_sources
from labkit.nn.tiles import ChipTile, ChipTiles, InLoopTiles, LayerTiles, ModelTile, ModelTiles, Tile

__all__ = [
    "AnalogConfig", "OperatingPoint", "WeightMapping", "TrainingNoise", "TileParams", "ChipSpread", "tile_sources",
    "Tile", "ModelTile", "ChipTile", "LayerTiles", "ModelTiles", "ChipTiles", "InLoopTiles",
    "AnalogLayer", "AnalogLinear", "AnalogConv2d",
    "convert", "analog_layers", "tile_plan", "count_tiles", "input_scales", "set_noise", "resample_tiles", "with_tiles",
]
