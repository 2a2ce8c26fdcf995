"""Training modes: hardware-aware tiles from calibrations, chip in the loop, the train CLI
and analog checkpoints (weights_only)."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from labkit.nn import AnalogConfig, AnalogLinear, InLoopTiles, TileParams, TrainingNoise, analog_layers, convert, with_tiles
from labkit.calibrate import CalibrationConfig, calibrate, save_calibration
from labkit.cli import main as cli
from labkit.deploy.deployment import deploy, open_chips
from labkit.train.checkpoint import load_checkpoint
from labkit.train.training import hardware_aware, train_in_loop

QUIET = AnalogConfig(noise=TrainingNoise(noise_std_s=0.0))
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
        calibrated = convert(net, tiles, QUIET)[0].eval()
        nominal = convert(net, None, QUIET)[0].eval()
        dep = deploy(nn.Sequential(calibrated), chips)
        rng = np.random.default_rng(1)
        x = torch.tensor(rng.random((400, 16)) * (rng.random((400, 16)) > 0.4), dtype=torch.float32)
        x = calibrated.pulse_inputs(x)
        measured = dep.network[0].tile_outputs(x)  # the same layer built on the chip tiles
    with torch.no_grad():
        err_cal = float((calibrated.tile_outputs(x) - measured).pow(2).mean().sqrt())
        err_nom = float((nominal.tile_outputs(x) - measured).pow(2).mean().sqrt())
        err_ideal = float((x @ calibrated.normalized_weights().t() - measured).pow(2).mean().sqrt())
    assert err_cal < 0.5 * err_nom and err_cal < 0.5 * err_ideal, (err_cal, err_nom, err_ideal)
    assert calibrated.tile_chips == ["EMU-0060", "EMU-0061"]


class Recording:
    """Layer tiles that pass the chips' outputs through and keep them."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def outputs(self, layer, xt):
        y = self.inner.outputs(layer, xt)
        self.seen.append(y)
        return y


def test_in_loop_forward_is_measured_and_gradient_is_the_models():
    torch.manual_seed(0)
    layer = AnalogLinear(16, 8, config=QUIET)
    model = nn.Sequential(layer)
    x = torch.rand(32, 16)
    c = torch.randn(32, 8)
    with open_chips("sim://?seed=70", 1) as chips:
        dep = deploy(model, chips)
        chips = Recording(dep.network[0].tiles)
        in_loop = with_tiles(model, lambda name, l: InLoopTiles(chips))  # chips forward, model backward
        in_loop.train()
        y = in_loop(x)
        (y * c).sum().backward()
        g_loop = layer.weight.grad.clone()  # parameters shared with the model
    seen = chips.seen
    assert len(seen) == 1 and model[0].tiles.__class__.__name__ == "ModelTiles"  # the model is untouched
    expected = seen[0] * (layer.output_scales() * layer.input_scale) + layer.bias
    assert torch.allclose(y, expected, atol=1e-5)  # the forward value is the measurement
    layer.zero_grad()
    layer.eval()  # same model, no noise: the gradient of the model alone
    (layer(x) * c).sum().backward()
    assert torch.allclose(g_loop, layer.weight.grad, rtol=1e-4, atol=1e-5)


@contextlib.contextmanager
def deployed_mlp():
    """A small hardware-aware MLP deployed on chips 80-87: (split, model, dep, chips, pulses so far)."""
    torch.manual_seed(0)
    from labkit.train.networks import dataset_for, mlp_lowres

    split = dataset_for("mlp", subset=120)
    model = hardware_aware(mlp_lowres(), split.train)
    with open_chips("sim://?seed=80", 8) as chips:
        dep = deploy(model, chips)
        yield split, model, dep, chips, sum(b.inner.chip.pulses_applied for b in chips)


def test_train_in_loop_reprograms_and_reports_accuracy_on_chips():
    with deployed_mlp() as (split, model, dep, chips, pulses0):
        w0 = model[1].weight.detach().clone()
        res = train_in_loop(dep, split.train, split.test, 1, lr=1e-3, batch_size=32)
        pulses1 = sum(b.inner.chip.pulses_applied for b in chips)
    assert 0.0 <= res["accuracy"] <= 1.0
    assert not torch.equal(w0, model[1].weight)
    assert pulses1 > pulses0  # the updated weights were programmed again


def test_digital_in_loop_never_reprograms_and_counts_its_averaged_vmms():
    with deployed_mlp() as (split, model, dep, chips, pulses0):
        w0, b0 = model[1].weight.detach().clone(), model[1].bias.detach().clone()
        vmm0 = dep.vmm_count
        res = train_in_loop(dep, split.train, None, 1, lr=1e-2, batch_size=32, reads=3, update="digital")
        pulses1 = sum(b.inner.chip.pulses_applied for b in chips)
        spent = dep.vmm_count - vmm0
    assert pulses1 == pulses0  # no pulse: the programmed weights stay
    assert torch.equal(w0, model[1].weight) and model[1].weight.requires_grad
    assert not torch.equal(b0, model[1].bias)
    assert res["vmms"] == spent > 0 and spent % 3 == 0  # every input read three times
    assert dep.reads == 1  # restored
    with pytest.raises(ValueError, match="update='some'"):
        train_in_loop(dep, split.train, None, 1, update="some")


def test_train_cli_modes_and_analog_checkpoint_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    ideal = tmp_path / "ideal.pt"
    assert cli(["train", "--model", "mlp", "--epochs", "3", "--subset", "150", "--save", str(ideal), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["mode"], out["samples"]) == ("mlp", "ideal", 150)
    assert 0.0 <= out["accuracy"] <= 1.0
    # a calibration file of one chip, used for every tile
    with open_chips("sim://?seed=90", 1) as (b,):
        cal_path = save_calibration(calibrate(b, QUICK), tmp_path / "chip90.npz")
    hw = tmp_path / "hw.pt"
    assert cli(["train", "--model", "mlp", "--mode", "hw", "--from", str(ideal), "--calibration", str(cal_path),
                "--noise-relative", "0.014", "--epochs", "2", "--subset", "150", "--save", str(hw), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["mode"], out["tiles"], out["calibrations"], out["start"]) == ("hw", 8, 1, "ideal")
    raw = torch.load(hw, map_location="cpu", weights_only=True)  # no code runs on load
    assert raw["meta"]["mode"] == "hw"
    ck = load_checkpoint(hw)
    model = ck.build()
    layers = analog_layers(model)
    assert [m.tile_chips for _, m in layers] == [["EMU-0090"] * 4, ["EMU-0090"] * 4]
    assert all(m.config.noise.noise_relative == 0.014 for _, m in layers)  # kept in the checkpoint
    from labkit.nn import TileParams

    eta = TileParams.from_calibration(cal_path).eta_per_v  # with the file's read-current correction
    assert np.allclose(layers[0][1].tile_eta[0].numpy(), eta, rtol=1e-5)
    assert ck.meta["accuracy"] == pytest.approx(out["accuracy"])
    # bad input: one line, exit 2
    assert cli(["train", "--model", "mlp", "--mode", "ideal", "--calibration", str(cal_path)]) == 2
    assert cli(["train", "--model", "mlp", "--mode", "hw", "--from", str(ideal), "--calibration", str(cal_path),
                "--calibration", str(cal_path), "--epochs", "1", "--subset", "50"]) == 2
    assert cli(["train", "--model", "mlp", "--mode", "hw", "--noise-relative", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "applies to --mode hw" in err and "name chip EMU-0090 twice" in err
    assert "--noise-relative=1.5" in err
