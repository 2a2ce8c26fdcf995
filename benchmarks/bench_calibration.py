"""Calibration of emulated chips: wall time (measure + fit) and SER of each extraction.

For three chip seeds (every non-ideality on): the time of one array's calibration
(the calibration datasets measured into a run store, then the naive, linear and
model-based fits and the SER report), the SER of each extraction on held-out random
and held-out activation-like patterns, and the noise floor from repeated patterns.
Targets: calibration < 60 s on two cores; model-based SER >= naive + 3 dB (the
published result is a doubling) and within 1 dB of the noise floor. Then the whole
``labkit calibrate`` command in a fresh process.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import labkit  # noqa: E402
from labkit import calibrate as cal  # noqa: E402
from labkit.store import RunStore  # noqa: E402

from run_all import print_table  # noqa: E402 (benchmarks/ is on sys.path when a bench runs)

SEEDS = (0, 1, 2)


def _one(uri: str, db: Path) -> tuple[float, dict]:
    with labkit.open_backend(uri) as b, RunStore(db) as store:
        t0 = time.perf_counter()
        with store.run("calibrate", uri, b.identity.chip_id, settings=b.settings,
                       provenance=b.provenance()) as run:
            result = cal.calibrate(b, cal.CalibrationConfig(), run=run)
        wall = time.perf_counter() - t0
    return wall, result.report


def _cli(tmp: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "labkit.cli", "calibrate", "--backend", "sim://", "--json",
                           "--out", str(tmp / "cli.sqlite"), "--file", str(tmp / "cli.npz")],
                          cwd=tmp, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return wall


def main() -> list[dict]:
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as d:
        tmp = Path(d)
        for seed in SEEDS:
            uri = f"sim://?seed={seed}"
            wall, rep = _one(uri, tmp / f"seed{seed}.sqlite")
            ser, act = rep["ser_db"], rep["ser_activations_db"]
            floor, afloor = rep["noise_floor_ser_db"], rep["noise_floor_activations_ser_db"]
            rows.append(dict(name=f"calibrate {uri} (measure + fit + report)", value=wall, unit="s",
                             target="< 60", peer=f"measure {rep['measure_duration_s']:.1f} s, fit "
                                                 f"{rep['fit_duration_s']:.1f} s, {rep['fit']['iterations']} it"))
            for m in cal.METHODS:
                rows.append(dict(name=f"  SER {m}, held-out random", value=ser[m], unit="dB",
                                 target=f">= {floor - 1:.1f} (floor - 1)" if m == "model" else "-",
                                 peer=f"naive {ser['naive']:.1f}" if m != "naive" else "-"))
            rows.append(dict(name="  noise floor, random (repeats)", value=floor, unit="dB", target="-", peer="-"))
            rows.append(dict(name="  model - naive, held-out random", value=ser["model"] - ser["naive"], unit="dB",
                             target=">= 3", peer="paper: +3 dB (x2)"))
            rows.append(dict(name="  noise floor - model, held-out random", value=floor - ser["model"], unit="dB",
                             target="< 1", peer="-"))
            for m in cal.METHODS:
                rows.append(dict(name=f"  SER {m}, held-out activation-like", value=act[m], unit="dB",
                                 target=f">= {afloor - 1:.1f} (floor - 1)" if m == "model" else "-", peer="-"))
            rows.append(dict(name="  noise floor, activation-like (repeats)", value=afloor, unit="dB", target="-",
                             peer="-"))
        rows.append(dict(name="labkit calibrate --backend sim:// (fresh process)", value=_cli(tmp), unit="s",
                         target="< 60", peer="-"))
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
