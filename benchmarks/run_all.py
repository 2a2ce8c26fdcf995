"""Run every performance benchmark of the project and print one table.

Each ``benchmarks/bench_*.py`` has a ``main()`` returning rows
``{name, value, unit, target, peer}``; each runs in its own process (so thread
settings and imports do not leak between benchmarks). Usage::

    python benchmarks/run_all.py [--only NAME ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import machine

HERE = Path(__file__).resolve().parent
MARK = "@@BENCH_ROWS@@"
RUNNER = (
    "import json, sys; sys.path.insert(0, {here!r}); import {mod} as m; "
    "rows = m.main(); print({mark!r} + json.dumps(rows, default=str))"
)


def run_one(path: Path, timeout_s: float) -> tuple[list[dict], float, str]:
    code = RUNNER.format(here=str(HERE), mod=path.stem, mark=MARK)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout_s, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return [], time.perf_counter() - t0, f"timed out after {timeout_s:.0f} s"
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):]), wall, ""
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return [], wall, f"failed (exit {proc.returncode}): {tail[0]}"


def fmt(value) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.4g}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    """Rows ``{name, value, unit, target, peer}`` as one aligned table (also what each
    benchmark prints when run on its own), each row with the CPU it ran on."""
    header = ["figure", "value", "unit", "target", "peer (same run)", "cpu"]
    print(f"machine: {machine.describe()}")
    table = [[r.get("name", ""), fmt(r.get("value", "")), r.get("unit", ""), r.get("target", ""),
              fmt(r.get("peer", "")), r.get("cpu", machine.short())] for r in rows]
    widths = [max(len(str(row[i])) for row in table + [header]) for i in range(len(header))]
    for k, row in enumerate([header] + table):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="benchmark names, e.g. emulator store")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per benchmark")
    ap.add_argument("--json", metavar="FILE", help="also write all rows to FILE")
    args = ap.parse_args(argv)
    paths = sorted(HERE.glob("bench_*.py"))
    if args.only:
        paths = [p for p in paths if p.stem.removeprefix("bench_") in args.only]
    table, failed = [], 0
    for path in paths:
        print(f"running {path.stem} ...", file=sys.stderr, flush=True)
        rows, wall, error = run_one(path, args.timeout)
        if error:
            failed += 1
            table.append({"name": path.stem, "value": "ERROR", "target": error})
        table.extend({**r, "cpu": machine.short(), "machine": machine.describe()} for r in rows)
        print(f"  {path.stem}: {wall:.1f} s", file=sys.stderr)
    print_table(table)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
