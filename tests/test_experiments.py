"""The bench scripts in experiments/: each runs as a real subprocess (``--quick``, sim://
unless said otherwise) and leaves the outputs its docstring promises, with figures that
make sense (SER ordering, programming accuracy, refresh after drift)."""

from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from labkit.calibrate import read_calibration
from labkit.program.chipstate import ChipState
from labkit.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
PNG = b"\x89PNG\r\n\x1a\n"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LABKIT_STORE"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def run_script(name: str, *args: str, cwd: Path, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / name), *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{name} {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_every_script_documents_itself():
    """A module docstring saying what it does, writes and how to run it; --backend everywhere."""
    for script in ("characterize.py", "calibrate.py", "program_weights.py", "paper_figures.py"):
        text = (EXPERIMENTS / script).read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "What it writes" in doc or "writes into" in doc, script
        assert f"python experiments/{script}" in doc, script
        assert '"--backend"' in text and 'if __name__ == "__main__":' in text, script


def test_characterize_quick(tmp_path):
    proc = run_script("characterize.py", "--quick", "--out", "runs.sqlite", cwd=tmp_path)
    report = tmp_path / "runs-run1.png"
    assert _is_png(report)
    assert "runs-run1.png" in proc.stdout and "noise floor SER" in proc.stdout
    with RunStore(tmp_path / "runs.sqlite", create=False) as store:
        run = store.load("latest")
        assert (run.kind, run.status, run.backend_uri) == ("characterize", "completed", "sim://")
        for table in ("baseline", "vmm_random", "vmm_onehot", "vmm_repeat", "crosstalk", "droop", "retention"):
            assert run.tables.get(table, 0) > 0, table
        s = run.result
        assert 25 < s["noise_floor_ser_db"] < 45  # the emulated chip: 5-6 effective bits
        assert 1e-9 < s["cell_current_median_a"] < 1e-6
        assert s["report"].endswith("runs-run1.png")
        assert run.settings["read_voltage_v"] == pytest.approx(1.8)


def test_characterize_on_the_virtual_bench(tmp_path):
    """The README's second recipe: `labkit sim serve --station-out` and a station: backend."""
    station = tmp_path / "bench.yaml"
    server = subprocess.Popen([sys.executable, "-m", "labkit.cli", "sim", "serve", "--seed", "2", "--station-out",
                               str(station), "--duration", "90"], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not station.exists():
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "virtual bench did not write its station file"
            time.sleep(0.1)
        run_script("characterize.py", "--quick", "--backend", f"station:{station}", "--out", "runs.sqlite",
                   cwd=tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=30)
    with RunStore(tmp_path / "runs.sqlite", create=False) as store:
        run = store.load("latest")
        assert run.status == "completed" and run.chip_id == "EMU-0002"
        assert "socket://127.0.0.1" in run.provenance["station_file"]["text"]
        assert "keithley" in json.dumps(run.provenance["identity"]["instruments"]).lower()
        assert run.result["idvg_path"] == "source-measure"  # through the SMU of the station file
        assert any("retention" in s for s in run.result["skipped"])  # a bench has no virtual clock


def test_program_weights_file_then_refresh(tmp_path):
    w = np.random.default_rng(5).uniform(-1, 1, (16, 8))
    np.savez(tmp_path / "w.npz", weights=w)
    proc = run_script("program_weights.py", "w.npz", "--quick", "--refresh", "--age", "1e5", "--out", "runs.sqlite",
                      cwd=tmp_path)
    state = ChipState.load(tmp_path / "chipstate-EMU-0000.json")
    np.testing.assert_allclose(state.weights, w)
    assert state.count("done") == 256 and state.run_status == "complete"
    with RunStore(tmp_path / "runs.sqlite", create=False) as store:
        run = store.load("latest")
        jobs = run.result["jobs"]
        assert jobs["program"]["within_tolerance_fraction"] == 1.0
        assert jobs["program"]["weight_max_error"] < 0.05
        assert jobs["drift"]["out_of_tolerance"] > 50  # a day of retention loss on the emulated chip
        assert jobs["refresh"]["within_tolerance_fraction"] == 1.0 and jobs["refresh"]["pulses_total"] > 0
        assert jobs["refresh"]["pulses_total"] < jobs["program"]["pulses_total"]  # touch-up, not a rewrite
        np.testing.assert_allclose(run.arrays["achieved_a"], state.achieved_a)
    assert _is_png(tmp_path / run.result["report"])
    assert "refresh" in proc.stdout


def test_program_weights_refuses_bad_weights_before_any_pulse(tmp_path):
    np.savez(tmp_path / "w.npz", weights=np.full((16, 8), 1.5))
    proc = run_script("program_weights.py", "w.npz", "--out", "runs.sqlite", cwd=tmp_path, ok=False)
    assert proc.returncode != 0 and "outside [-1, 1]" in proc.stderr
    assert not (tmp_path / "chipstate-EMU-0000.json").exists()


def test_calibrate_quick_and_refit(tmp_path):
    proc = run_script("calibrate.py", "--quick", "--backend", "sim://?seed=1", "--out", "runs.sqlite", cwd=tmp_path)
    cal = read_calibration(tmp_path / "calibration-EMU-0001.npz", "EMU-0001")
    ser = cal.report["ser_db"]
    floor = cal.report["noise_floor_ser_db"]
    assert ser["naive"] < ser["linear"] < ser["model"] <= floor + 0.5
    assert floor - ser["model"] < 2.0  # the model-based extraction reaches the noise floor
    assert ser["model, no crosstalk"] < ser["model"] and ser["model, no droop"] < ser["model"]
    assert cal.run_ids == [1] and "noise floor" in proc.stdout
    with RunStore(tmp_path / "runs.sqlite", create=False) as store:
        run = store.load(1)
        assert run.kind == "calibrate" and run.result["calibration_file"].endswith("calibration-EMU-0001.npz")
    # the stored datasets fit again without the chip, to the same figures
    run_script("calibrate.py", "--quick", "--out", "runs.sqlite", "--refit", "1", "--file", "refit.npz", cwd=tmp_path)
    again = read_calibration(tmp_path / "refit.npz", "EMU-0001")
    for method in ("naive", "linear", "model"):
        assert again.report["ser_db"][method] == pytest.approx(ser[method], abs=0.3)


def test_paper_figures(tmp_path):
    """(a) SER per method on two emulated chips and (b) the MLP in every training mode,
    deployed on emulated chips (the smallest sizes: --quick)."""
    proc = run_script("paper_figures.py", "--quick", "--seeds", "3", "4", "--networks", "mlp", "--out-dir", "figs",
                      cwd=tmp_path, timeout=240)
    out = tmp_path / "figs"
    assert _is_png(out / "ser_per_method.png")
    with open(out / "ser_per_method.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["chip_id"] for r in rows] == ["EMU-0003", "EMU-0004"]
    assert [r["backend"] for r in rows] == ["sim://?seed=3", "sim://?seed=4"]
    for r in rows:
        naive, linear, model, floor = (float(r[f"holdout_{k}_db"]) for k in ("naive", "linear", "model", "floor"))
        assert naive < linear < model <= floor + 0.5
        assert float(r["model_over_naive"]) > 2.0  # the paper: model-based at least doubles the naive SER
        assert float(r["activations_model_db"]) > float(r["activations_naive_db"]) + 3
        assert (out / Path(r["calibration_file"]).name).is_file()
    with RunStore(out / "runs.sqlite", create=False) as store:
        assert [r.kind for r in store.list_runs()] == ["calibrate", "calibrate"]
    assert "model/naive" in proc.stdout and "mean" in proc.stdout

    # (b): accuracy per network and training mode, through train_and_deploy.py
    assert _is_png(out / "accuracy.png")
    with open(out / "accuracy.csv") as f:
        (mlp,) = list(csv.DictReader(f))
    assert mlp["network"] == "mlp" and int(mlp["tiles"]) == 8
    acc = {k: float(mlp[k]) for k in ("software", "ideal_deployed", "hw_model", "hw_deployed", "in_loop_deployed")}
    assert all(0.1 < v <= 1.0 for v in acc.values()), acc  # better than chance (10 classes)
    assert acc["hw_deployed"] > acc["ideal_deployed"] + 0.05, acc  # hardware-aware training pays on chips
    figures = json.loads((out / "figures.json").read_text())
    assert figures["seeds"] == [3, 4] and len(figures["ser"]) == 2 and figures["accuracy"][0]["network"] == "mlp"
