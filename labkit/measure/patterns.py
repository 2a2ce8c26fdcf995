"""Input patterns of the VMM datasets, on the input pulse-width grid.

Inputs ``x`` in [0, 1] are fractions of the integration window; a backend applies them
on its input clock grid ``k / 2**input_bits`` (:func:`quantize_inputs`), so every
generator here returns values on that grid and the stored ``x`` is the applied ``x``.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import numpy as np

from labkit.errors import UsageError
from labkit.validate import check_fraction, check_int

__all__ = ["input_steps", "quantize_inputs", "random_patterns", "onehot_patterns", "activation_like_patterns",
           "network_activations"]


def input_steps(input_bits: int) -> int:
    """Input clock steps per integration window: ``x`` is a multiple of ``1 / steps``."""
    return 2 ** int(input_bits)


def quantize_inputs(x, input_bits: int) -> np.ndarray:
    """``x`` rounded to the input pulse-width grid ``k / 2**input_bits``, clipped to [0, 1]."""
    steps = input_steps(input_bits)
    return np.clip(np.round(np.asarray(x, dtype=float) * steps) / steps, 0.0, 1.0)


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0xC4A2])


def random_patterns(n: int, rows: int = 16, zero_fraction: float = 0.4, input_bits: int = 8,
                    seed: int = 0) -> np.ndarray:
    """``n`` random input vectors on the input grid: uniform in (0, 1], each input zero
    with probability ``zero_fraction`` (so edges and durations separate in a fit)."""
    n = check_int("patterns", n, 1)
    check_fraction("zero_fraction", zero_fraction)
    rng = _rng(seed)
    x = quantize_inputs(rng.random((n, rows)), input_bits)
    x[rng.random((n, rows)) < zero_fraction] = 0.0
    return x


def onehot_patterns(rows: int = 16, levels: Sequence[float] = (1.0,)) -> tuple[np.ndarray, np.ndarray]:
    """One row active at a time, at each level: ``x`` (rows*levels, rows) and its row index."""
    lv = np.asarray(levels, dtype=float).ravel()
    if lv.size == 0 or np.any(~np.isfinite(lv)) or lv.min() <= 0 or lv.max() > 1:
        raise UsageError(f"one-hot levels {lv.tolist()}; expected values in (0, 1]")
    row = np.tile(np.arange(rows), len(lv))
    x = np.zeros((len(row), rows))
    x[np.arange(len(row)), row] = np.repeat(lv, rows)
    return x, row


def activation_like_patterns(n: int, rows: int = 16, zero_fraction: float = 0.5, input_bits: int = 8,
                             seed: int = 0) -> np.ndarray:
    """``n`` activation-like input vectors on the input grid: ReLU outputs of Gaussian
    pre-activations (a ``zero_fraction`` of exact zeros, a half-normal skew toward small
    values), each vector with its own scale (log-normal around 0.3) and a shared
    component that correlates its inputs, clipped to [0, 1]."""
    n = check_int("activation patterns", n, 1)
    zero_fraction = check_fraction("zero_fraction", zero_fraction, closed=False)
    rng = np.random.default_rng([int(seed), 0xAC7])
    shared = rng.standard_normal((n, 1))
    z = np.sqrt(0.8) * rng.standard_normal((n, rows)) + np.sqrt(0.2) * shared
    cut = NormalDist().inv_cdf(max(zero_fraction, 1e-9))
    scale = np.exp(np.log(0.3) + 0.5 * rng.standard_normal((n, 1)))
    x = np.clip(np.maximum(z - cut, 0.0) * scale, 0.0, 1.0)
    return quantize_inputs(x, input_bits)


def network_activations(n: int = 1024, seed: int = 0) -> np.ndarray:
    """Real activations of a 16-input network layer: 4x4 low-resolution digit images
    (the inputs of the first layer of ``networks.mlp_lowres``; the same images as
    ``datasets.lowres_digits(size=4)``), ``(n, 16)`` in [0, 1], shuffled with ``seed``.

    Reads scikit-learn's bundled 8x8 digits file directly (no torch or scikit-learn
    import: seconds saved on every characterization) and 2x2 area-averages it."""
    n = check_int("activation patterns", n, 1)
    x = _bundled_digits_4x4()
    if x is None:  # an unusual install: take the long way
        from labkit.train.datasets import lowres_digits

        split = lowres_digits(size=4, seed=seed)
        x = np.concatenate([split.train.tensors[0].numpy(), split.test.tensors[0].numpy()]).astype(float)
    idx = _rng(seed).permutation(len(x))
    return x[np.resize(idx, n)]


def _bundled_digits_4x4() -> np.ndarray | None:
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",")
    except (OSError, ValueError):
        return None
    if data.ndim != 2 or data.shape[1] != 65:
        return None
    img = data[:, :64].reshape(-1, 4, 2, 4, 2) / 16.0
    return np.clip(img.mean(axis=(2, 4)).reshape(-1, 16), 0.0, 1.0)
