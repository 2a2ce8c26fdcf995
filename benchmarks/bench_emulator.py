"""Emulator VMM throughput on one CPU core with every non-ideality on, and its accuracy.

Target: >= 10,000 VMMs/s, with integration error < 0.05 % of full scale against a
10x finer reference (both printed).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

from simulator.chip import Switches, VirtualChip  # noqa: E402

from run_all import print_table  # noqa: E402 (benchmarks/ is on sys.path when a bench runs)


def main(batch: int = 20_000) -> list[dict]:
    chip = VirtualChip(seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 16))
    x[rng.random(x.shape) < 0.4] = 0
    widths = x * chip.settings.integration_time_s
    chip.vmm(widths[:1024])  # warm up
    t0 = time.perf_counter()
    chip.vmm(widths)
    rate = batch / (time.perf_counter() - t0)

    ref = VirtualChip(seed=0, switches=Switches(noise=False))
    ref.erase(np.arange(16), 12.0, 0.3e-3)  # large currents: the strongest droop, the hardest case
    coarse = ref.integrate(widths[:2048])
    fine = ref.integrate(widths[:2048], substeps=10 * ref.substeps)
    fs = ref.sheet.precharge_v - ref.sheet.threshold_v
    err = 100 * np.abs(coarse - fine).max() / fs
    rows = [
        dict(name="emulator VMM throughput (1 core, all non-idealities)", value=rate, unit="VMM/s",
             target=">= 10000", peer="-"),
        dict(name="emulator integration error vs 10x finer", value=err, unit="% FS", target="< 0.05", peer="-"),
    ]
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
