"""The fused layer path (tile_physics.FusedLayer: convolution patches read in place from
the input map, tiles, digital gains, bias and ReLU in the C kernels) against its
definition, the same layer composed of the patches, TileBmm and the torch epilogue."""

from __future__ import annotations

import pytest
import torch

from labkit.model import tile_physics, tiles_native
from labkit.model.tile_physics import TileBmm
from labkit.nn import AnalogConv2d, AnalogLinear, ChipSpread

pytestmark = pytest.mark.skipif(not tiles_native.available(), reason="no C compiler: the torch path is the only one")


def _run(layer, x, fused: bool, seed: int = 3):
    """Outputs and the gradients of the input, weight and bias, with the fused path on or off."""
    tile_physics.NATIVE["fused"] = fused
    try:
        layer.zero_grad()
        xg = x.clone().requires_grad_(True)
        tile_physics.gaussian(1 << 16, torch.float32, "cpu")  # the noise bank exists (made from the generator)
        torch.manual_seed(seed)  # the same readout-noise draws on both paths
        out = layer(xg)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * g).sum().backward()
    finally:
        tile_physics.NATIVE["fused"] = True
    bias = None if layer.bias is None else layer.bias.grad.clone()
    return out.detach(), xg.grad.clone(), layer.weight.grad.clone(), bias


def _assert_same(a, b):
    for u, v in zip(a, b):
        if v is None:
            assert u is None
            continue
        assert u.shape == v.shape and u.is_contiguous()
        assert torch.allclose(u, v, rtol=1e-5, atol=1e-6 * float(v.abs().max()) + 1e-12), float((u - v).abs().max())


CONVS = [dict(cin=1, cout=6, k=5, stride=1, pad=2, dil=1, hw=(28, 28)),   # LeNet-5's first layer: 25 of 32 rows
         dict(cin=6, cout=16, k=5, stride=1, pad=0, dil=1, hw=(14, 14)),  # its second: 150 of 160 rows
         dict(cin=3, cout=5, k=3, stride=2, pad=1, dil=1, hw=(11, 9)),
         dict(cin=2, cout=9, k=3, stride=1, pad=0, dil=2, hw=(12, 10)),
         dict(cin=4, cout=3, k=2, stride=3, pad=3, dil=1, hw=(7, 13))]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("case", CONVS, ids=lambda c: f"{c['cin']}x{c['k']}s{c['stride']}p{c['pad']}d{c['dil']}")
@pytest.mark.parametrize("relu", [True, False])
def test_convolution_reads_its_patches_in_place_and_matches_the_composed_layer(case, relu, mode):
    torch.manual_seed(0)
    conv = AnalogConv2d(case["cin"], case["cout"], case["k"], case["stride"], case["pad"], case["dil"], relu=relu,
                        tiles=ChipSpread())
    getattr(conv, mode)()
    x = torch.rand(5, case["cin"], *case["hw"]) * (torch.rand(5, case["cin"], *case["hw"]) > 0.3)
    fused, composed = _run(conv, x, True), _run(conv, x, False)
    _assert_same(fused, composed)
    assert fused[1].abs().sum() > 0 and fused[2].abs().sum() > 0  # gradients reach the input and the weights


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("shape,relu,bias", [((40, 20), True, True), ((120, 84), False, True), ((7, 3), True, False),
                                             ((16, 8), False, False)])
def test_linear_layer_matches_the_composed_layer(shape, relu, bias, mode):
    torch.manual_seed(0)
    layer = AnalogLinear(*shape, bias=bias, relu=relu, tiles=ChipSpread())
    getattr(layer, mode)()
    x = torch.rand(37, shape[0])
    _assert_same(_run(layer, x, True), _run(layer, x, False))


def test_the_fused_path_is_what_a_float32_model_layer_runs_and_not_a_second_order_or_split_one():
    layer = AnalogLinear(20, 8, tiles=ChipSpread())
    x = torch.rand(4, 20)
    calls = []
    real = tile_physics.FusedLayer.forward

    def spy(ctx, *args):
        calls.append(args[0].shape)
        return real(ctx, *args)

    tile_physics.FusedLayer.forward = staticmethod(spy)
    try:
        layer(x)
        assert len(calls) == 1
        layer(x - 0.5)  # signed inputs: two VMMs subtracted digitally, the composed path
        assert len(calls) == 1
        layer.double()(x.double())  # float64: the torch path
        assert len(calls) == 1
    finally:
        tile_physics.FusedLayer.forward = staticmethod(real)


def test_gradient_of_the_map_is_the_adjoint_of_the_patches_across_threads():
    """Threads take whole images, so the input gradient added into the map is the same
    with one or four threads."""
    torch.manual_seed(0)
    conv = AnalogConv2d(3, 4, 3, padding=1, tiles=ChipSpread()).eval()
    x = torch.rand(64, 3, 16, 16)  # 16,384 samples per tile: 4 threads' worth
    unit = tiles_native.Patches(x.shape, (3, 3, 1, 1, 1, 1, 1, 1, 16, 16)).unit
    threads = torch.get_num_threads()
    runs = []
    for n in (1, 4):
        torch.set_num_threads(n)
        try:
            assert len(tiles_native._chunks(64 * 256, unit)) == n
            runs.append(_run(conv, x, True))
        finally:
            torch.set_num_threads(threads)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def _droop_case(strong: bool):
    g = torch.Generator().manual_seed(7)
    rt, R, n, N = 3, 16, 8, 400
    x = torch.rand(rt, R, N, generator=g) * (torch.rand(rt, R, N, generator=g) > 0.2)
    i0t = (1.0 + 10.0 * torch.rand(rt, R, 2 * n, generator=g)) * (4.0 if strong else 1.0)
    kx = 0.5 * torch.randn(rt, R, 2 * n, generator=g)
    e = 1e-3 * (1.0 + torch.rand(rt, 1, 2 * n, generator=g))
    t0c = 900.0 + 20.0 * torch.rand(rt, 1, 2 * n, generator=g)
    gc = 1.0 + 0.1 * torch.rand(rt, 1, 2 * n, generator=g)
    return x, i0t, kx, e, t0c, gc


@pytest.mark.parametrize("strong", [False, True], ids=["chip droop (series)", "droop over 40 % (log)"])
def test_the_kernels_log_holds_on_both_sides_of_its_series_range(strong):
    case = _droop_case(strong)
    u = (case[3].transpose(1, 2) * torch.bmm(case[1].transpose(1, 2), case[0])).max()
    assert (float(u) > 0.5) == strong  # the case is on the side of 0.414 it claims
    opts = (True, False, (0.0, 0.0), 1023.0, 2, True, True)
    ys = {}
    for native, dtype in ((True, torch.float32), (False, torch.float32), (False, torch.float64)):
        tile_physics.NATIVE["on"] = native
        try:
            with torch.no_grad():
                ys[native, dtype] = TileBmm.apply(*(c.to(dtype) for c in case), opts).double()
        finally:
            tile_physics.NATIVE["on"] = True
    ref = ys[False, torch.float64]
    err_c = float((ys[True, torch.float32] - ref).abs().max())
    err_torch = float((ys[False, torch.float32] - ref).abs().max())
    assert err_c < 1e-5 * float(ref.abs().max()) and err_c <= 1.5 * err_torch  # as exact as float32 torch


def _second_order_tiles(n: int, beta: float = 7e4):
    """Chip-sized second-order terms (as a calibration of the silicon chips gives):
    coupling 2 % per column pair, 30 ns of pulse width lost per row, source line."""
    import dataclasses

    import numpy as np

    rng = np.random.default_rng(5)
    spread = ChipSpread()
    return [dataclasses.replace(spread.sample(seed=i), mix=0.02 * (1 + 0.1 * rng.standard_normal(15)),
                                width_loss_s=30e-9 * (1 + 0.1 * rng.standard_normal(16)),
                                source_per_a=beta * (1 + 0.1 * rng.standard_normal())) for i in range(n)]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("beta", [7e4, 0.0], ids=["source line", "no source line"])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_second_order_terms_run_fused_and_match_the_composed_layer(kind, beta, mode):
    torch.manual_seed(0)
    if kind == "conv":
        layer = AnalogConv2d(6, 16, 5, tiles=_second_order_tiles(20, beta))
        x = torch.rand(3, 6, 14, 14) * (torch.rand(3, 6, 14, 14) > 0.3)
    else:
        layer = AnalogLinear(120, 84, relu=True, tiles=_second_order_tiles(88, beta))
        x = torch.rand(29, 120) * (torch.rand(29, 120) > 0.3)
        x[:4, :50] = 0.01  # pulses shorter than the rise: the edge rule
    assert layer._second_wide() is not None
    getattr(layer, mode)()
    _assert_same(_run(layer, x, True), _run(layer, x, False))


@pytest.mark.parametrize("levels", [256, 16, 0])
def test_pulse_inputs_in_one_pass_equal_input_quantize(levels):
    from labkit.model.kernels import InputQuantize

    v = (torch.randn(3, 5, 17, 19) * 1.5).requires_grad_(True)
    x, least = tile_physics.PulseInputs.apply(v, levels)
    ref = InputQuantize.apply(v, levels)
    assert torch.equal(x, ref) and float(least) == float(v.detach().min())  # the same rounding, half to even
    g = torch.randn(v.shape)
    gv, = torch.autograd.grad((x * g).sum(), v)
    rv, = torch.autograd.grad((ref * g).sum(), v)
    assert torch.equal(gv, rv) and (gv == 0).any() and (gv != 0).any()
    with pytest.raises(ValueError, match="power of two"):
        tiles_native.quantize(v.detach(), 100)
