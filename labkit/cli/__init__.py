"""The ``labkit`` command line: ``labkit <command> [--backend URI] ... [--json]``.

Each command lives in its own module under ``labkit/commands/`` (``sim.py`` is
``labkit sim ...``, with its own sub-commands such as ``serve``) and defines
``HELP``, ``add_arguments(parser)`` and ``run(args, out) -> dict``. The dict is printed
as one JSON object under ``--json``; otherwise ``run`` writes human-readable text
through ``out`` (a :class:`labkit.ui.console.Console`). A user mistake is one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

from labkit.cli import commands
from labkit.ui.console import Console


class UsageError(ValueError):
    """A user mistake: printed as one line, exit code 2."""


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield info.name, importlib.import_module(f"{commands.__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _command_modules():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Console(quiet=args.json)
    try:
        result = args._run(args, out)
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, OSError) as exc:
        print(f"labkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a fault outside the user's control: still one line
        from labkit.backend import BackendError

        if isinstance(exc, BackendError):
            print(f"labkit {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    if args.json:
        json.dump(strict_json(result or {}), sys.stdout, allow_nan=False)
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

