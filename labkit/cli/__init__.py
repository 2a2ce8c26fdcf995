"""The ``labkit`` command line: ``labkit <command> [--backend URI] ... [--json]``.

Each command is a module that defines ``HELP``, ``add_arguments(parser)`` and
``run(args, out) -> dict``. Built-in commands live in ``labkit/cli/commands/``; other
packages contribute theirs through the ``labkit.commands`` entry point group (the
``simulator`` package adds ``labkit sim serve``). The dict is printed as one JSON object
under ``--json``; otherwise ``run`` writes human-readable text through ``out`` (a
:class:`labkit.ui.console.Console`).

Every error is one line on stderr with an exit code by kind (:mod:`labkit.errors`):
2 a user mistake (nothing was applied to a chip), 3 a result outside tolerance, 4 a
link or instrument fault, 130 interrupted. Only a bug prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from importlib.metadata import entry_points

from labkit.cli import commands
from labkit.errors import UsageError, exit_code
from labkit.ui.console import Console

__all__ = ["main", "build_parser", "strict_json", "UsageError"]


def command_modules() -> dict[str, object]:
    """Command name -> module: the built-in ones, then the ``labkit.commands`` entry points."""
    found = {}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            found[info.name] = importlib.import_module(f"{commands.__name__}.{info.name}")
    for ep in sorted(entry_points(group="labkit.commands"), key=lambda e: e.name):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return found


class _Parser(argparse.ArgumentParser):
    """An argument error is one line too (not argparse's usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="labkit", description="measure, calibrate, train, program and deploy analog VMM chips")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in command_modules().items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line argument error already printed
        return exc.code if isinstance(exc.code, int) else 2
    out = Console(quiet=args.json)
    try:
        result = args._run(args, out)
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RecursionError) as exc:  # a hostile or oversized input
        print(f"labkit {args.command}: error: input too large ({type(exc).__name__})", file=sys.stderr)
        return 2
    except Exception as exc:
        code = exit_code(exc)
        if code is None and isinstance(exc, OSError):  # a path the user named
            code = 2
        if code is None:
            raise
        print(f"labkit {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return code
    if args.json and result is not None:  # None: nothing to report (a torchrun rank other than 0)
        json.dump(strict_json(result), sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    return 0


def strict_json(obj):
    """Plain JSON values: numpy to lists/scalars, non-finite floats (an unbounded SER) to null."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
