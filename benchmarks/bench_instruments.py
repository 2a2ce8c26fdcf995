"""The virtual bench through the silicon drivers: SCPI latency and instrument operations.

Figures: time to open ``station:`` (board HELLO, three *IDN? and error drains), one SCPI
query round trip over pyvisa-py, a 100-point Id-Vg list sweep of one cell, one bit-line
waveform capture (arm, VMM, 1000-point WORD transfer), and full-stack VMM throughput of
``station:`` against in-process ``sim://`` (the peer). Targets are this project's own
(a 16x16 characterization must not wait on the instrument path).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import labkit
from labkit.backend import GateSweep, WaveformCapture
from simulator.bench import VirtualBench

from run_all import print_table  # noqa: E402 (benchmarks/ is on sys.path when a bench runs)


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(batch: int = 4096) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.random((batch, 16))
    x[rng.random(x.shape) < 0.4] = 0
    with tempfile.TemporaryDirectory() as tmp, VirtualBench(seed=0, station_out=Path(tmp) / "s.yaml") as bench:
        uri = f"station:{bench.station_out}"
        t0 = time.perf_counter()
        with labkit.open_backend(uri) as b:
            open_s = time.perf_counter() - t0
            smu = b.inner.smu
            query_s = _best(lambda: smu.query("*OPC?"), 200)
            sweep = b.capability(GateSweep)
            gate = np.linspace(0.0, 2.5, 100)
            idvg_s = _best(lambda: sweep.id_vg((7, 8), gate, 2e-6), 10)
            cap = b.capability(WaveformCapture)
            w = x[0] * b.settings.integration_time_s
            capture_s = _best(lambda: cap.capture_bitline(w, 0), 5)
            b.vmm_x(x[:256])  # warm up
            t0 = time.perf_counter()
            b.vmm_x(x)
            station_rate = batch / (time.perf_counter() - t0)
    with labkit.open_backend("sim://?seed=0") as s:
        s.vmm_x(x[:256])
        t0 = time.perf_counter()
        s.vmm_x(x)
        sim_rate = batch / (time.perf_counter() - t0)
    rows = [
        dict(name="open station: (board + 3 instruments)", value=open_s * 1e3, unit="ms", target="< 500", peer="-"),
        dict(name="SCPI query round trip (pyvisa-py, loopback)", value=query_s * 1e6, unit="us", target="< 2000",
             peer="-"),
        dict(name="Id-Vg, 100 points, one cell (SMU list sweep)", value=idvg_s * 1e3, unit="ms", target="< 100",
             peer="-"),
        dict(name="bit-line capture (arm, VMM, 1000 pts WORD)", value=capture_s * 1e3, unit="ms", target="< 200",
             peer="-"),
        dict(name="VMM throughput, station: full stack", value=station_rate, unit="VMM/s", target=">= 0.5 x sim",
             peer=f"sim:// {sim_rate:.0f} VMM/s"),
    ]
    rows += coverage_rows()
    print_table(rows)
    return rows


def coverage_rows() -> list[dict]:
    """Third-party driver calls that work against the emulators, and the robustness run
    (``instrument_coverage.py`` prints the call-by-call lists)."""
    import contextlib
    import io

    try:
        import instrument_coverage
    except ImportError:  # pymeasure / qcodes not installed
        return []
    with contextlib.redirect_stdout(io.StringIO()):
        got = instrument_coverage.main(["--quick"])
    rows = []
    for driver, (works, failed, not_emulated) in got["drivers"].items():
        rows.append(dict(name=f"{driver}: calls working", value=f"{works}/{works + failed + not_emulated}",
                         unit="calls", target=f"rest listed ({not_emulated} not emulated)", peer="-"))
    rob = got["robustness"]
    rows.append(dict(name="SCPI servers: crashes / hangs (random, 1 MB, 50 clients, resets)",
                     value=f"{rob['crashes']} / {rob['hangs']}", unit="", target="0 / 0", peer="-"))
    rows.append(dict(name="SCPI servers: memory growth over the robustness run", value=rob["rss_growth_mib"],
                     unit="MiB", target="< 64", peer="-"))
    return rows


if __name__ == "__main__":
    main()
