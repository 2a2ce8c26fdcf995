"""Analog layers: tile physics against ArrayModel's exact slot integration, tiling and
partial sums, convolution paths, gradients, signed inputs, noise, conversion."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.model import tile_physics
from labkit.model.tile_physics import TileBmm
from labkit.nn import (AnalogConfig, AnalogConv2d, AnalogLinear, ChipSpread, OperatingPoint, TileParams, TrainingNoise,
                       WeightMapping, analog_layers, convert, input_scales, tile_plan)

CFG = AnalogConfig()
OP = CFG.operating
IS = CFG.window().i_scale_a
# one TDC LSB of one column in the layers' output unit (w x, i.e. I_scale T)
LSB = OP.tdc_lsb_s * OP.reference_current_a / (IS * OP.integration_time_s)


def strong_tile(seed: int) -> TileParams:
    """A tile with large drain coefficients and doubled crosstalk (harder than the chips)."""
    t = ChipSpread().sample(OP, seed=seed)
    t.eta_per_v = np.random.default_rng(seed).uniform(0.3, 1.4, OP.cols)
    t.crosstalk_c = 2 * t.crosstalk_c
    return t


@torch.no_grad()
def reference(layer: AnalogLinear, x: torch.Tensor, **switches) -> torch.Tensor:
    """Sum over row tiles of ArrayModel.signed (exact adaptive slots) for every tile."""
    rt, ct = layer.row_tiles, layer.col_tiles
    R, P = OP.rows, OP.outputs_per_tile
    xp = F.pad(x, (0, rt * R - x.shape[1])).double()
    y = torch.zeros(x.shape[0], ct * P, dtype=torch.float64)
    for r in range(rt):
        for c in range(ct):
            m = layer.model_tile(r * ct + c).array_model(dtype=torch.float64, **switches).eval()
            y[:, c * P:(c + 1) * P] += m.signed(xp[:, r * R:(r + 1) * R], i_scale_a=IS)
    return y[:, : layer.out_features]


def patterns(n: int, k: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = rng.random((n, k)) * (rng.random((n, k)) > 0.4)
    x[: n // 4] = np.clip(x[: n // 4] * 1.6, 0, 1)  # some saturated pulses
    return torch.tensor(np.round(x * 256) / 256, dtype=torch.float32)


def test_tile_physics_matches_array_model_within_a_fraction_of_an_lsb():
    cfg = dataclasses.replace(CFG, quantize=False)
    torch.manual_seed(0)
    layer = AnalogLinear(40, 20, config=cfg, tiles=[strong_tile(i) for i in range(3 * 3)]).eval()
    x = patterns(600, 40)
    with torch.no_grad():
        y = layer.tile_outputs(x).double()
    ref = reference(layer, x, quantize=False, clip=None)
    rms = float((y - ref).pow(2).mean().sqrt().detach()) / LSB
    signal = float(ref.pow(2).mean().sqrt()) / LSB
    assert signal > 30  # the comparison is not trivial
    assert rms < 0.4, f"tile physics deviates {rms:.3f} LSB rms from ArrayModel"
    # without the edge-order term (crosstalk seen by later current) it is clearly worse
    plain = AnalogLinear(40, 20, config=dataclasses.replace(cfg, edge_order=False),
                         tiles=[layer.tile_params(i) for i in range(9)]).eval()
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        rms_plain = float((plain.tile_outputs(x).double() - ref).pow(2).mean().sqrt()) / LSB
    assert rms_plain > 1.5 * rms
    # and the physics is far from the ideal dot product (so the test can fail)
    ideal = x.double() @ layer.normalized_weights().detach().double().t()
    assert float((ideal - ref).pow(2).mean().sqrt()) / LSB > 10 * rms


def test_quantized_outputs_match_array_model_with_tdc():
    torch.manual_seed(1)
    layer = AnalogLinear(16, 8, tiles=[strong_tile(5)]).eval()
    x = patterns(400, 16, seed=2)
    with torch.no_grad():
        y = layer.tile_outputs(x).double()
    ref = reference(layer, x)
    # both floor to the TDC grid: differences are whole LSBs at floor boundaries
    assert float((y - ref).abs().mean()) / LSB < 0.35


def test_tiles_partial_sums_and_output_scale_reproduce_a_linear_layer_without_physics():
    cfg = dataclasses.replace(CFG, droop=False, crosstalk=False, quantize=False).with_noise(noise_std_s=0.0)
    torch.manual_seed(0)
    ref = nn.Linear(37, 19)
    layer = convert(nn.Sequential(ref), None, cfg)[0]
    assert (layer.row_tiles, layer.col_tiles, layer.n_tiles) == (3, 3, 9)
    x = torch.rand(50, 37)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref(x), atol=1e-4, rtol=1e-4)
        layer.input_scale.fill_(2.0)  # inputs up to 2 map onto full pulses
        assert torch.allclose(layer(2 * x), ref(2 * x), atol=2e-4, rtol=1e-4)
        # beyond the input scale a pulse saturates at T
        assert not torch.allclose(layer(3 * x), ref(3 * x), atol=1e-2)


@pytest.mark.parametrize("cin,cout,k,stride,pad", [(1, 6, 5, 1, 2), (6, 16, 5, 1, 0), (3, 10, 3, 2, 1)])
def test_convolution_equals_the_linear_layer_on_unfolded_patches(cin, cout, k, stride, pad):
    torch.manual_seed(0)
    tiles = ChipSpread()
    conv = AnalogConv2d(cin, cout, k, stride, pad, tiles=tiles).eval()
    lin = AnalogLinear(cin * k * k, cout, tiles=[conv.tile_params(i) for i in range(conv.n_tiles)]).eval()
    with torch.no_grad():
        lin.weight.copy_(conv.weight.reshape(cout, -1))
        lin.bias.copy_(conv.bias)
    x = torch.rand(3, cin, 12, 12) * (torch.rand(3, cin, 12, 12) > 0.3)
    with torch.no_grad():
        y = conv(x)
        cols = F.unfold(x, k, padding=pad, stride=stride)  # (B, K, L)
        ref = lin(cols.transpose(1, 2).reshape(-1, cin * k * k))
        ho = (12 + 2 * pad - k) // stride + 1
        ref = ref.reshape(3, ho, ho, cout).permute(0, 3, 1, 2)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, atol=1e-4), float((y - ref).abs().max())


def test_custom_backward_is_the_derivative_of_the_tile_physics():
    torch.manual_seed(0)
    rt, n, R = 2, 6, 16
    # pulsed rows only: a row switching on is a step of the crosstalk (no derivative there)
    x = (0.05 + 0.95 * torch.rand(rt, R, 5, dtype=torch.float64)).requires_grad_(True)  # (rt, rows, N)
    i0t = (1.0 + 10 * torch.rand(rt, R, 2 * n, dtype=torch.float64)).requires_grad_(True)
    kx = 0.5 + torch.rand(rt, R, 2 * n, dtype=torch.float64)
    e = torch.full((rt, 1, 2 * n), 1.4e-3, dtype=torch.float64)
    t0c = torch.full((rt, 1, 2 * n), 800.0, dtype=torch.float64)
    gc = torch.full((rt, 1, 2 * n), 0.2, dtype=torch.float64)
    # no TDC floor (piecewise constant) and no edge-order term (a forward-only correction)
    opts = (True, False, (0.0, 0.0), 1e9, 2, True, False)
    assert torch.autograd.gradcheck(lambda a, b: TileBmm.apply(a, b, kx, e, t0c, gc, opts), (x, i0t))


def test_signed_inputs_are_split_into_two_vmms_or_refused():
    torch.manual_seed(0)
    layer = AnalogLinear(20, 5, tiles=ChipSpread()).eval()
    x = torch.rand(8, 20) * 2 - 1
    with torch.no_grad():
        y = layer(x)
        pos, neg = layer(x.clamp_min(0)), layer((-x).clamp_min(0))
        assert torch.allclose(y, pos - neg + layer.bias, atol=1e-5)
    strict = AnalogLinear(20, 5, config=AnalogConfig(mapping=WeightMapping(signed_inputs="error")))
    with pytest.raises(ValueError, match="negative inputs"):
        strict(x)


def test_readout_noise_only_in_training_with_the_configured_spread():
    torch.manual_seed(0)
    layer = AnalogLinear(16, 8, tiles=ChipSpread())
    x = torch.rand(1, 16).repeat(4000, 1)
    layer.eval()
    with torch.no_grad():
        quiet = layer.tile_outputs(x)
        assert torch.equal(quiet, layer.tile_outputs(x))
        assert float(quiet.std(0).max()) == 0.0
        layer.train()
        noisy = layer.tile_outputs(x)
    # a signed output is the difference of two columns: sqrt(2) * sigma in charge
    sigma = CFG.noise.noise_std_s * OP.reference_current_a * np.sqrt(2) / (IS * OP.integration_time_s)
    assert float(noisy.std(0).mean()) == pytest.approx(sigma, rel=0.15)


@pytest.mark.parametrize("native", [True, False])
def test_relative_readout_noise_grows_with_the_column_output(native):

    torch.manual_seed(0)
    rel = 0.02
    cfg = AnalogConfig(noise=TrainingNoise(noise_std_s=0.0, noise_relative=rel), crosstalk=False)  # shift = the signal's charge
    layer = AnalogLinear(16, 8, tiles=TileParams.nominal(), config=cfg)
    with torch.no_grad():
        layer.weight.fill_(1.0)  # plus columns only
    layer.train()
    tile_physics.NATIVE["on"] = native
    try:
        with torch.no_grad():
            out = {}
            for level in (0.2, 0.8):
                x = torch.full((4000, 16), level)
                layer.eval()
                quiet = layer.tile_outputs(x)[0]
                layer.train()
                out[level] = (quiet, layer.tile_outputs(x).std(0))
    finally:
        tile_physics.NATIVE["on"] = True
    # each column's rms is rel x its charge (units of I_scale T); the minus column holds
    # I_min only; the TDC adds its rounding (LSB^2 / 12 per column, dithered by the noise)
    imin = CFG.window().i_min_a / IS
    for level, (quiet, sd) in out.items():
        q_minus = 16 * imin * level
        q_plus = quiet + q_minus
        expected = torch.sqrt(rel**2 * (q_plus**2 + q_minus**2) + 2 * LSB**2 / 12)
        assert torch.allclose(sd, expected, rtol=0.15), (level, sd, expected)
    assert float(out[0.8][1].mean()) > 3 * float(out[0.2][1].mean())


def test_convert_fuses_relu_keeps_parameter_names_and_orders_tiles():
    from labkit.train.networks import lenet5

    torch.manual_seed(0)
    net = lenet5()
    an = convert(net, ChipSpread())
    assert sum(isinstance(m, nn.ReLU) for m in an.modules()) == 0
    assert [n for n, _ in analog_layers(an)] == ["0", "3", "7", "9", "11"]
    assert [k for _, k in tile_plan(net)] == [2, 20, 375, 88, 12]
    keys = set(an.state_dict())
    assert set(net.state_dict()) <= keys
    assert {k for k in keys - set(net.state_dict())} == {
        f"{n}.{b}" for n in ("0", "3", "7", "9", "11")
        for b in ("input_scale", "tile_eta", "tile_kxt", "tile_t0", "tile_gain", "tile_so")}
    assert [m.relu for _, m in analog_layers(an)] == [True, True, True, True, False]
    # every tile got its own draw of the spread
    eta = torch.cat([m.tile_eta for _, m in analog_layers(an)])
    assert len({tuple(r.tolist()) for r in eta}) == 497
    with pytest.raises(ValueError, match="497"):
        convert(net, [TileParams.nominal()] * 3)


def test_input_scales_are_the_activation_percentiles():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.rand(500, 4)
    s = input_scales(net, x, percentile=100.0)
    assert s["0"] == pytest.approx(float(x.max()), rel=1e-6)
    with torch.no_grad():
        assert s["2"] == pytest.approx(float(torch.relu(net[0](x)).max()), rel=1e-5)


SMALL_TILES = AnalogConfig(operating=OperatingPoint(rows=6, pairs=((0, 1), (2, 3), (4, 5))))  # rows not a multiple of 4, 3 outputs


@pytest.mark.parametrize("config", [CFG, SMALL_TILES], ids=["16x8", "6x3"])
def test_fused_native_kernels_agree_with_the_torch_path(config):
    from labkit.model import tiles_native as analog_native

    if not analog_native.available():
        pytest.skip("no C compiler: the torch path is the only one")
    torch.manual_seed(0)
    tiles = [strong_tile(i) for i in range(9)] if config is CFG else ChipSpread()
    layer = AnalogLinear(40, 20, tiles=tiles, config=config)
    x = patterns(300, 40, seed=4)
    outs = {}
    for native in (True, False):
        tile_physics.NATIVE["on"] = native
        try:
            layer.eval()
            with torch.no_grad():
                quiet = layer.tile_outputs(x)
            layer.train()
            layer.zero_grad()
            xg = x.clone().requires_grad_(True)
            (layer.tile_outputs(xg) * torch.linspace(-1, 1, 20)).sum().backward()
        finally:
            tile_physics.NATIVE["on"] = True
        outs[native] = (quiet, layer.weight.grad.clone(), xg.grad.clone())
    # float rounding may move a time across a TDC boundary now and then: one LSB at most
    diff = (outs[True][0] - outs[False][0]).abs()
    assert float(diff.max()) <= 1.01 * LSB * 2 and float(diff.mean()) < 0.05 * LSB
    # the kernel keeps dq/dz in 16-bit fixed point (relative 1e-4) for the backward pass
    for a, b in zip(outs[True][1:], outs[False][1:]):
        assert float((a - b).norm() / b.norm()) < 2e-4
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("k,stride,pad,dil", [(5, 1, 2, 1), (3, 2, 1, 1), (3, 1, 0, 2), (2, 3, 3, 1)])
def test_patches_match_unfold_and_their_gradient_is_its_adjoint(k, stride, pad, dil):

    torch.manual_seed(0)
    conv = AnalogConv2d(3, 4, k, stride, pad, dil)
    x = torch.rand(2, 3, 11, 9, dtype=torch.float32, requires_grad=True)
    ref = F.unfold(x, k, dilation=dil, padding=pad, stride=stride)  # (B, K, L)
    ref_t = ref.permute(1, 0, 2).reshape(ref.shape[1], -1)
    rows = conv.row_tiles * conv.config.operating.rows
    g = torch.randn(rows, ref_t.shape[1])
    ref_g, = torch.autograd.grad((ref_t * g[: ref_t.shape[0]]).sum(), x)
    for native in (True, False):
        tile_physics.NATIVE["on"] = native
        try:
            p, _ = conv.unfold(x, rows)
            gx, = torch.autograd.grad((p * g).sum(), x)
        finally:
            tile_physics.NATIVE["on"] = True
        assert torch.equal(p[: ref_t.shape[0]], ref_t) and not p[ref_t.shape[0]:].any()
        assert torch.allclose(gx, ref_g, atol=1e-5)


def test_native_kernels_split_across_threads_give_the_single_thread_result():
    from labkit.model import tiles_native as analog_native

    if not analog_native.available():
        pytest.skip("no C compiler: the torch path is the only one")
    torch.manual_seed(0)
    conv = AnalogConv2d(3, 10, 3, padding=1, tiles=ChipSpread()).train()  # 2 row tiles
    x = torch.rand(40, 3, 32, 32)  # 40,960 samples per tile: several threads' worth
    threads = torch.get_num_threads()
    runs = []
    for n in (1, 4):
        torch.set_num_threads(n)
        try:
            assert len(analog_native._chunks(x.shape[0] * 32 * 32)) == n
            torch.manual_seed(1)  # the same noise seed
            conv.zero_grad()
            xg = x.clone().requires_grad_(True)
            y = conv(xg)
            (y * torch.linspace(-1, 1, 10)[:, None, None]).sum().backward()
        finally:
            torch.set_num_threads(threads)
        runs.append((y.detach(), conv.weight.grad.clone(), xg.grad.clone()))
    assert torch.equal(runs[0][0], runs[1][0])  # noise windows hashed per block: split-independent
    assert torch.equal(runs[0][2], runs[1][2])
    assert torch.allclose(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-6)  # summed in another order


@pytest.mark.parametrize("native", [True, False])
def test_an_empty_batch_passes_forward_and_backward(native):

    tile_physics.NATIVE["on"] = native
    try:
        for layer, x in ((AnalogLinear(20, 5), torch.zeros(0, 20)), (AnalogConv2d(2, 3, 3), torch.zeros(0, 2, 8, 8))):
            x.requires_grad_(True)
            y = layer.train()(x)
            y.sum().backward()
            assert y.shape[0] == 0 and x.grad.shape == x.shape and not layer.weight.grad.any()
    finally:
        tile_physics.NATIVE["on"] = True


def test_config_parts_round_trip_and_the_earlier_flat_checkpoint_layout_still_reads():
    cfg = AnalogConfig(operating=OperatingPoint(rows=6, pairs=((0, 1), (2, 3), (4, 5))),
                       mapping=WeightMapping(headroom=0.8), noise=TrainingNoise(2e-9, 0.01, 0.1), edge_order=False)
    assert AnalogConfig.from_dict(cfg.to_dict()) == cfg
    flat = {"integration_time_s": OP.integration_time_s, "rows": 6, "pairs": [[0, 1], [2, 3], [4, 5]],
            "headroom": 0.8, "signed_inputs": "split", "noise_std_s": 2e-9, "noise_relative": 0.01, "jitter": 0.1,
            "quantize": True, "droop": True, "crosstalk": True, "edge_order": False, "tdc_bits": OP.tdc_bits}
    assert AnalogConfig.from_dict(flat) == cfg  # checkpoints written before the split
    with pytest.raises(ValueError, match="noise_relative"):
        TrainingNoise(noise_relative=1.5)
