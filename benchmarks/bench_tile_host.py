"""Host work per tile programming, this tree against a git revision, side by side in one run.

Each side programs the same LeNet-5 conv2 tiles (``ChipTile.set_weights``: mapping,
program-and-verify, baseline) onto the same emulated chip (``sim://?seed=100``) in its
own process, the sides alternating ``--repeats`` times; host work is the process CPU
time less the CPU time inside the emulated chip's primitives (ms per tile, the median
over the repeats). Both sides must give the same pulses, currents and baselines (a
digest of every tile's summary, the chip's currents and the baseline): a row says
whether they do. No chip-state file is written. ``--ref`` defaults to the merge base
with ``main``.

    python benchmarks/bench_tile_host.py [--ref REV] [--tiles 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(tiles: int) -> dict:
    """One side: program ``tiles`` tiles, return ms per tile and the digest."""
    import hashlib
    import time

    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from bench_deploy import _instrument

    from labkit.backend import open_backend
    from labkit.nn import ChipTile, analog_layers, convert
    from labkit.train.networks import lenet5

    torch.manual_seed(0)
    layer = analog_layers(convert(lenet5()))[1][1]
    w = layer.tile_weights(pad=np.nan)
    h = hashlib.sha256()
    with open_backend("sim://?seed=100") as b:
        spent = _instrument([b])
        tile = ChipTile(b, layer.config)
        tile.set_weights(w[0, 0])  # warm-up (imports, first allocations)
        spent[0] = 0.0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for j in range(tiles):
            s = dict(tile.set_weights(w[j % w.shape[0], j % w.shape[1]]))
            s.pop("elapsed_s")
            h.update(json.dumps(s, sort_keys=True).encode())
            h.update(tile.baseline_s.tobytes())
            h.update(b.inner.chip.currents().tobytes())
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"host_ms": (cpu - spent[0]) / tiles * 1e3, "chip_ms": spent[0] / tiles * 1e3,
            "wall_ms": wall / tiles * 1e3, "digest": h.hexdigest()}


def _side(root: Path, tiles: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); "
                          f"import bench_tile_host as b, json; print(json.dumps(b.worker({tiles})))"],
                         env=env, cwd=root, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(ref: str = "", tiles: int = 20, repeats: int = 3) -> list[dict]:
    root = HERE.parent
    ref = ref or subprocess.run(["git", "-C", str(root), "merge-base", "HEAD", "main"], check=True,
                                capture_output=True, text=True).stdout.strip()[:10]
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "ref"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(root), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        runs = {"ref": [], "this": []}
        for _ in range(repeats):  # alternating: a load that comes and goes hits both sides
            runs["ref"].append(_side(old, tiles))
            runs["this"].append(_side(root, tiles))
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("host_ms", "chip_ms", "wall_ms")}
           for k, v in runs.items()}
    same = len({r["digest"] for v in runs.values() for r in v}) == 1
    rows = [{"name": f"host work per tile, {ref}", "value": med["ref"]["host_ms"], "unit": "ms", "target": "-",
             "peer": f"chip {med['ref']['chip_ms']:.1f} ms, wall {med['ref']['wall_ms']:.1f} ms"},
            {"name": "host work per tile, this tree", "value": med["this"]["host_ms"], "unit": "ms", "target": "-",
             "peer": f"chip {med['this']['chip_ms']:.1f} ms, wall {med['this']['wall_ms']:.1f} ms"},
            {"name": "  ratio (reference / this)", "value": med["ref"]["host_ms"] / med["this"]["host_ms"],
             "unit": "x", "target": "> 1", "peer": f"median of {repeats} alternating runs, {tiles} tiles each"},
            {"name": "  same pulses, currents and baselines", "value": "yes" if same else "NO", "unit": "",
             "target": "yes", "peer": "digest of every tile"}]
    sys.path.insert(0, str(HERE))
    from run_all import print_table

    print_table(rows)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="", help="git revision to compare against (default: merge base with main)")
    ap.add_argument("--tiles", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    main(a.ref, a.tiles, a.repeats)
