"""Wall time of the standard characterization of an emulated chip (target: < 60 s on two cores).

Figures: the suite itself (routines writing every point to a run store), the whole
``labkit characterize --backend sim://`` command in a fresh process (imports, store,
PNG report), its ``--quick`` form, and the same suite through the virtual bench
(``station:``: loopback TCP board protocol and pyvisa-py instruments).
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

import labkit  # noqa: E402
from labkit import measure as ch  # noqa: E402
from labkit.store import RunStore  # noqa: E402

from run_all import print_table  # noqa: E402 (benchmarks/ is on sys.path when a bench runs)


def _suite(uri_or_cm, tmp: Path, name: str) -> tuple[float, int, dict]:
    cm = labkit.open_backend(uri_or_cm) if isinstance(uri_or_cm, str) else uri_or_cm
    with cm as b, RunStore(tmp / f"{name}.sqlite") as store:
        with store.run("characterize", str(uri_or_cm), b.identity.chip_id) as run:
            t0 = time.perf_counter()
            res = ch.run_standard(b, ch.SuiteConfig(), run=run)
            wall = time.perf_counter() - t0
    n = (res.baseline.n + len(res.random.x) + len(res.onehot.x) + res.repeats.y_s.shape[0] * res.repeats.y_s.shape[1]
         + len(res.activations.x) + res.config.crosstalk_repeats * (1 + 16 * len(res.config.crosstalk_widths))
         + len(res.droop.x_levels) * res.config.droop_repeats)
    return wall, n, res.summary()


def _cli(args: list[str], tmp: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "labkit.cli", "characterize", *args, "--out", str(tmp / "cli.sqlite"),
                           "--json"], cwd=tmp, capture_output=True, text=True, env={**os.environ,
                           "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return wall


def main() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-characterize-") as d:
        tmp = Path(d)
        wall, n, s = _suite("sim://", tmp, "suite")
        rows.append(dict(name="standard characterization of sim:// (suite + store)", value=wall, unit="s",
                         target="< 60", peer="-"))
        rows.append(dict(name="  VMMs in the suite / throughput", value=n / wall, unit="VMM/s",
                         target=f"{n} VMMs", peer="-"))
        rows.append(dict(name="  noise floor / crosstalk / droop measured", value=s["noise_floor_ser_db"], unit="dB",
                         target=f"{1e3 * s['crosstalk_mean_v']:.2f} mV, {100 * s['droop_fraction']:.1f} %",
                         peer="-"))
        rows.append(dict(name="labkit characterize --backend sim:// (process, report)",
                         value=_cli(["--backend", "sim://"], tmp), unit="s", target="< 60", peer="-"))
        rows.append(dict(name="labkit characterize --quick (process, report)",
                         value=_cli(["--backend", "sim://", "--quick"], tmp), unit="s", target="-", peer="-"))
        try:
            from tests.fixtures_bench import virtual_bench_backend
        except ImportError:
            virtual_bench_backend = None
        if virtual_bench_backend is not None:
            wall, n, _ = _suite(virtual_bench_backend(seed=0), tmp, "station")
            rows.append(dict(name="same suite through the virtual bench (station:)", value=wall, unit="s",
                             target="-", peer="sim:// above"))
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
