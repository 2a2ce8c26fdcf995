"""``python -m tests.adversarial [--only KIND]``: run the whole corpus and print the counts."""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

from tests.adversarial.corpus import build
from tests.adversarial.harness import run_case


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default=None, help="run only cases whose kind contains this text")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--show", action="store_true", help="print every case's stderr line")
    args = ap.parse_args(argv)
    import labkit.cli  # noqa: F401  (imported once, before the children fork)
    import torch  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        cases = [c for c in build(Path(tmp)) if not args.only or args.only in c.kind]
        counts = collections.Counter()
        by_kind = collections.defaultdict(collections.Counter)
        for k, case in enumerate(cases):
            o = run_case(case, args.timeout, cwd=tmp)
            counts[o.verdict] += 1
            by_kind[case.kind][o.verdict] += 1
            if o.verdict != "ok" or args.show:
                line = (o.stderr.strip().splitlines() or [""])[-1][:160]
                print(f"[{k + 1}/{len(cases)}] {o.verdict:<16} {case.name}  ->  {line}"
                      + (f"  (touched {o.touched})" if o.touched else ""), flush=True)
        if (Path(tmp) / "PWNED").exists():
            counts["code executed from a file"] += 1
    print(f"\n{len(cases)} inputs: " + ", ".join(f"{v} {k}" for k, v in counts.most_common()))
    for kind, c in sorted(by_kind.items()):
        print(f"  {kind:<18} " + ", ".join(f"{v} {k}" for k, v in c.most_common()))
    return 0 if set(counts) <= {"ok"} else 1


if __name__ == "__main__":
    sys.exit(main())
