"""Emulator VMM throughput on one CPU core, and its accuracy, for the model-form chip
(``preset=model``, today's default) and with every second-order effect on
(``preset=silicon``: the integration runs in C, ``simulator/integrate.c``).

Targets: >= 10,000 VMMs/s for the model form; >= 30,000 (stretch 100,000) with every
effect on; integration error < 0.05 % of full scale against a 10x finer reference.
The CPU model is printed with each throughput row.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import dataclasses  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from simulator.chip import Switches, VirtualChip  # noqa: E402

from run_all import print_table  # noqa: E402 (benchmarks/ is on sys.path when a bench runs)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def throughput(switches: Switches, widths: np.ndarray) -> float:
    """VMMs/s of one chip on one core (best of three passes over ``widths``)."""
    return best_of_three(VirtualChip(seed=0, switches=switches).vmm, widths)


def best_of_three(vmm, widths: np.ndarray) -> float:
    """VMMs/s of ``vmm`` over ``widths``, best of three passes after a warm-up (which also
    builds the C kernel once)."""
    vmm(widths[:1024])
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        vmm(widths)
        best = max(best, len(widths) / (time.perf_counter() - t0))
    return best


def backend_throughput(uri: str, widths: np.ndarray) -> float:
    """VMMs/s through the labkit backend ``uri`` (``SafeArray.vmm``: the URI's switches,
    the safety checks), one core, best of three passes."""
    from labkit.backend.registry import open_backend

    with open_backend(uri) as chip:
        return best_of_three(chip.vmm, widths)


def integration_error(switches: Switches, widths: np.ndarray) -> float:
    """Worst integration error (% of full scale) against 10x finer RK4 steps, at large
    currents (all rows erased: the strongest droop, the hardest case)."""
    ref = VirtualChip(seed=0, switches=dataclasses.replace(switches, noise=False))
    ref.erase(np.arange(16), 12.0, 0.3e-3)
    coarse = ref.integrate(widths[:2048])
    fine = ref.integrate(widths[:2048], substeps=10 * ref.substeps)
    fs = ref.sheet.precharge_v - ref.sheet.threshold_v
    return 100 * np.abs(coarse - fine).max() / fs


def main(batch: int = 20_000) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.random((batch, 16))
    x[rng.random(x.shape) < 0.4] = 0
    widths = x * VirtualChip(seed=0).settings.integration_time_s
    cpu = cpu_model()
    model, silicon = Switches.preset("model"), Switches.preset("silicon")
    rows = [
        dict(name=f"emulator VMM/s, preset=model (1 core, {cpu})", value=throughput(model, widths), unit="VMM/s",
             target=">= 10000", peer="-"),
        dict(name=f"emulator VMM/s, preset=silicon, every effect on (1 core, {cpu})",
             value=throughput(silicon, widths), unit="VMM/s", target=">= 30000 (stretch 100000)", peer="-"),
        dict(name=f"emulator VMM/s through sim://?preset=silicon (labkit backend, 1 core, {cpu})",
             value=backend_throughput("sim://?preset=silicon", widths), unit="VMM/s",
             target=">= 30000 (stretch 100000)", peer="-"),
        dict(name="emulator integration error vs 10x finer, preset=model", value=integration_error(model, widths),
             unit="% FS", target="< 0.05", peer="-"),
        dict(name="emulator integration error vs 10x finer, preset=silicon",
             value=integration_error(silicon, widths), unit="% FS", target="< 0.05", peer="-"),
    ]
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
