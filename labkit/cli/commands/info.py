"""``labkit info``: who is on the other end of a backend URI."""

from __future__ import annotations

import dataclasses

from labkit.backend import open_backend
from labkit.cli import options

HELP = "show identity, geometry, operating point and safety limits of a backend"


def add_arguments(parser) -> None:
    options.add(parser, "backend")


def run(args, out) -> dict:
    with open_backend(args.backend) as b:
        info = {
            "backend": args.backend,
            **dataclasses.asdict(b.identity),
            "rows": b.geometry.rows,
            "cols": b.geometry.cols,
            "pairs": [list(p) for p in b.geometry.pairs],
            "settings": dataclasses.asdict(b.settings),
            "envelope": dataclasses.asdict(b.envelope),
            "datasheet": dataclasses.asdict(b.datasheet),
            "temperature_k": b.temperature_k(),
        }
    out.table([(k, v) for k, v in info.items() if k not in ("pairs",)], header=("field", "value"))
    return info
