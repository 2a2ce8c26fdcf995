"""``labkit board conformance --port URL``: run the board conformance suite and print a report.

Registered as the ``board`` entry of ``labkit.commands`` (labkit never imports drivers).
``python -m drivers.board_command conformance --port URL [--json]`` runs it without the
labkit command line. Exit code 0 when every check passes, 3 when one fails (the board
does not conform: :class:`labkit.errors.ResultError`), 2 for a usage mistake, 4 when the
port cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from labkit.errors import ResultError, exit_code

HELP = "test board tools: 'labkit board conformance --port URL' checks a board against docs/board-protocol.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="board_command", required=True, metavar="SUBCOMMAND")
    conf = sub.add_parser("conformance", help="run the protocol conformance suite against a board",
                          description="Check every command, error path, framing edge case, replay, boot id, "
                                      "limits, arm time-out and throughput of the board at --port. Applies a "
                                      "few nominal program/erase pulses: use a test chip.")
    conf.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="print one JSON object on stdout")
    conf.add_argument("--port", required=True, metavar="URL",
                      help="pyserial URL or device: /dev/ttyACM0, /dev/pts/N, socket://127.0.0.1:PORT, labkitemu://")
    conf.add_argument("--baud", type=int, default=921600, help="serial baud rate to open the port at (default 921600)")
    conf.add_argument("--link-baud", type=float, default=None, metavar="BITS_PER_S",
                      help="hold the throughput against this link rate (default: the --baud of a real serial "
                           "port; none for pty/socket/emulator URLs)")
    conf.add_argument("--timeout", type=float, default=0.5, metavar="S", help="reply time-out per request (s)")
    conf.add_argument("--vectors", type=int, default=4096, help="VMM vectors in the throughput check")
    conf.add_argument("--only", default="", metavar="CHECK,...", help="run only these checks (hello always runs)")


def _link_baud(args) -> float | None:
    if args.link_baud is not None:
        return args.link_baud
    port = args.port
    unpaced = ("socket://", "labkitemu://", "loop://", "rfc2217://", "/dev/pts/")
    return None if port.startswith(unpaced) else float(args.baud)


def run(args, out) -> dict:
    from .conformance import Suite, verdict, run_conformance

    if args.board_command != "conformance":  # pragma: no cover (argparse enforces the choice)
        raise ValueError(f"unknown board sub-command {args.board_command!r}")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ValueError(f"--timeout {args.timeout}; expected seconds > 0")
    if not 1 <= args.vectors <= 1_000_000:
        raise ValueError(f"--vectors {args.vectors}; expected 1..1000000")
    if args.baud <= 0 or (args.link_baud is not None and not args.link_baud > 0):
        raise ValueError("--baud and --link-baud must be positive")
    only = tuple(filter(None, (c.strip() for c in args.only.split(","))))
    unknown = sorted(set(only) - set(Suite.CHECKS))
    if unknown:
        raise ValueError(f"--only {','.join(unknown)}: unknown check(s); known: {', '.join(Suite.CHECKS)}")
    quiet = getattr(args, "json", False)

    def progress(check) -> None:  # one line per check on stderr while the suite runs
        print(f"  {check.name:<18} {verdict(check.ok)}", file=sys.stderr)

    report = run_conformance(args.port, baudrate=args.baud, link_baud=_link_baud(args), timeout=args.timeout,
                             vectors=args.vectors, only=only, progress=None if quiet else progress)
    result = report.to_dict()
    out.table(report.rows(), header=("check", "result", "detail"))
    passed = sum(c.ok is True for c in report.checks)
    out.print(f"{passed} passed, {len(report.failed)} failed, "
              f"{sum(c.ok is None for c in report.checks)} not applicable: "
              f"{'CONFORMS' if report.passed else 'DOES NOT CONFORM'}")
    if not report.passed:
        if quiet:  # the whole report still goes to stdout, then the one-line error
            json.dump(result, sys.stdout, allow_nan=False)
            sys.stdout.write("\n")
        raise ResultError(f"the board at {args.port!r} does not conform: {', '.join(report.failed)} failed")
    return result


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m drivers.board_command conformance --port URL``."""
    parser = argparse.ArgumentParser(prog="labkit board", description=HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_arguments(parser)
    args = parser.parse_args(argv)
    from labkit.ui.console import Console

    try:
        result = run(args, Console(quiet=args.json))
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print(f"labkit board: error: {exc}", file=sys.stderr)
        return code
    if args.json:
        json.dump(result, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
