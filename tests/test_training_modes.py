"""Training modes: hardware-aware tiles from calibrations, chip in the loop, the train CLI
and analog checkpoints (weights_only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from labkit.nn.analog import AnalogConfig, AnalogLinear, TileParams, analog_layers, convert
from labkit.calibrate import CalibrationConfig, calibrate, save_calibration
from labkit.cli import main as cli
from labkit.deploy.deployment import deploy, open_chips
from labkit.train.checkpoint import load_checkpoint
from labkit.train.training import hardware_aware, train_in_loop

QUICK = CalibrationConfig.quick(fit_iterations=40, fit_patterns=768, holdout_patterns=256, activation_patterns=256)


def test_tiles_built_from_each_chips_calibration_predict_that_chip():
    """The hw-aware model of a layer, with every tile's parameters from its own chip's
    calibration, predicts the measured outputs far better than datasheet tiles."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16))
    with open_chips("sim://?seed=60", 2) as chips:
        tiles = []
        for b in chips:
            cal = calibrate(b, QUICK)
            read = np.mean([b.read_currents() for _ in range(4)], axis=0)
            tiles.append(TileParams.from_model(cal.array_model(), read, chip_id=cal.chip_id))
        calibrated = convert(net, tiles, AnalogConfig(noise_std_s=0.0))[0].eval()
        nominal = convert(net, None, AnalogConfig(noise_std_s=0.0))[0].eval()
        dep = deploy(nn.Sequential(calibrated), chips)
        rng = np.random.default_rng(1)
        x = torch.tensor(rng.random((400, 16)) * (rng.random((400, 16)) > 0.4), dtype=torch.float32)
        x = calibrated.pulse_inputs(x)
        measured = dep.measure(calibrated, x)
    with torch.no_grad():
        err_cal = float((calibrated.tile_outputs(x) - measured).pow(2).mean().sqrt())
        err_nom = float((nominal.tile_outputs(x) - measured).pow(2).mean().sqrt())
        err_ideal = float((x @ calibrated.normalized_weights().t() - measured).pow(2).mean().sqrt())
    assert err_cal < 0.5 * err_nom and err_cal < 0.5 * err_ideal, (err_cal, err_nom, err_ideal)
    assert calibrated.tile_chips == ["EMU-0060", "EMU-0061"]


def test_in_loop_forward_is_measured_and_gradient_is_the_models():
    torch.manual_seed(0)
    layer = AnalogLinear(16, 8, config=AnalogConfig(noise_std_s=0.0))
    model = nn.Sequential(layer)
    x = torch.rand(32, 16)
    c = torch.randn(32, 8)
    with open_chips("sim://?seed=70", 1) as chips:
        dep = deploy(model, chips)
        seen = []

        def recording(l, xx):
            y = dep.measure(l, xx)
            seen.append(y)
            return y
        layer.measure = recording
        layer.train()
        y = model(x)
        (y * c).sum().backward()
        g_loop = layer.weight.grad.clone()
        layer.measure = None
    expected = seen[0] * (layer.output_scales() * layer.input_scale) + layer.bias
    assert torch.allclose(y, expected, atol=1e-5)  # the forward value is the measurement
    layer.zero_grad()
    layer.eval()  # same model, no noise: the gradient of the model alone
    (layer(x) * c).sum().backward()
    assert torch.allclose(g_loop, layer.weight.grad, rtol=1e-4, atol=1e-5)


def test_train_in_loop_reprograms_and_reports_accuracy_on_chips():
    torch.manual_seed(0)
    from labkit.train.networks import dataset_for, mlp_lowres

    split = dataset_for("mlp", subset=120)
    model = hardware_aware(mlp_lowres(), split.train)
    with open_chips("sim://?seed=80", 8) as chips:
        dep = deploy(model, chips)
        pulses0 = sum(b.inner.chip.pulses_applied for b in chips)
        w0 = model[1].weight.detach().clone()
        res = train_in_loop(dep, split.train, split.test, 1, lr=1e-3, batch_size=32)
        pulses1 = sum(b.inner.chip.pulses_applied for b in chips)
    assert 0.0 <= res["accuracy"] <= 1.0
    assert not torch.equal(w0, model[1].weight)
    assert pulses1 > pulses0  # the updated weights were programmed again


def test_train_cli_modes_and_analog_checkpoint_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    ideal = tmp_path / "ideal.pt"
    assert cli(["train", "--model", "mlp", "--epochs", "3", "--subset", "150", "--out", str(ideal), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["mode"], out["samples"]) == ("mlp", "ideal", 150)
    assert 0.0 <= out["accuracy"] <= 1.0
    # a calibration file of one chip, used for every tile
    with open_chips("sim://?seed=90", 1) as (b,):
        cal_path = save_calibration(calibrate(b, QUICK), tmp_path / "chip90.npz")
    hw = tmp_path / "hw.pt"
    assert cli(["train", "--model", "mlp", "--mode", "hw", "--from", str(ideal), "--calibration", str(cal_path),
                "--noise-relative", "0.014", "--epochs", "2", "--subset", "150", "--out", str(hw), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["mode"], out["tiles"], out["calibrations"], out["start"]) == ("hw", 8, 1, "ideal")
    raw = torch.load(hw, map_location="cpu", weights_only=True)  # no code runs on load
    assert raw["meta"]["mode"] == "hw"
    ck = load_checkpoint(hw)
    model = ck.build()
    layers = analog_layers(model)
    assert [m.tile_chips for _, m in layers] == [["EMU-0090"] * 4, ["EMU-0090"] * 4]
    assert all(m.config.noise_relative == 0.014 for _, m in layers)  # kept in the checkpoint
    from labkit.nn.analog import TileParams

    eta = TileParams.from_calibration(cal_path).eta_per_v  # with the file's read-current correction
    assert np.allclose(layers[0][1].tile_eta[0].numpy(), eta, rtol=1e-5)
    assert ck.meta["accuracy"] == pytest.approx(out["accuracy"])
    # bad input: one line, exit 2
    assert cli(["train", "--model", "mlp", "--mode", "ideal", "--calibration", str(cal_path)]) == 2
    assert cli(["train", "--model", "mlp", "--mode", "hw", "--from", str(ideal), "--calibration", str(cal_path),
                "--calibration", str(cal_path), "--epochs", "1", "--subset", "50"]) == 2
    assert cli(["train", "--model", "mlp", "--mode", "hw", "--noise-relative", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "applies to --mode hw" in err and "2 calibration files for a network of 8 tiles" in err
    assert "--noise-relative=1.5" in err
