"""Run-store throughput: appending VMM points with the 1 s commit cadence on, and loading.

A point is one VMM: inputs (16 float64), outputs (16 float64) and its timestamp.
Targets: >= 50,000 points/s appended in batches of 1000 (commit cadence on, file in
WAL mode with synchronous=FULL); a 100,000-point run loaded back in < 0.5 s.
Peer: the same arrays through h5py (resizable datasets, flushed once per batch) and
np.save/np.load, measured here for comparison.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from labkit.store import RunStore  # noqa: E402

from run_all import print_table  # noqa: E402 (benchmarks/ is on sys.path when a bench runs)


def _batches(n_points: int, batch: int, rng) -> list[dict]:
    out = []
    for start in range(0, n_points, batch):
        b = min(batch, n_points - start)
        out.append({"inputs": rng.random((b, 16)), "outputs": rng.random((b, 16)) * 1e-6,
                    "t": time.time() + np.arange(b) * 1e-5})
    return out


def _write(path: Path, batches: list[dict], min_s: float = 0.0) -> tuple[int, float, int, int]:
    """Append the batches (cycled until ``min_s`` seconds have passed) and finish the run:
    (points written, seconds, number of commits, run id)."""
    store = RunStore(path)  # default commit_interval: 1 s
    commits = 0

    def count(run):
        nonlocal commits
        commits += 1

    n = 0
    t0 = time.perf_counter()
    with store.run("bench", "sim://", "bench-chip", settings={"batch": len(batches[0]["t"])}) as run:
        run.on_commit = count
        while True:
            for b in batches:
                n += run.add_points("vmm", **b)
            if time.perf_counter() - t0 >= min_s:
                break
    dt = time.perf_counter() - t0
    store.close()
    return n, dt, commits, run.id


def _load(path: Path, run_id: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    store = RunStore(path, create=False)
    pts = store.load(run_id).points("vmm")
    dt = time.perf_counter() - t0
    store.close()
    return dt, len(pts["t"])


def _h5_peer(path: Path, batches: list[dict]) -> tuple[float, float]:
    import h5py

    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = {k: f.create_dataset(k, shape=(0, *v.shape[1:]), maxshape=(None, *v.shape[1:]),
                                  dtype=v.dtype, chunks=(1024, *v.shape[1:])) for k, v in batches[0].items()}
        n = 0
        for b in batches:
            m = len(b["t"])
            for k, v in b.items():
                ds[k].resize(n + m, axis=0)
                ds[k][n:n + m] = v
            n += m
            f.flush()
    write = time.perf_counter() - t0
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        _ = {k: f[k][()] for k in f}
    return write, time.perf_counter() - t0


def _npy_load_peer(path: Path, batches: list[dict]) -> float:
    files = {}
    for k in batches[0]:
        files[k] = path.with_name(f"{path.stem}_{k}.npy")
        np.save(files[k], np.concatenate([b[k] for b in batches]))
    t0 = time.perf_counter()
    _ = {k: np.load(f, allow_pickle=False) for k, f in files.items()}
    return time.perf_counter() - t0


def main(write_s: float = 3.0, n_load: int = 100_000) -> list[dict]:
    """Appends for ``write_s`` seconds (so the 1 s commit cadence fires several times)."""
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="labkit-bench-store-") as tmp:
        tmp = Path(tmp)
        pool = _batches(20_000, 1000, rng)  # 20 distinct batches, cycled
        n, dt, commits, _ = _write(tmp / "w1000.sqlite", pool, write_s)
        h5_write, _ = _h5_peer(tmp / "peer.h5", pool)
        rows.append(dict(name="append, batches of 1000, 1 s commits", value=n / dt, unit="points/s",
                         target=">= 50000", peer=f"h5py {20_000 / h5_write:.3g}/s",
                         note=f"{n:,} points in {dt:.2f} s, {commits} commits"))
        (tmp / "w1000.sqlite").unlink()
        pool = _batches(20_000, 100, rng)
        n, dt, commits, _ = _write(tmp / "w100.sqlite", pool, write_s / 2)
        rows.append(dict(name="append, batches of 100, 1 s commits", value=n / dt, unit="points/s",
                         target="-", peer="-", note=f"{n:,} points in {dt:.2f} s, {commits} commits"))
        (tmp / "w100.sqlite").unlink()
        one = _batches(n_load, 1000, rng)
        _, _, _, rid = _write(tmp / "load.sqlite", one)
        load_s = min(_load(tmp / "load.sqlite", rid)[0] for _ in range(3))
        _, h5_load = _h5_peer(tmp / "peer100k.h5", one)
        npy_load = _npy_load_peer(tmp / "peer.npy", one)
        rows.append(dict(name=f"load a {n_load:,}-point run (open + points)", value=load_s, unit="s",
                         target="< 0.5", peer=f"h5py {h5_load:.3g} s, np.load {npy_load:.3g} s"))
        size = (tmp / "load.sqlite").stat().st_size
        rows.append(dict(name="file size per point", value=size / n_load, unit="bytes",
                         target="-", peer="raw 264"))
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
