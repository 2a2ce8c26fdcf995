"""Deployment onto emulated chips (one per tile): glue, chip lists, CLI, VGG end to end."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from labkit.nn import AnalogConfig, TrainingNoise, analog_layers, tile_plan
from labkit.cli import main as cli
from labkit.deploy.deployment import chip_uris, deploy, open_chips
from labkit.train.networks import mlp_lowres, vgg_small
from labkit.train.training import evaluate, hardware_aware


def test_chip_uris_one_emulated_chip_per_tile_or_the_named_ones():
    assert chip_uris("sim://?seed=7&noise=0", 3) == [
        "sim://?seed=7&noise=0", "sim://?seed=8&noise=0", "sim://?seed=9&noise=0"]
    assert chip_uris("sim://", 2) == ["sim://?seed=0", "sim://?seed=1"]
    assert chip_uris("station:a.yaml, station:b.yaml", 2) == ["station:a.yaml", "station:b.yaml"]
    with pytest.raises(ValueError, match="3 chips asked for, but 'station:a.yaml' offers 1 chip"):
        chip_uris("station:a.yaml", 3)
    with pytest.raises(ValueError, match="seed"):
        chip_uris("sim://?seed=x", 2)


def test_on_ideal_chips_the_measured_network_is_the_modelled_one():
    """With every non-ideality off, measured tile outputs equal the model's to the TDC."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 5))
    x = torch.rand(64, 20)
    model = hardware_aware(net, torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long)),
                           None, AnalogConfig(noise=TrainingNoise(noise_std_s=0.0)))
    n = sum(k for _, k in tile_plan(net))
    assert n == 2 * 2 + 1 * 1
    with open_chips("sim://?seed=3&preset=ideal", n) as chips:
        dep = deploy(model, chips)
        assert dep.summary()["rms_rel_error"] < 0.01
        measured = dep(x)
        assert dep.vmm_count > 0
    with torch.no_grad():
        modelled = model.eval()(x)
        ideal = net(x)
    scale = float(ideal.abs().mean())
    assert float((measured - modelled).abs().mean()) < 0.02 * scale
    assert float((measured - ideal).abs().mean()) < 0.03 * scale


def test_averaging_reads_divides_the_readout_noise_by_their_square_root():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8))
    x = torch.rand(1, 16).repeat(300, 1)  # one input, measured 300 times
    model = hardware_aware(net, torch.utils.data.TensorDataset(x, torch.zeros(300, dtype=torch.long)))
    with open_chips("sim://?seed=5", 1) as chips:
        dep = deploy(model, chips)
        single = dep(x)
        count = dep.vmm_count
        dep.reads = 4
        four = dep(x)
        assert dep.vmm_count - count == 4 * count
    ratio = float(single.std(0).mean() / four.std(0).mean())
    assert 1.6 < ratio < 2.5, ratio  # sqrt(4) = 2
    assert torch.allclose(single.mean(0), four.mean(0), atol=3 * float(single.std(0).max()) / np.sqrt(300))
    with pytest.raises(ValueError, match="reads=0"):
        deploy(model, [], reads=0)


def test_ideal_network_loses_accuracy_on_real_like_chips_but_measures_what_it_computes():
    """The default emulated chips (crosstalk, droop, noise) move the outputs; the glue is
    the same code path, so the drop is physics, not bookkeeping."""
    torch.manual_seed(0)
    from labkit.train.networks import dataset_for

    split = dataset_for("mlp", subset=300)
    net = mlp_lowres()
    from labkit.train.training import train

    train(net, split.train, None, 15, lr=3e-3, batch_size=32)
    model = hardware_aware(net, split.train)
    sw = evaluate(model, split.test)
    with open_chips("sim://?seed=100", 8) as chips:
        dep = deploy(model, chips)
        chip = dep.evaluate(split.test)
    with open_chips("sim://?seed=100&preset=ideal", 8) as chips:
        clean = deploy(model, chips).evaluate(split.test)
    assert abs(clean - sw) < 0.03
    assert chip < sw - 0.05


def _write_cifar(folder, n=6):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_vgg_trains_hardware_aware_and_runs_on_chips_end_to_end(tmp_path, capsys):
    """The VGG network: ideal then hw training through the CLI on a tiny CIFAR-10 set (full
    width), and a reduced-width VGG deployed tile by tile on emulated chips."""
    data = tmp_path / "cifar"
    _write_cifar(data / "cifar-10-batches-py")
    ck = tmp_path / "vgg.pt"
    assert cli(["train", "--model", "vgg", "--mode", "hw", "--data", str(data), "--subset", "6", "--epochs", "1",
                "--save", str(ck), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["mode"], out["samples"], out["tiles"]) == ("vgg", "hw", 6, 1602)
    assert 0.0 <= out["accuracy"] <= 1.0
    # reduced width (three blocks of 4 channels), so its 18 tiles fit a test's time
    torch.manual_seed(0)
    small = vgg_small(widths=(4, 4, 4), convs_per_block=1, hidden=16)
    x = torch.rand(4, 3, 32, 32)
    model = hardware_aware(small, torch.utils.data.TensorDataset(x, torch.zeros(4, dtype=torch.long)))
    n = sum(m.n_tiles for _, m in analog_layers(model))
    with open_chips("sim://?seed=500", n) as chips:
        dep = deploy(model, chips)
        y = dep(x)
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    assert n == 18 and dep.vmm_count > 1000


def test_deploy_cli_reports_accuracy_on_chips_and_refuses_too_few(tmp_path, capsys):
    torch.manual_seed(0)
    ck = tmp_path / "mlp.pt"
    assert cli(["train", "--model", "mlp", "--mode", "ideal", "--epochs", "3", "--subset", "200",
                "--save", str(ck), "--json"]) == 0
    capsys.readouterr()
    assert cli(["deploy", "--backend", "sim://?seed=40", str(ck), "--subset", "100", "--reads", "2", "--json",
                "--state-dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["mode"], out["samples"], out["tiles"], out["reads"]) == ("mlp", "ideal", 100, 8, 2)
    assert 0.0 <= out["accuracy"] <= 1.0
    assert out["chips"][0] == "EMU-0040" and len(out["chips"]) == 8
    assert out["programming"]["within_tolerance_fraction"] > 0.95
    # one station chip for 8 tiles is time-multiplexed (tests/test_multiplex.py); a missing file is refused
    assert cli(["deploy", "--backend", "station:bench.yaml", str(ck), "--json"]) == 2
    err = capsys.readouterr().err
    assert "8 tiles on 1 chip" in err and "'bench.yaml' does not exist" in err and "Traceback" not in err
    assert cli(["deploy", "--backend", "station:a.yaml,station:b.yaml", str(ck), "--chips", "3"]) == 2
    assert "offers 2 chips" in capsys.readouterr().err
    assert cli(["deploy", "--backend", "sim://?seed=40", str(ck), "--reads", "0"]) == 2
    assert "--reads: 0; expected an integer in [1, 1024]" in capsys.readouterr().err


def test_model_and_chip_tiles_are_one_seam():
    """A ModelTile and a ChipTile take the same weights and pulse inputs and give the same
    outputs (on an ideal chip, to the TDC); the layer's batched model tiles are the
    ModelTile of each tile."""
    from labkit.nn import AnalogLinear, ChipTile, ModelTile, Tile, TileParams

    cfg = AnalogConfig(noise=TrainingNoise(noise_std_s=0.0))
    op = cfg.operating
    rng = np.random.default_rng(3)
    w = rng.uniform(-1, 1, (op.rows, op.outputs_per_tile))
    w[12:, :] = np.nan  # rows the network does not use: left alone on the chip
    x = torch.tensor(rng.random((200, op.rows)) * (rng.random((200, op.rows)) > 0.3), dtype=torch.float32)
    x[:, 12:] = 0.0
    with open_chips("sim://?seed=11&preset=ideal", 1) as (b,):
        chip = ChipTile(b, cfg)
        model = ModelTile(TileParams.nominal(op), dataclasses.replace(cfg, droop=False, crosstalk=False))
        assert isinstance(chip, Tile) and isinstance(model, Tile)
        summary = chip.set_weights(w)
        model.set_weights(w)
        assert summary["rms_rel_error"] < 0.01
        measured = chip.forward(x)
        assert chip.parameters().chip_id == "EMU-0011" and chip.vmm_count == int((x.sum(1) > 0).sum())
    predicted = model.forward(x)
    ideal = x.double() @ torch.tensor(np.nan_to_num(w))
    lsb = op.tdc_lsb_s * op.reference_current_a / (cfg.window().i_scale_a * op.integration_time_s)
    diff = (measured - predicted).abs()  # both floor to the TDC: whole LSBs at boundaries
    assert float(diff.max()) <= 2.01 * lsb and float(diff.mean()) < 0.03 * float(ideal.abs().mean())
    assert float((measured - ideal).abs().mean()) > 0.5 * float(diff.mean())  # the comparison is not trivial
    # the layer's batched model tiles are its tiles' ModelTiles
    torch.manual_seed(0)
    from labkit.nn import ChipSpread

    layer = AnalogLinear(16, 8, tiles=ChipSpread(), config=cfg).eval()
    xl = layer.pulse_inputs(torch.rand(64, 16))
    with torch.no_grad():
        assert torch.allclose(layer.model_tile(0).forward(xl), layer.tile_outputs(xl), atol=1e-5)


def test_deployment_builds_the_network_on_chip_tiles_and_leaves_the_model_alone():
    from labkit.nn import ChipTiles, ModelTiles

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8))
    x = torch.rand(32, 16)
    model = hardware_aware(net, torch.utils.data.TensorDataset(x, torch.zeros(32, dtype=torch.long)))
    with torch.no_grad():
        before = model.eval()(x)
    with open_chips("sim://?seed=21", 1) as chips:
        dep = deploy(model, chips)
        on_chips = dep(x)
    assert isinstance(model[0].tiles, ModelTiles) and isinstance(dep.network[0].tiles, ChipTiles)
    assert dep.network[0].weight is model[0].weight  # one network, two kinds of tiles
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)  # the model still computes the model
    assert not torch.equal(on_chips, before)


def test_calibrate_tile_retries_a_diverged_fit_and_nothing_else(monkeypatch):
    from labkit.calibrate import calibration
    from labkit.calibrate.calibration import CalibrationConfig
    from labkit.deploy.deployment import calibrate_tile
    from labkit.errors import FitDivergedError

    real = calibration.calibrate
    seeds = []

    def diverging_once(backend, cfg, **kw):
        seeds.append(cfg.seed)
        if len(seeds) == 1:
            raise FitDivergedError("fit diverged: loss nan")
        return real(backend, cfg, **kw)

    quick = CalibrationConfig.quick(fit_iterations=20, fit_patterns=256, holdout_patterns=128,
                                    activation_patterns=128)
    with open_chips("sim://?seed=31", 1) as (b,):
        monkeypatch.setattr(calibration, "calibrate", diverging_once)
        params, report = calibrate_tile(b, quick)
        assert seeds == [quick.seed, quick.seed + 1] and params.chip_id == "EMU-0031"
        calls = []

        def bad_input(backend, cfg, **kw):
            calls.append(cfg.seed)
            raise ValueError("a plain ValueError is a bug or a user mistake, not a diverged fit")

        monkeypatch.setattr(calibration, "calibrate", bad_input)
        with pytest.raises(ValueError, match="plain ValueError"):
            calibrate_tile(b, quick)
        assert calls == [quick.seed]  # not retried
