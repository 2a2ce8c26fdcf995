"""Temperature-aware calibration, run-time compensation, retention and refresh plans,
against the emulator's hidden truth (only here, never in labkit)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import labkit
from labkit.backend import TemperatureControl
from labkit.calibrate import CalibrationConfig, save_calibration
from labkit.calibrate.temperature import (FORMAT, OutOfRangeWarning, calibrate_temperatures,
                                          read_temperature_calibration)
from labkit.cli import main as cli
from labkit.errors import SafetyError, UsageError
from labkit.files import FileFormatError
from labkit.program import program_weights
from labkit.program.retention import characterize_retention, read_retention_model, refresh_plan

CFG = CalibrationConfig.quick(fit_iterations=40)
TEMPS = (283.15, 308.15, 333.15)


@pytest.fixture(scope="module")
def calibrated():
    """A chip calibrated at three temperatures (the backend stays open for the tests)."""
    with labkit.open_backend("sim://?seed=21&retention=0") as b:
        yield b, calibrate_temperatures(b, TEMPS, CFG)


def test_cell_law_predicts_programmed_cells_at_other_temperatures_and_gate_voltages(calibrated):
    b, tc = calibrated
    chip = b.inner.chip  # hidden truth
    ctl = b.capability(TemperatureControl)
    ctl.set_temperature_k(300.0)
    program_weights(b, np.random.default_rng(0).uniform(-1, 1, (16, 8)), clip=True)
    i0 = chip.currents().copy()
    for kelvin, dv in ((290.0, 0.02), (320.0, -0.04), (330.0, -0.06)):
        ctl.set_temperature_k(kelvin)
        b.configure(read_voltage_v=1.8 + dv)
        pred = np.exp(tc.law.log_current(kelvin, dv, i0, 300.0))
        true = chip.currents()
        assert np.sqrt(np.mean((pred / true - 1) ** 2)) < 0.015, (kelvin, dv)
        b.configure(read_voltage_v=1.8)
    # the shift that holds the currents: about -1.5 mV/K over the gate coupling of 0.7
    ctl.set_temperature_k(330.0)
    dv = tc.law.gate_shift_v(330.0, i0, 300.0)
    assert -0.11 < dv < -0.05
    raw = chip.currents().sum() / i0.sum()
    b.configure(read_voltage_v=1.8 + dv)
    held = chip.currents().sum() / i0.sum()
    b.configure(read_voltage_v=1.8)
    ctl.set_temperature_k(300.0)
    assert raw > 2.0 and abs(held - 1) < 0.05


def test_model_terms_are_smooth_in_temperature_and_predicted_between(calibrated):
    b, tc = calibrated
    assert tc.range_k == (283.15, 333.15) and len(tc.calibrations) == 3
    mid = tc.at(320.0)
    assert mid.report["temperature_k"] == 320.0
    lo, hi = (np.asarray(c.model["currents_a"]) for c in (tc.calibrations[1], tc.calibrations[2]))
    between = np.asarray(mid.model["currents_a"])
    assert np.mean((between > np.minimum(lo, hi) * 0.97) & (between < np.maximum(lo, hi) * 1.03)) > 0.95
    with pytest.warns(OutOfRangeWarning, match="outside its calibrated range 283.15-333.15 K"):
        tc.at(350.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tc.at(300.0)  # inside: no warning


def test_file_round_trip_old_files_load_as_one_temperature_and_bad_files_are_refused(calibrated, tmp_path):
    b, tc = calibrated
    path = tc.save(tmp_path / "t.npz")
    back = read_temperature_calibration(path, chip_id=b.identity.chip_id)
    assert np.allclose(back.temperatures_k, tc.temperatures_k) and np.allclose(back.law.gamma, tc.law.gamma)
    assert np.allclose(back.at(315.0).model["eta_per_v"], tc.at(315.0).model["eta_per_v"])
    with np.load(path, allow_pickle=False) as z:
        assert str(z["format"]) == FORMAT
        arrays = dict(z)
    old = save_calibration(tc.calibrations[1], tmp_path / "old.npz")  # a single-temperature file
    one = read_temperature_calibration(old)
    assert len(one.calibrations) == 1 and one.law is None
    with pytest.warns(OutOfRangeWarning):
        assert one.at(330.0) is one.calibrations[0]
    bad = dict(arrays, format=np.array("labkit.TemperatureCalibration/9"))
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(FileFormatError, match="has format 'labkit.TemperatureCalibration/9'; expected"):
        read_temperature_calibration(tmp_path / "bad.npz")
    np.savez(tmp_path / "many.npz", **dict(arrays, temperatures_k=np.arange(300.0, 340.0)))
    with pytest.raises(FileFormatError, match="temperatures_k: shape \\(40,\\); expected 1 to 16"):
        read_temperature_calibration(tmp_path / "many.npz")
    np.savez(tmp_path / "obj.npz", **dict(arrays, **{"law/gamma": np.zeros((16, 16), dtype=complex)}))
    with pytest.raises(FileFormatError, match="law/gamma: dtype complex128"):
        read_temperature_calibration(tmp_path / "obj.npz")


def test_bad_temperatures_are_refused_before_the_chip_moves():
    with labkit.open_backend("sim://?seed=22") as b:
        before = b.temperature_k()
        for temps, match in (((300, 300, 310), "expected 3 to 16 distinct"), ((300, 310), "expected 3 to 16"),
                             ((300, 310, 500), "temperature 500 K is outside the safety envelope 233.15-398.15 K"),
                             ((300, float("nan"), 320), "expected 3 to 16 distinct finite")):
            with pytest.raises(UsageError, match=match):
                calibrate_temperatures(b, temps, CFG)
        assert b.temperature_k() == before and b.inner.chip.pulses_applied == 0
        with pytest.raises(SafetyError):
            b.capability(TemperatureControl).set_temperature_k(500.0)


def test_retention_model_finds_each_cells_drift_and_the_plan_says_when_to_refresh():
    with labkit.open_backend("sim://?seed=23") as b:
        model = characterize_retention(b)
        chip = b.inner.chip
        truth = chip.params.retention_v_per_decade / chip.params.slope_n  # hidden: per-cell drift rate
        assert np.corrcoef(model.per_decade.ravel(), truth.ravel())[0, 1] > 0.95
        # the emulator accelerates exp(dT / 30 K): about 0.28 eV between 300 and 330 K
        assert 0.2 < model.activation_ev < 0.36
        # predicted drift of programmed cells after a day at 40 degC against the truth
        ctl = b.capability(TemperatureControl)
        ctl.set_temperature_k(313.15)
        program_weights(b, np.random.default_rng(1).uniform(-1, 1, (16, 8)), clip=True)
        i0 = chip.currents().copy()
        b.capability(labkit.backend.VirtualClock).advance_time_s(86400.0)
        got = np.log(chip.currents() / i0)
        pred = model.log_drift(86400.0, 313.15)
        assert np.sqrt(np.mean((got - pred) ** 2)) < 0.2 * np.sqrt(np.mean(got**2))
    warm = refresh_plan(model, i0, 313.15, 0.03)
    hot = refresh_plan(model, i0, 333.15, 0.03)
    assert 0 < hot.leaves_tolerance_after_s < warm.leaves_tolerance_after_s < np.inf
    assert warm.cells > 0 and warm.pulses > 0
    with pytest.raises(UsageError, match="refresh tolerance 2; expected a fraction"):
        refresh_plan(model, i0, 313.15, 2)


def test_program_refresh_plan_cli_reports_when_and_what_without_touching_the_chip(tmp_path, capsys):
    with labkit.open_backend("sim://?seed=24") as b:
        characterize_retention(b).save(tmp_path / "ret.npz")
    w = tmp_path / "w.npz"
    np.savez(w, weights=np.random.default_rng(2).uniform(-1, 1, (16, 8)))
    state = tmp_path / "s.json"
    assert cli(["program", "--backend", "sim://?seed=24", str(w), "--state", str(state), "--json"]) == 0
    capsys.readouterr()
    assert cli(["program", "--refresh", "--plan", "--state", str(state), "--retention", str(tmp_path / "ret.npz"),
                "--temperature", "40", "--tolerance", "0.03", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chip_id"] == "EMU-0024" and out["plan"] and 0 < out["leaves_tolerance_after_s"] < 1e9
    assert out["pulses"] > 0 and out["rows_erased"] > 0
    assert read_retention_model(tmp_path / "ret.npz").chip_id == "EMU-0024"
    assert cli(["program", "--refresh", "--plan", "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert "needs --retention FILE" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An ideal MLP checkpoint and temperature calibrations of its 8 chips (10, 35, 60 degC)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ck")
    ck = folder / "mlp.pt"
    assert cli(["train", "--model", "mlp", "--mode", "ideal", "--epochs", "8", "--subset", "400",
                "--save", str(ck), "--json"]) == 0
    files = []
    with labkit.open_chips("sim://?seed=60&retention=0", 8) as chips:
        for b in chips:
            files += ["--temperature-calibration",
                      str(calibrate_temperatures(b, (283.15, 308.15, 333.15), CFG).save(folder / b.identity.chip_id))]
    return ck, files


def test_deploy_compensates_read_voltage_records_every_batch_and_warns_out_of_range(checkpoint, capsys):
    ck, files = checkpoint
    capsys.readouterr()
    common = ["deploy", "--backend", "sim://?seed=60&retention=0", str(ck), "--subset", "100",
              "--batch-size", "25", "--json"]
    assert cli(common + ["--temperature", "10"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert cli(common + ["--temperature", "10", "--temperature-compensation", "read-voltage"] + files) == 0
    on = json.loads(capsys.readouterr().out)
    assert on["accuracy"] > off["accuracy"] + 0.15  # (100 samples of a weak 8-epoch net) cold cells carry a third of their current uncompensated
    assert len(on["batches"]) == 4 and on["warnings"] == [] and len(on["batches"][0]["temperature_k"]) == 8
    assert len(off["batches"]) == 4  # off records the temperature too
    assert all(abs(k - 283.15) < 1e-6 for b in on["batches"] for k in b["temperature_k"])
    assert all(v > 1.82 for b in on["batches"] for v in b["read_voltage_v"])  # cold: the gate went up
    assert on["programmed_k"][0] == pytest.approx(300.0) and len(on["programmed_at"]) == on["tiles"]
    # outside the calibrated range: a warning on stderr and in --json; outside the envelope: refused
    assert cli(common + ["--temperature", "70", "--temperature-compensation", "read-voltage"] + files) == 0
    captured = capsys.readouterr()
    warm = json.loads(captured.out)
    assert warm["warnings"] and "outside its calibrated range" in warm["warnings"][0]
    assert "warning: chip EMU-0060 at 343.15 K (70.0 degC) is outside its calibrated range" in captured.err
    assert cli(common + ["--temperature", "200"]) == 2
    err = capsys.readouterr().err
    assert "--temperature 200 degC is outside the safety envelope -40 to 125 degC" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert cli(common + ["--temperature-compensation", "read-voltage"]) == 2
    assert "needs --temperature-calibration FILE" in capsys.readouterr().err
    for method in ("probed", "reprogram-probed"):  # offered, and checked before anything opens
        assert cli(common + ["--temperature-compensation", method]) == 2
        assert f"--temperature-compensation {method} needs --temperature-calibration FILE" in capsys.readouterr().err


def test_compensated_tile_holds_column_currents_after_a_year_hot_and_refuses_bad_methods():
    from labkit.deploy.temperature import CompensatedTile, programmed_state
    from labkit.nn import AnalogConfig, ChipTile

    with labkit.open_backend("sim://?seed=25") as b:
        tc = calibrate_temperatures(b, TEMPS, CFG)
        model = characterize_retention(b)  # erases: before programming
        chip = b.inner.chip
        ctl = b.capability(TemperatureControl)
        ctl.set_temperature_k(300.0)
        tile = ChipTile(b, AnalogConfig())
        tile.set_weights(np.random.default_rng(3).uniform(-1, 1, (16, 8)))
        state = programmed_state(tile)
        i0 = chip.currents().copy()
        now = [0.0]
        comp = CompensatedTile(tile, "read-voltage", tc, model, clock=lambda: now[0], programmed=state)
        ctl.set_temperature_k(313.15)
        b.capability(labkit.backend.VirtualClock).advance_time_s(365.25 * 86400)
        now[0] = 365.25 * 86400
        raw = chip.currents().sum(axis=0) / i0.sum(axis=0)
        rec = comp.update()
        flowing = chip.currents()  # at the shifted read voltage
        ratio = tile.gain_s_per_c / state["gain_s_per_c"]
        back = flowing / ratio[None, :] + comp.offset_a[None, :]  # what the corrected readout takes them for
        assert rec.age_s == now[0] and rec.temperature_k == pytest.approx(313.15) and rec.read_voltage_v != 1.8
        assert np.max(np.abs(raw - 1)) > 0.3  # uncompensated: the columns carry far other currents
        assert np.max(np.abs(back.sum(axis=0) / i0.sum(axis=0) - 1)) < 0.03
        assert np.sqrt(np.mean((back / i0 - 1) ** 2)) < 0.12  # per cell: the spread of drift rates (~8 %) is left
        with pytest.raises(UsageError, match="temperature compensation 'bogus'; expected one of off, read-voltage"):
            CompensatedTile(tile, "bogus", tc, programmed=state)
        with pytest.raises(UsageError, match="needs a temperature calibration with a cell law"):
            CompensatedTile(tile, "read-voltage", None, programmed=state)
        with pytest.raises(UsageError, match="design_age_s=-1 s needs a retention model and a finite age > 0 s"):
            CompensatedTile(tile, "read-voltage", tc, model, design_age_s=-1, programmed=state)


def test_temperature_augmentation_compresses_ratios_keeps_column_sums_and_only_while_training():
    from labkit.nn import analog_layers
    from labkit.train.networks import mlp_lowres
    from labkit.train.temperature import compress, temperature_augmentation
    from labkit.train.training import hardware_aware

    q = torch.tensor([[[1.0, 4.0], [11.0, 2.0], [3.0, 8.0]]])
    c = compress(q, 0.9)
    assert torch.allclose(c.sum(dim=-2), q.sum(dim=-2))
    assert (c[0, 1, 0] / c[0, 0, 0]) == pytest.approx(11.0**0.9, rel=1e-5)
    assert torch.allclose(compress(q, 1.0), q)
    ds = torch.utils.data.TensorDataset(torch.rand(64, 16), torch.randint(0, 10, (64,)))
    net = hardware_aware(mlp_lowres(), ds, None)
    layer = analog_layers(net)[0][1]
    before = layer._currents_t().detach().clone()
    with temperature_augmentation(net, (330.0, 333.0), 300.0):
        net.train()
        hot = layer._currents_t().detach()
        net.eval()
        assert torch.equal(layer._currents_t().detach(), before)
    assert not torch.allclose(hot, before) and torch.allclose(hot.sum(dim=-2), before.sum(dim=-2), rtol=1e-5)
    assert torch.equal(layer._currents_t().detach(), before)  # unwrapped after the block
    with pytest.raises(UsageError, match="expected 0 < low < high"):
        with temperature_augmentation(net, (330.0, 300.0)):
            pass


def test_probed_compensation_measures_each_columns_readout_where_the_prediction_is_off(calibrated):
    """``probed`` fits each column's readout on reference inputs measured as programmed:
    it holds the tile's function where the cell law's prediction is wrong (here a 10 %
    error in the gate response), where ``read-voltage``, which trusts the prediction, cannot."""
    import copy
    import dataclasses

    from labkit.deploy.temperature import PROBE_READS, PROBES, CompensatedTile, programmed_state
    from labkit.nn import AnalogConfig, ChipTile, TileParams

    b, tc = calibrated
    off = copy.copy(tc)
    off.law = dataclasses.replace(tc.law, gamma=tc.law.gamma * 0.9)
    ctl = b.capability(TemperatureControl)
    ctl.set_temperature_k(300.0)
    b.configure(read_voltage_v=1.8)
    tile = ChipTile(b, AnalogConfig())
    tile.use_readout(TileParams.from_calibration(tc.at(300.0)))
    rng = np.random.default_rng(3)
    tile.set_weights(rng.uniform(-1, 1, (16, 8)))
    state = programmed_state(tile)
    x = torch.tensor(rng.uniform(0, 1, (256, 16)) * (rng.uniform(size=(256, 16)) < 0.5))
    ref = torch.stack([tile.forward(x) for _ in range(4)]).mean(0)
    err = {}
    for kelvin in (283.15, 333.15):
        for name, cal in (("good", tc), ("off", off)):
            for method in ("read-voltage", "probed"):
                ctl.set_temperature_k(300.0)
                comp = CompensatedTile(tile, method, cal, programmed=state)
                ctl.set_temperature_k(kelvin)
                y = torch.stack([comp.forward(x) for _ in range(4)]).mean(0)
                err[kelvin, name, method] = float((y - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
                if method == "probed":  # the reference at 300 K and one fit at this temperature
                    assert comp.probe_vmms == 2 * PROBES * PROBE_READS
        assert err[kelvin, "off", "read-voltage"] > 1.8 * err[kelvin, "good", "read-voltage"], err
        assert err[kelvin, "off", "probed"] < 0.55 * err[kelvin, "off", "read-voltage"], err
        assert err[kelvin, "off", "probed"] < 1.25 * err[kelvin, "good", "read-voltage"], err
    # the reference is measured at the programming temperature, and only there
    ctl.set_temperature_k(320.0)
    comp = CompensatedTile(tile, "probed", tc, programmed=state)
    with pytest.raises(UsageError, match="measures its probe reference at the programming temperature 300.00 K; "
                                         "the chip is at 320.00 K"):
        comp.update()
    with pytest.raises(UsageError, match="drift-aware programming \\(design_age_s\\) pre-distorts it"):
        CompensatedTile(tile, "probed", tc, object(), design_age_s=3600.0, programmed=state)
    ctl.set_temperature_k(300.0)
