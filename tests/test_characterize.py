"""Characterization routines on sim:// against the emulator's hidden truth, and the CLI.

Tests read the hidden chip (``chip_of``); labkit code never does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import labkit
from labkit import measure as ch
from labkit import cli
from labkit.measure import metrics
from labkit.backend import GateSweep, SafeArray, VirtualClock
from labkit.store import RunStore, StoreError
from simulator.chip import K_B_OVER_Q, Q_E
from tests.conftest import chip_of, sim_uri

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hidden_step_v(chip) -> np.ndarray:
    """Volts per falling edge on each bit line: coupling (F) * read voltage / C."""
    p = chip.params
    return p.coupling_f * chip.settings.read_voltage_v / p.capacitance_f[None, :]


# ----------------------------------------------------------------------------- metrics


def test_ser_definitions():
    y = np.array([[3.0, 4.0]])
    assert metrics.ser(y, y) == math.inf
    assert metrics.ser(y, y - [[0.0, 1.0]]) == pytest.approx(25.0)
    assert metrics.ser_db(y, y - [[0.0, 1.0]]) == pytest.approx(10 * math.log10(25))
    rng = np.random.default_rng(0)
    clean = rng.random((1, 400, 8))
    noisy = clean + 0.01 * rng.standard_normal((4, 400, 8))  # only 4 repeats: needs the R/(R-1)
    expected = np.sum(noisy**2) / (noisy.size * 0.01**2)
    assert metrics.noise_floor_ser(noisy) == pytest.approx(expected, rel=0.05)
    assert metrics.noise_floor_ser(np.repeat(clean, 3, axis=0)) == math.inf
    with pytest.raises(ValueError, match="R >= 2"):
        metrics.noise_floor_ser(clean)
    with pytest.raises(ValueError, match="shape"):
        metrics.ser(np.zeros(3), np.zeros(4))


# ----------------------------------------------------------------------------- routines vs truth


def test_crosstalk_map_follows_the_hidden_coupling_map(array_factory):
    b = array_factory(seed=0)
    xt = ch.crosstalk_map(b, repeats=24)
    truth = hidden_step_v(chip_of(b))
    r = np.corrcoef(truth.ravel(), xt.volts.ravel())[0, 1]
    assert r > 0.9, f"crosstalk map correlates only {r:.3f} with the hidden coupling"
    # Nominal volts: within the chip's capacitance / reference-current spread of the truth.
    assert xt.mean_v == pytest.approx(truth.mean(), rel=0.1)
    assert np.median(xt.step_se_s) < 0.15 * np.median(xt.step_s)
    # The slope is the probed row's current over I_ref: a by-product that follows the cells.
    assert np.corrcoef(xt.slope.ravel(), chip_of(b).currents().ravel())[0, 1] > 0.5
    # The layout pattern the emulator draws: grows along the row, mirrored rows, every
    # fourth column shielded.
    pat = xt.pattern()
    assert pat["weak_columns"] == [3, 7, 11, 15] and pat["weak_column_period"] == 4
    assert pat["col_trend"] > 0.3 and pat["even_odd_row_ratio"] > 1.15
    assert "every 4th column from 3" in pat["description"]


def test_crosstalk_off_gives_an_empty_map(array_factory):
    b = array_factory(seed=1, crosstalk=0)
    xt = ch.crosstalk_map(b, repeats=16)
    on = hidden_step_v(chip_of(b)).mean()
    assert abs(xt.volts.mean()) < 0.05 * on
    assert xt.mean_v < 0.25 * on  # what is left is noise


def test_crosstalk_against_a_background(array_factory):
    """A fixed background of active rows: the probe of a background row is against the
    background with that row off, and the steps still follow the coupling."""
    b = array_factory(seed=2)
    bg = np.zeros(16)
    bg[[1, 6, 12]] = 0.25
    xt = ch.crosstalk_map(b, repeats=48, background=bg)
    truth = hidden_step_v(chip_of(b))
    assert np.corrcoef(truth.ravel(), xt.volts.ravel())[0, 1] > 0.8
    np.testing.assert_array_equal(xt.background, bg)


def predicted_noise_ser(chip, rep: ch.RepeatData) -> float:
    """SER of one measurement against the noise-free output, from the emulator's noise
    settings: kT/C, comparator jitter, telegraph + shot noise of the charge, TDC LSB."""
    p, st = chip.params, chip.settings
    d = rep.x * st.integration_time_s
    i0 = chip.currents()
    rel = np.clip(p.rtn_rel * np.sqrt(1e-9 / np.maximum(i0, 1e-12)), 1e-3, 0.1)
    var_q = (d**2) @ (i0 * rel) ** 2 + Q_E * (d @ i0)
    var_v = K_B_OVER_Q * Q_E * chip.temperature_k / p.capacitance_f + p.comparator_jitter_v**2
    var_t = (var_v * (p.capacitance_f / p.reference_current_a) ** 2 + var_q / p.reference_current_a**2
             + st.tdc_lsb_s**2 / 12)
    return float(np.sum(rep.y_s.mean(axis=0) ** 2) / np.sum(var_t))


@pytest.mark.parametrize("seed", [0, 5])
def test_noise_floor_matches_the_emulator_noise_settings(seed):
    with labkit.open_backend(sim_uri(seed)) as b:
        base = ch.measure_baseline(b, 128)
        rep = ch.vmm_repeats(b, base, patterns=48, repeats=8)
        predicted = metrics.to_db(predicted_noise_ser(chip_of(b), rep))
    assert rep.noise_floor_ser_db == pytest.approx(predicted, abs=0.6)
    assert 25 < rep.noise_floor_ser_db < 45  # docs/physics.md: about 5-6 effective bits


def test_noise_floor_is_unbounded_without_noise():
    with labkit.open_backend(sim_uri(0, noise=0)) as b:
        base = ch.measure_baseline(b, 8)
        rep = ch.vmm_repeats(b, base, patterns=16, repeats=3)
    assert rep.noise_floor_ser == math.inf and rep.noise_floor_ser_db == math.inf


def true_droop(seed: int, level: float) -> np.ndarray:
    """1 - charge with droop / charge without, all rows at ``level`` (noise, crosstalk off)."""
    y = {}
    for droop in (0, 1):
        with labkit.open_backend(sim_uri(seed, noise=0, crosstalk=0, droop=droop)) as b:
            y[droop] = b.vmm_x(np.zeros(16)) - b.vmm_x(np.full(16, level))
    return 1 - y[1] / y[0]


def test_droop_sweep_measures_the_hidden_droop():
    with labkit.open_backend(sim_uri(3)) as b:
        base = ch.measure_baseline(b, 64)
        dr = ch.droop_sweep(b, base, levels=16, repeats=16)
    truth = true_droop(3, dr.x_levels[-1])
    assert dr.droop_fraction == pytest.approx(truth.mean(), abs=0.01)
    assert 0.02 < dr.droop_fraction < 0.2
    assert np.corrcoef(dr.droop_fraction_col, truth)[0, 1] > 0.7
    assert np.all(dr.valid[-1])  # the default chip does not saturate at full input
    with labkit.open_backend(sim_uri(3, droop=0)) as b:
        base = ch.measure_baseline(b, 64)
        flat = ch.droop_sweep(b, base, levels=16, repeats=16)
    assert abs(flat.droop_fraction) < 0.006


def test_droop_sweep_stops_at_saturation():
    """Columns that reach the comparator threshold before full input are cut there."""
    with labkit.open_backend(sim_uri(0)) as b:
        # raise every cell current (erase), so that full input saturates the bit lines
        b.erase_rows(np.arange(16), 14.0, 0.01)
        base = ch.measure_baseline(b, 16)
        dr = ch.droop_sweep(b, base, levels=8, repeats=2)
    assert not np.all(dr.valid[-1])
    assert np.all(dr.x_at_droop[np.isfinite(dr.x_at_droop)] < 1.0)


def test_cell_current_map_and_id_vg_match_the_chip(array_factory):
    b = array_factory(seed=4)
    chip = chip_of(b)
    i = ch.cell_current_map(b, averages=2)
    np.testing.assert_allclose(i, chip.currents(), rtol=0.02)
    old = b.settings.read_voltage_v
    i_hi = ch.cell_current_map(b, read_voltage_v=1.9)
    assert b.settings.read_voltage_v == old  # restored
    assert np.all(i_hi > i)
    g = ch.gate_voltages(1.0, 2.2, 13, b)
    cells = [[0, 0], [7, 8], [15, 15]]
    iv = ch.id_vg_sweep(b, cells, g, compliance_a=2e-6)
    assert iv.path == "source-measure"
    truth = np.array([[chip.current_at_gate(v)[r, c] for v in g] for r, c in cells])
    # an SMU reads with its noise floor (about 10 pA rms on its lowest range at 1 PLC)
    floor = 1e-10 if iv.path == "source-measure" and b.capability(VirtualClock) is None else 0.0
    np.testing.assert_allclose(iv.current_a, np.minimum(truth, 2e-6), rtol=1e-3 if floor else 1e-6, atol=floor)
    above = iv.current_a > 100 * floor
    assert np.all(np.diff(np.where(above, iv.current_a, 0.0), axis=1) >= 0)
    assert np.all(iv.current_a <= 2e-6)
    slope = iv.subthreshold_slope_mv_per_decade()
    assert np.all((60 < slope) & (slope < 200))


class NoGateSweep:
    """A raw backend without the GateSweep capability (delegates the rest)."""

    def __init__(self, inner):
        self._inner = inner
        self.geometry, self.identity = inner.geometry, inner.identity
        self.datasheet, self.envelope = inner.datasheet, inner.envelope

    settings = property(lambda self: self._inner.settings)

    def __getattr__(self, name):
        if name in ("id_vg", "set_temperature_k", "advance_time_s", "capture_bitline"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def configure(self, s):
        self._inner.configure(s)

    def read_currents(self, cells):
        return self._inner.read_currents(cells)

    def vmm(self, w):
        return self._inner.vmm(w)

    def temperature_k(self):
        return self._inner.temperature_k()

    def program_pulses(self, *a):
        self._inner.program_pulses(*a)

    def erase_rows(self, *a):
        self._inner.erase_rows(*a)

    def close(self):
        pass


def test_id_vg_without_a_source_measure_path_steps_the_read_voltage():
    with labkit.open_backend(sim_uri(4)) as full:
        b = SafeArray(NoGateSweep(full.inner))
        assert b.capability(GateSweep) is None
        g = ch.gate_voltages(1.2, 2.0, 9, b)
        before = b.settings
        iv = ch.id_vg_sweep(b, [[3, 3], [9, 12]], g, compliance_a=1e-6)
        assert iv.path == "array-read"
        assert b.settings == before
        ref = ch.id_vg_sweep(full, [[3, 3], [9, 12]], g, compliance_a=1e-6)
    np.testing.assert_allclose(iv.current_a, ref.current_a, rtol=0.02)


def test_temperature_sweep_and_retention_check(array_factory):
    b = array_factory(seed=6, noise=0)
    chip = chip_of(b)
    t_start = chip.temperature_k
    ts = ch.temperature_sweep(b, [290.0, 310.0, 330.0])
    # restored; through a temperature controller, within its settling tolerance (its loop has a time constant)
    settle = getattr(b.inner, "settle_tolerance_k", 0.0)
    assert chip.temperature_k == pytest.approx(t_start, abs=settle)
    np.testing.assert_allclose(ts.measured_k, [290, 310, 330], atol=settle)
    assert np.all(np.diff(np.log(ts.currents_a), axis=0) > 0)  # subthreshold currents rise with T
    chip.set_temperature_k(float(ts.measured_k[-1]))
    np.testing.assert_allclose(ts.currents_a[-1], chip.currents(), rtol=1e-9 if not settle else 2e-3)
    chip.set_temperature_k(t_start)
    if b.capability(VirtualClock) is None:  # a real-time backend: no ageing by 1e6 s
        with pytest.raises(ValueError, match="max_real_wait_s"):
            ch.retention_check(b, (0, 100, 1e4, 1e6))
        rt = ch.retention_check(b, (0, 0.2, 0.4), averages=1)
        assert not rt.virtual and rt.elapsed_s[-1] >= 0.4
        return
    # retention: the per-cell drift follows the hidden retention rates
    rt = ch.retention_check(b, (0, 100, 1e4, 1e6), averages=1)
    assert rt.virtual and np.all(rt.relative_change < 0)
    hidden = chip.params.retention_v_per_decade / chip.params.slope_n
    assert np.corrcoef(-rt.per_decade.ravel(), hidden.ravel())[0, 1] > 0.9


def test_routines_store_their_datasets(tmp_path):
    db = tmp_path / "runs.sqlite"
    cfg = ch.SuiteConfig.quick()
    with labkit.open_backend(sim_uri(0)) as b, RunStore(db) as store:
        with store.run("characterize", "sim://", b.identity.chip_id) as run:
            res = ch.run_standard(b, cfg, run=run)
    with RunStore(db, create=False) as store:
        r = store.load("latest")
        assert r.status == "completed"
        n_rand = cfg.random_patterns
        pts = r.points("vmm_random")
        assert pts["x"].shape == (n_rand, 16) and pts["t"].shape == (n_rand, 16)
        np.testing.assert_array_equal(pts["y"], res.random.y_s)
        np.testing.assert_allclose(pts["y"], res.baseline.t0_s - pts["t"])
        assert 0.3 < np.mean(pts["x"] == 0) < 0.5  # the zero fraction
        rep = r.points("vmm_repeat")
        assert len(rep["x"]) == cfg.repeat_patterns * cfg.repeats
        assert set(np.unique(rep["repeat"])) == set(range(cfg.repeats))
        oh = r.points("vmm_onehot")
        assert np.all(np.count_nonzero(oh["x"], axis=1) == 1)
        assert np.all(oh["x"][np.arange(len(oh["row"])), oh["row"]] > 0)
        assert len(r.points("vmm_activations")["x"]) == cfg.activation_patterns
        assert len(r.points("baseline")["t"]) == cfg.baseline_repeats
        xt = r.points("crosstalk")
        assert set(np.unique(xt["probe_row"])) == set(range(-1, 16))
        assert r.points("droop")["level"].max() == len(res.droop.x_levels) - 1
        assert len(r.points("idvg")["gate_v"]) == len(cfg.idvg_cells) * cfg.idvg_points
        assert len(r.points("temperature")["set_k"]) == len(cfg.temperature_offsets_k)
        assert len(r.points("retention")["elapsed_s"]) == len(cfg.retention_checkpoints_s)
        np.testing.assert_array_equal(r.arrays["cell_current_a"], res.cell_current_a)
        np.testing.assert_array_equal(r.arrays["crosstalk_v"], res.crosstalk.volts)
        assert r.result["noise_floor_ser_db"] == pytest.approx(res.repeats.noise_floor_ser_db)
        # read back for calibration
        rnd = ch.load_dataset(r, "vmm_random")
        np.testing.assert_array_equal(rnd.y_s, res.random.y_s)
        again = ch.load_dataset(r, "vmm_repeat")
        np.testing.assert_array_equal(again.y_s, res.repeats.y_s)
        assert again.noise_floor_ser_db == pytest.approx(res.repeats.noise_floor_ser_db)
        with pytest.raises(ValueError, match="not a VMM dataset"):
            ch.load_dataset(r, "temperature")


def test_network_activations_are_digit_images():
    x = ch.network_activations(300, seed=1)
    assert x.shape == (300, 16) and 0 <= x.min() and x.max() <= 1
    assert 0.2 < x.mean() < 0.45 and np.mean(x == 0) > 0.05  # dark borders, bright strokes
    np.testing.assert_array_equal(x, ch.network_activations(300, seed=1))


def test_routine_bad_input_is_value_error_before_measuring():
    with labkit.open_backend(sim_uri(0)) as b:
        chip = chip_of(b)
        before = chip.noise_rng.bit_generator.state
        base = ch.Baseline(np.zeros(16), np.zeros(16), 1)
        bad = [
            lambda: ch.gate_voltages(2.0, 1.0, 5, b),
            lambda: ch.gate_voltages(0.5, 3.0, 5, b),
            lambda: ch.gate_voltages(1.0, 2.0, 1, b),
            lambda: ch.gate_voltages(float("nan"), 2.0, 5, b),
            lambda: ch.id_vg_sweep(b, [[0, 0]], [1.0, 9.0]),
            lambda: ch.id_vg_sweep(b, [[0, 0]], [1.0, 2.0], compliance_a=1.0),
            lambda: ch.id_vg_sweep(b, [[0, 16]], [1.0, 2.0]),
            lambda: ch.crosstalk_map(b, widths_clocks=(1,)),
            lambda: ch.crosstalk_map(b, widths_clocks=(0, 2)),
            lambda: ch.droop_sweep(b, base, levels=2),
            lambda: ch.measure_vmm(b, np.full((2, 16), 1.5), base),
            lambda: ch.vmm_activations(b, base, np.zeros((3, 15))),
            lambda: ch.random_patterns(10, zero_fraction=1.5),
            lambda: ch.temperature_sweep(b, [300.0]),
            lambda: ch.retention_check(b, (0, 10, 5)),
            lambda: ch.SuiteConfig(repeats=1).validate(),
        ]
        for call in bad:
            with pytest.raises(ValueError):
                call()
        assert chip.noise_rng.bit_generator.state == before  # nothing was measured


def test_one_baseline_gives_deployment_its_mean_per_column():
    """Deployment reads outputs from ``measure_baseline(backend, repeats).t0_s``: the mean
    (s) per column of exactly that many zero-input VMMs, with their spread."""
    with labkit.open_backend(sim_uri(6)) as a, labkit.open_backend(sim_uri(6)) as b:
        base = ch.measure_baseline(a, repeats=32)
        direct = b.vmm(np.zeros((32, 16)))
    assert isinstance(base, ch.Baseline) and base.n == 32
    np.testing.assert_array_equal(base.t0_s, direct.mean(axis=0))
    np.testing.assert_allclose(base.std_s, direct.std(axis=0, ddof=1))
    assert np.all(base.std_s > 0)  # the emulated chip is noisy: a real spread, per column


def test_an_interrupted_repeat_table_loads_its_complete_repeats(tmp_path):
    """Points of a repeat table in any order, the last repeat cut short (a run killed
    mid-chunk): the store gives back the complete repeats, as they were measured."""
    uri = sim_uri(4)
    with labkit.open_backend(uri) as b, RunStore(tmp_path / "runs.sqlite") as store:
        with store.run("characterize", backend_uri=uri, chip_id=b.identity.chip_id, settings=b.settings) as run:
            base = ch.measure_baseline(b, 16, run)
            rep = ch.vmm_repeats(b, base, patterns=8, repeats=4)
            R, B = rep.t_s.shape[:2]
            repeat, pattern = np.repeat(np.arange(R), B)[:-3], np.tile(np.arange(B), R)[:-3]
            order = np.random.default_rng(0).permutation(len(repeat))
            repeat, pattern = repeat[order], pattern[order]
            run.add_points("vmm_repeat", x=rep.x[pattern], t=rep.t_s[repeat, pattern],
                           y=rep.y_s[repeat, pattern], pattern=pattern, repeat=repeat)
        r = store.load(run.id)
        got = ch.load_dataset(r, "vmm_repeat")
        assert got.y_s.shape == (R - 1, B, 16)
        np.testing.assert_array_equal(got.x, rep.x)
        np.testing.assert_array_equal(got.t_s, rep.t_s[:-1])
        np.testing.assert_array_equal(got.y_s, rep.y_s[:-1])
        with pytest.raises(ValueError, match=f"{R - 1} complete repeats of its {B} patterns; expected at least {R}"):
            ch.load_repeats(r, "vmm_repeat", min_repeats=R)


# ----------------------------------------------------------------------------- command line


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_json_has_the_foundation_fields(tmp_path, capsys):
    db = tmp_path / "runs.sqlite"
    uri = "sim://?seed=2&preset=model"  # the characterization's figures of the model-form chip
    code, out, err = run_cli(capsys, "characterize", "--backend", uri, "--quick", "--out", str(db),
                             "--json")
    assert code == 0, err
    d = json.loads(out)
    for key in ("backend", "chip_id", "rows", "cols", "cell_current_a", "noise_floor_ser_db", "run_id",
                "crosstalk_v", "droop_fraction"):
        assert key in d, key
    assert d["backend"] == uri and d["chip_id"] == "EMU-0002"
    assert (d["rows"], d["cols"]) == (16, 16)
    cur = np.array(d["cell_current_a"])
    assert cur.shape == (16, 16)
    with labkit.open_backend(uri) as b:  # a fresh copy of the same chip
        truth = chip_of(b).currents()
        coupling = hidden_step_v(chip_of(b))
    np.testing.assert_allclose(cur, truth, rtol=0.02)  # amperes
    assert np.corrcoef(np.array(d["crosstalk_v"]).ravel(), coupling.ravel())[0, 1] > 0.85
    assert 25 < d["noise_floor_ser_db"] < 45
    assert 0.0 < d["droop_fraction"] < 0.2
    with RunStore(db, create=False) as store:
        r = store.load(d["run_id"])
        assert r.status == "completed" and r.kind == "characterize" and r.chip_id == "EMU-0002"
        assert r.provenance["identity"]["chip_id"] == "EMU-0002"
        assert r.provenance["backend_uri"] == uri
        assert r.seeds == {"patterns": 0, "repeats": 1, "activations": 0}
        assert r.versions["labkit"] == labkit.__version__
        assert "GateSweep" in r.provenance["capabilities"]
    # The PNG report: a real image of the right size.
    from matplotlib.image import imread

    img = imread(d["report"])
    assert img.shape[0] == 1300 and img.shape[1] == 1500 and img[..., :3].std() > 0.05


def test_cli_summary_table(tmp_path, capsys):
    code, out, err = run_cli(capsys, "characterize", "--quick", "--no-report", "--out", str(tmp_path / "r.sqlite"))
    assert code == 0, err
    for label in ("noise floor SER", "crosstalk per edge", "crosstalk pattern", "droop at full input",
                  "cell currents"):
        assert label in out
    assert not list(tmp_path.glob("*.png"))


def test_cli_without_noise_reports_an_unbounded_noise_floor(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "characterize", "--backend", "sim://?noise=0", "--quick", "--no-report",
                           "--no-temperature", "--no-retention", "--out", str(tmp_path / "r.sqlite"), "--json")
    assert code == 0
    assert "Infinity" not in out  # strict JSON: an unbounded SER is null
    data = json.loads(out)
    assert data["noise_floor_ser_db"] is None and data["noise_floor_ser"] is None


def _unwritable_store(tmp_path) -> str:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        os.chmod(d, 0o555)
        return str(d / "runs.sqlite")
    return "/proc/labkit-test-runs.sqlite"  # root ignores permissions; procfs refuses new files


@pytest.mark.parametrize("argv, message", [
    (["--backend", "nope://"], "unknown backend scheme 'nope'"),
    (["--backend", "sim://?seed=x"], "seed"),
    (["--vg", "2.0", "1.0"], "gate sweep"),
    (["--vg", "0.5", "3.0"], "outside the allowed"),
    (["--vg", "1.0", "2.0", "--vg-points", "1"], "--vg-points: 1; expected an integer in [2, 10000]"),
    (["--compliance", "1"], "compliance"),
    (["--droop-levels", "2"], "droop_levels"),
    (["--repeats", "1"], "repeats"),
    (["--report", "/no/such/dir/r.png"], "does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    db = tmp_path / "runs.sqlite"
    code, out, err = run_cli(capsys, "characterize", "--quick", "--out", str(db), *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labkit characterize: error:") and message in lines[0], err
    assert "Traceback" not in err
    if db.exists():  # nothing was started
        with RunStore(db, create=False) as store:
            assert store.list_runs() == []


def test_cli_unwritable_store_is_one_line_and_exit_2(tmp_path, capsys):
    code, out, err = run_cli(capsys, "characterize", "--quick", "--out", _unwritable_store(tmp_path))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "run store" in err


def test_cli_read_only_store_file_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    """A store SQLite refuses to write (read-only) fails before anything is measured."""
    db = tmp_path / "runs.sqlite"
    RunStore(db).close()
    real = RunStore.__init__

    def read_only(self, path=None, **kw):  # as if the file were on a read-only mount
        real(self, path, **{**kw, "readonly": True})

    monkeypatch.setattr(RunStore, "__init__", read_only)
    code, out, err = run_cli(capsys, "characterize", "--quick", "--out", str(db))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "read-only" in err


def test_store_full_midway_keeps_what_was_measured(tmp_path):
    """The disk fills during the suite: a one-line StoreError, and every committed point
    is still readable afterwards."""
    cfg = ch.SuiteConfig.quick(temperature=False, retention=False)
    sizes = {}
    for name in ("full", "limited"):
        db = tmp_path / f"{name}.sqlite"
        with labkit.open_backend(sim_uri(0)) as b, RunStore(db, commit_interval=0.01) as store:
            pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
            if name == "limited":  # room for about half of what the suite writes: SQLITE_FULL midway
                store._conn.execute(f"PRAGMA max_page_count={pages + sizes['full'] // 2}")
                with pytest.raises(StoreError, match="disk full") as info:
                    with store.run("characterize", "sim://", b.identity.chip_id) as run:
                        ch.run_standard(b, cfg, run=run)
                assert len(str(info.value).splitlines()) == 1
            else:
                with store.run("characterize", "sim://", b.identity.chip_id) as run:
                    ch.run_standard(b, cfg, run=run)
                store.flush()
                sizes["full"] = store._conn.execute("PRAGMA page_count").fetchone()[0] - pages
    with RunStore(tmp_path / "full.sqlite", create=False, readonly=True) as full_store, \
            RunStore(db, create=False, readonly=True) as store:
        full = full_store.load("latest")
        r = store.load("latest")
        assert r.tables.get("baseline", 0) > 0 and r.tables.get("vmm_random", 0) > 0
        assert sum(r.tables.values()) < sum(full.tables.values())
        for table, n in r.tables.items():
            pts = r.points(table)
            assert all(len(v) == n for v in pts.values())
            ref = full.points(table)  # same chip seed, same patterns: same inputs
            if "x" in pts:
                np.testing.assert_array_equal(pts["x"], ref["x"][:n])


def test_cli_subprocess_unknown_backend():
    proc = subprocess.run([sys.executable, "-m", "labkit.cli", "characterize", "--backend", "gpib://x", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "unknown backend scheme" in proc.stderr


def test_cli_unreachable_station_is_one_line_and_exit_4_a_link_fault(tmp_path, capsys):
    pytest.importorskip("drivers.silicon")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    station = tmp_path / "station.yaml"
    station.write_text(f"name: nowhere\nboard:\n  url: socket://127.0.0.1:{port}\n  timeout_s: 0.5\n")
    db = tmp_path / "runs.sqlite"
    code, out, err = run_cli(capsys, "characterize", "--quick", "--backend", f"station:{station}", "--out", str(db))
    assert code == 4 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(port) in err
    assert not db.exists()  # nothing was started


def test_cli_on_the_virtual_bench_records_the_station(tmp_path, capsys):
    bench = pytest.importorskip("tests.fixtures_bench")
    from simulator.bench import VirtualBench

    station = tmp_path / "station.yaml"
    with VirtualBench(seed=7, station_out=station, thermal_time_constant_s=bench.FAST_THERMAL_S):
        text = station.read_text()
        code, out, err = run_cli(capsys, "characterize", "--quick", "--no-report", "--backend", f"station:{station}",
                                 "--out", str(tmp_path / "runs.sqlite"), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["chip_id"] == "EMU-0007" and np.array(d["crosstalk_v"]).shape == (16, 16)
    with labkit.open_backend("sim://?seed=7") as b:  # the same chip, in process
        np.testing.assert_allclose(np.array(d["cell_current_a"]), chip_of(b).currents(), rtol=0.02)
    with RunStore(tmp_path / "runs.sqlite", create=False) as store:
        r = store.load(d["run_id"])
    assert r.provenance["station_file"]["text"] == text
    assert set(r.provenance["identity"]["instruments"]) >= {"smu", "tempctl"}
    assert "retention (no virtual clock; run retention_check over real time)" in r.result["skipped"]
    del bench


def test_noise_model_separates_the_floor_from_the_part_that_grows_with_the_output():
    rng = np.random.default_rng(0)
    mean = rng.uniform(0, 600e-9, size=(64, 16))  # (patterns, columns) output, s
    floor, rel = 2e-9, 0.015
    sd = np.sqrt(floor**2 + (rel * mean) ** 2)
    rep = ch.RepeatData(np.zeros((64, 16)), np.zeros((400, 64, 16)), mean + sd * rng.standard_normal((400, 64, 16)))
    f, r = rep.noise_model()
    assert f == pytest.approx(floor, rel=0.1) and r == pytest.approx(rel, rel=0.05)
    # the emulated chip: cell-current noise grows with the signal, the floor does not
    with labkit.open_backend(sim_uri(0)) as b:
        rep = ch.vmm_repeats(b, ch.measure_baseline(b, 64), patterns=96, repeats=8)
    f, r = rep.noise_model()
    var, m = rep.y_s.var(axis=0, ddof=1).ravel(), np.abs(rep.y_s.mean(axis=0)).ravel()
    lo, hi = m < np.quantile(m, 0.25), m > np.quantile(m, 0.75)
    for sel in (lo, hi):  # the fit describes the measured spread at small and large outputs
        assert np.mean(f**2 + (r * m[sel]) ** 2) == pytest.approx(var[sel].mean(), rel=0.35)
    assert var[hi].mean() > 2 * var[lo].mean() and 0.003 < r < 0.05 and f < np.sqrt(var.mean())
