"""The compiled adaptive-slot kernel (labkit/model/slots.c) against the pure-torch path."""

from __future__ import annotations

import pytest
import torch

from labkit.model import native
from labkit.model.kernels import ChargeFn

from tests.test_model import make_model, patterns

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler: torch path only")


def _charge_and_grads(m, x, use_native, monkeypatch):
    monkeypatch.setattr(native, "usable", native.usable if use_native else (lambda *a: False))
    params = [m.log_i0, m.eta, m.k_xt]
    for p in params:
        p.grad = None
    xg = x.clone().requires_grad_(True)
    q = m.charge_fc(xg)
    w = torch.linspace(-1.0, 2.0, q.numel(), dtype=q.dtype).reshape(q.shape)
    (q * w).sum().backward()
    return [q.detach(), xg.grad] + [p.grad.clone() for p in params]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n_tiles", [None, 3])
def test_native_equals_torch_path_values_and_gradients(monkeypatch, dtype, tol, n_tiles):
    m = make_model(seed=4, n_tiles=n_tiles, strong=4.0, quantize=False, dtype=dtype)
    shape = (16,) if n_tiles is None else (n_tiles, 16)
    x = patterns(300, shape, seed=5, levels=8).to(dtype)  # zeros, ties, full scale
    x[2:150] = patterns(148, shape, seed=6).to(dtype)  # and distinct widths
    ref = _charge_and_grads(m, x, False, monkeypatch)
    got = _charge_and_grads(m, x, True, monkeypatch)
    names = ["q", "x", "log_i0", "eta", "k_xt"]
    for name, a, b in zip(names, got, ref):
        if name == "x":  # ties: the split of dq/dd among equal widths is arbitrary
            distinct = slice(2, 150)
            a, b = a[distinct], b[distinct]
        scale = b.abs().max().clamp_min(1e-30)
        assert (a - b).abs().max() <= tol * scale, name


def test_native_kernel_is_used_and_falls_back():
    d = torch.rand(1, 4, 16)
    i0 = torch.rand(1, 16, 16)
    assert native.usable(d, i0, i0, i0)
    assert not native.usable(d[..., :6], i0[:, :6], i0[:, :6])  # 6 rows: not a lane multiple
    assert not native.usable(d.double(), i0, i0)  # mixed dtypes


def test_gradcheck_through_native_kernel():
    m = make_model(seed=2, strong=4.0, quantize=False)
    gen = torch.Generator().manual_seed(3)
    x = 0.05 + 0.95 * torch.rand(6, 16, generator=gen, dtype=torch.float64)  # distinct widths, all pulsed
    args = (m._tiled(m.log_i0, 2), m._tiled(m.k_xt, 2), m._tiled(m.eta, 1).unsqueeze(1))
    assert native.usable(x.unsqueeze(0), args[0], args[1])

    def f(xx, log_i0, kxt, eta):
        return ChargeFn.apply(xx, xx > 0, log_i0, kxt, eta, m.T_us, m.C_ff, True, True)

    inputs = [x.unsqueeze(0).requires_grad_(True)] + [a.detach().clone().requires_grad_(True) for a in args]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
