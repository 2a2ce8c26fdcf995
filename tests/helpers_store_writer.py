"""Child process for the run-store crash tests: writes points until it is killed.

``python tests/helpers_store_writer.py DB [--interval S] [--batch B] [--sleep S]``

Point i of table ``vmm`` has ``inputs = i + arange(16)/100``, ``outputs = -inputs`` and
``t = i``, so a reader can check that what it finds is exactly points 0..M-1.
Lines on stdout (each one atomic ``os.write``):
``run ID`` once; ``wrote N T`` after each add_points returned (N points handed to the
store in total, T = time.time()); ``committed N`` after each commit of the store.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from labkit.store import RunStore, sigterm_as_keyboard_interrupt


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def batch(start: int, n: int) -> dict[str, np.ndarray]:
    idx = np.arange(start, start + n, dtype=np.float64)
    inputs = idx[:, None] + np.arange(16) / 100.0
    return {"inputs": inputs, "outputs": -inputs, "t": idx}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--sleep", type=float, default=0.01)
    a = ap.parse_args()
    store = RunStore(a.db, commit_interval=a.interval)
    try:
        with sigterm_as_keyboard_interrupt(), store.run("crashtest", "sim://", "chip-x",
                                                        settings={"batch": a.batch}) as run:
            run.on_commit = lambda r: say(f"committed {r.committed.get('vmm', 0)}")
            say(f"run {run.id}")
            written = 0
            while True:
                written += run.add_points("vmm", **batch(written, a.batch))
                say(f"wrote {written} {time.time():.6f}")
                time.sleep(a.sleep)
    except KeyboardInterrupt:
        say("aborted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
