"""Deployment wall time: LeNet-5 (497 tiles) on emulated chips, one run, side by side.

Rows: one chip (time-multiplexed: 497 programmings) and one chip per tile (497 chips),
each with 1 and 2 worker processes (``torch.distributed``, gloo on loopback: the chips
spread over the processes; one chip is driven by one process, so the one-chip row has
no 2-process twin). The time inside the emulated chips (every call that reaches
a raw backend: reads, pulses, erases, VMMs) is measured apart from the host's own work
(mapping, scheduling, digital glue, the partial sums), since for a real bench the host
share must stay small next to the programming time. The network is LeNet-5 converted to
analog tiles with nominal parameters (the timing does not depend on training);
``--images`` sets the test images (default 1,000). Chip and host shares are CPU seconds.

    python benchmarks/bench_deploy.py [--images 1000] [--skip-per-tile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHIPS = "sim://?seed=100"


def _instrument(backends) -> list[float]:
    """Accumulate the CPU seconds spent inside each raw backend's primitives (thread CPU
    time: chips run in parallel threads, so wall time would count waits twice)."""
    spent = [0.0]
    for b in backends:
        inner = b.inner
        for name in ("read_currents", "program_pulses", "erase_rows", "vmm", "configure"):
            method = getattr(inner, name)

            def timed(*a, _m=method, **k):
                t0 = time.thread_time()
                try:
                    return _m(*a, **k)
                finally:
                    spent[0] += time.thread_time() - t0
            setattr(inner, name, timed)
    return spent


def worker(images: int, chips: int, out: str) -> None:
    """One process's share of a deployment of LeNet-5 on ``chips`` chips."""
    import contextlib

    import torch

    from labkit.backend import chip_uris, open_backend
    from labkit.deploy import multiplex
    from labkit.nn import ChipTile, analog_layers, convert
    from labkit.train.networks import lenet5

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = convert(lenet5())
    cfg = analog_layers(model)[0][1].config
    x = torch.rand(images, 1, 28, 28)
    uris = chip_uris(CHIPS, chips)
    with contextlib.ExitStack() as stack:
        opened = {}

        def chip(k: int) -> ChipTile:
            opened[k] = stack.enter_context(open_backend(uris[k]))
            return ChipTile(opened[k], cfg)

        t0, cpu0 = time.perf_counter(), time.process_time()
        pool = multiplex.ChipPool.distributed(chip, chips) if distributed else \
            multiplex.ChipPool([chip(k) for k in range(chips)])
        spent = _instrument(opened.values())
        with torch.no_grad():
            multiplex.multiplexed(model, pool)(x)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rank = int(os.environ.get("RANK", "0"))
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "wall_s": wall, "cpu_s": cpu, "chip_s": spent[0], "programmings": sum(g.programmings for g in pool.logs),
        "vmms": sum(g.vmms for g in pool.logs)}))
    if distributed:
        dist.destroy_process_group()


def _run(images: int, chips: int, procs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo",
                   PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        args = [str(HERE / "bench_deploy.py"), "--worker", str(images), str(chips), tmp]
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *args]
               if procs > 1 else [sys.executable, *args])
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        total = time.perf_counter() - t0
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]
    wall = max(r["wall_s"] for r in ranks)
    chip = sum(r["chip_s"] for r in ranks)
    return {"wall_s": wall, "chip_s": chip, "host_s": sum(r["cpu_s"] for r in ranks) - chip,
            "programmings": sum(r["programmings"] for r in ranks), "vmms": sum(r["vmms"] for r in ranks),
            "process_s": total}


def main(images: int = 100, per_tile: bool = True) -> list[dict]:
    """The rows; ``make bench`` runs 100 images (the command line's default is 1,000)."""
    rows = []
    for chips in ([1, 497] if per_tile else [1]):
        for procs in (1, 2):
            if chips < procs:
                continue
            r = _run(images, chips, procs)
            label = f"LeNet-5 on {chips} chip{'s' if chips > 1 else ''}, {procs} process{'es' if procs > 1 else ''}"
            rows.append({"name": f"{label}: wall", "value": r["wall_s"], "unit": "s", "target": "-",
                         "peer": f"{r['programmings']} programmings, {r['vmms']} VMMs, {images} images"})
            rows.append({"name": "  inside the emulated chips (CPU)", "value": r["chip_s"], "unit": "s",
                         "target": "-", "peer": "summed over processes"})
            rows.append({"name": "  host work (CPU: planning, mapping, glue)", "value": r["host_s"], "unit": "s",
                         "target": "small next to programming", "peer": f"{r['host_s'] / max(r['programmings'], 1) * 1e3:.1f} ms per tile"})
    sys.path.insert(0, str(HERE))
    from run_all import print_table

    print_table(rows)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--images", type=int, default=1000)
        ap.add_argument("--skip-per-tile", action="store_true", help="only the one-chip rows")
        a = ap.parse_args()
        main(a.images, not a.skip_per_tile)
