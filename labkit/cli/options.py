"""Options that several commands share, declared once: a name means the same thing in
every command, and its value is checked when the command line is parsed, before
anything opens a chip.

``add(parser, "backend", "store", "seed")`` adds them; ``count(lo, hi)`` and
``number(lo, hi)`` are argparse types for bounded integers and floats.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path


def count(lo: int, hi: int, what: str = "an integer"):
    """argparse type: an integer in ``[lo, hi]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}; expected {what} in [{lo}, {hi}]") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value}; expected {what} in [{lo}, {hi}]")
        return value
    parse.__name__ = "integer"
    return parse


def number(lo: float, hi: float, what: str = "a number", open_low: bool = False):
    """argparse type: a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``open_low``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (lo < value if open_low else lo <= value) and value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r}; expected {what} in {'(' if open_low else '['}{lo:g}, {hi:g}]")
        return value
    parse.__name__ = "number"
    return parse


def output_file(what: str):
    """argparse type: a file path to write: not a directory, in a writable directory
    that exists (checked now, so a run never measures for a file it cannot write)."""
    def parse(text: str) -> str:
        p = Path(text)
        parent = p.resolve().parent
        if p.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a directory; expected a {what} file")
        if not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r}: directory {parent} does not exist")
        try:  # a real probe (root passes os.access on read-only files such as /proc/version)
            if p.exists():
                with open(p, "ab"):
                    pass
            else:
                tempfile.TemporaryFile(dir=parent).close()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not writable ({exc.strerror}); expected a {what} file") from None
        return text
    parse.__name__ = "path"
    return parse


SEED = count(0, 2**32 - 1, "a seed")

COMMON: dict[str, tuple[tuple[str, ...], dict]] = {
    "backend": (("--backend",), dict(default="sim://", metavar="URI",
                                     help="backend: sim://?seed=N (emulated) or station:FILE.yaml (default sim://)")),
    "store": (("--out",), dict(metavar="DB", default=None, type=output_file("run store"),
                               help="run store file (default $LABKIT_STORE or ./labkit-runs.sqlite)")),
    "seed": (("--seed",), dict(type=SEED, default=0, help="seed (default 0)")),
    "data": (("--data",), dict(metavar="DIR", default=None, help="data set directory (MNIST IDX / CIFAR-10)")),
    "subset": (("--subset",), dict(type=count(1, 10_000_000, "a number of examples"), default=None, metavar="N",
                                   help="use at most N examples")),
}


def add(parser: argparse.ArgumentParser, *names: str, **helps: str) -> None:
    """Add the shared options ``names``; ``helps`` replaces an option's help text
    (what it is for in this command), never its meaning."""
    for name in names:
        flags, kwargs = COMMON[name]
        parser.add_argument(*flags, **{**kwargs, **({"help": helps[name]} if name in helps else {})})
