"""The C kernel of the second-order pulse widths (``tiles_native.widths``) against the
torch definition (``second_order.effective_inputs`` and the layers' edge rule), and the
layers' second-order path with the kernels against their torch path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from labkit.model import second_order as so
from labkit.model import tile_physics, tiles_native
from labkit.nn import AnalogConfig, AnalogLinear, TileParams

pytestmark = pytest.mark.skipif(not tiles_native.available(), reason="no C compiler: the torch path only")


def reference(xt, loss, beta, cur):
    """The torch path: sort-based effective widths, then the edge rule."""
    b = None if beta is None else beta.view(-1, 1, 1)
    xe = so.effective_inputs(xt, loss.unsqueeze(-1), b, None if beta is None else cur.unsqueeze(-1), dim=1)
    return torch.where((xe <= 0) & (so.edge_fraction(xt, loss.unsqueeze(-1)) >= 0.5), torch.full_like(xe, 1e-6), xe)


def inputs(rt, rows, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.floor(torch.rand(rt, rows, n, generator=g) * 256) / 256
    x = x * (torch.rand(rt, rows, n, generator=g) > 0.4)
    x[:, :, :40] = 0.5  # ties between rows
    x[:, 1, 40:80] = 3 / 256  # pulses shorter than the width loss
    x[:, -1] = 0.0  # a padded row
    x[:, 5, :128] = 0.0  # a row silent in the first block of samples only
    x[:, 2:, 128:256] = 0.0  # a block with two rows left
    x[:, :, 256:384] = 0.0  # a block with none
    return x, g


@pytest.mark.parametrize("rows, beta_na, samples", [(16, 7e-5, 1000), (16, 4e-4, 300), (16, -2e-5, 257),
                                                    (9, 7e-5, 130), (16, 0.0, 200)])
def test_widths_kernel_matches_the_sorted_definition(rows, beta_na, samples):
    rt = 3
    x, g = inputs(rt, rows, samples)
    loss = 0.005 + 0.01 * torch.rand(rt, rows, generator=g)  # units of T (~ 30-60 ns of a 5 us pulse)
    cur = 20.0 + 100.0 * torch.rand(rt, rows, generator=g)  # nA: |beta| sum(cur) from 0.03 to 0.6
    beta = None if beta_na == 0 else torch.full((rt,), beta_na) * (1 + 0.1 * torch.rand(rt, generator=g))
    got = tiles_native.widths(x, loss, beta, cur)
    want = reference(x, loss, beta, cur)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), float((got - want).abs().max())
    assert float((got - x).abs().max()) > 1e-3  # the terms change the widths


def test_layer_second_order_path_with_the_widths_kernel_matches_the_sorted_definition(monkeypatch):
    rng = np.random.default_rng(3)
    tp = [dataclasses.replace(TileParams.nominal(), mix=0.02 * (1 + 0.1 * rng.standard_normal(15)),
                              width_loss_s=30e-9 * (1 + 0.1 * rng.standard_normal(16)), source_per_a=7e4)
          for _ in range(3 * 2)]
    layer = AnalogLinear(40, 12, config=AnalogConfig(), tiles=tp).eval()
    x = torch.floor(torch.rand(300, 40, generator=torch.Generator().manual_seed(1)) * 256) / 256
    out = []
    for kernel in (tiles_native.widths, lambda xt, loss, beta, cur: reference(xt, loss.view(xt.shape[:2]),
                                                                          None if beta is None else beta.view(-1),
                                                                          cur.view(xt.shape[:2]))):
        monkeypatch.setattr(tiles_native, "widths", kernel)
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.pow(2).sum().backward()
        out.append((y.detach(), xi.grad.clone(), layer.weight.grad.clone()))
    assert tiles_native.widths_apply(torch.zeros(3, 16, 300))  # the kernel ran in the layer
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())), float((a - b).abs().max())
