"""``labkit sim serve``: run the virtual bench (emulated board and instruments on loopback).

Contributed to the ``labkit`` command line by the ``simulator`` package through the
``labkit.commands`` entry point (labkit itself names no backend).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time

HELP = "emulated bench: 'labkit sim serve' serves a virtual chip, board and instruments on 127.0.0.1"


def _pairs(text: str, what: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} {item!r}; expected KEY=VALUE[,KEY=VALUE...]")
        out[key.strip()] = value.strip()
    return out


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="sim_command", required=True, metavar="SUBCOMMAND")
    serve = sub.add_parser("serve", help="serve the virtual bench until stopped (Ctrl-C / SIGTERM)",
                           description="Serve one emulated chip behind a test board (socket://) and a "
                                       "Keithley 2400, a Keysight InfiniiVision and a Lake Shore 336 "
                                       "(TCPIP::127.0.0.1::PORT::SOCKET), bound to 127.0.0.1 only. "
                                       "The station file is written once everything listens.")
    serve.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print one JSON object on stdout (when stopped)")
    serve.add_argument("--seed", type=int, default=0, help="emulated chip seed (default 0)")
    serve.add_argument("--chip", default="", metavar="K=V,...",
                       help="sim:// chip options, e.g. preset=quiet,crosstalk=0")
    serve.add_argument("--faults", default="", metavar="K=V,...",
                       help="board link faults, e.g. drop=0.01,corrupt=0.001,fault_seed=1")
    serve.add_argument("--baud", type=float, default=None, help="pace the board link like a UART at this baud rate")
    serve.add_argument("--station-out", default=None, metavar="FILE",
                       help="write the station file here once ready (removed on exit); "
                            "without it the station YAML is printed")
    serve.add_argument("--duration", type=float, default=None, metavar="S",
                       help="stop by itself after S seconds (default: run until stopped)")


def run(args, out) -> dict:
    if args.sim_command != "serve":  # pragma: no cover (argparse enforces the choice)
        raise ValueError(f"unknown sim sub-command {args.sim_command!r}")
    if args.baud is not None and not args.baud > 0:
        raise ValueError(f"--baud {args.baud}; expected a positive baud rate")
    if args.duration is not None and not args.duration >= 0:
        raise ValueError(f"--duration {args.duration}; expected seconds >= 0")
    chip = _pairs(args.chip, "--chip option")
    if "seed" in chip:
        raise ValueError("--chip seed=...: use --seed")
    faults = _pairs(args.faults, "--faults option")
    from .bench import VirtualBench

    bench = VirtualBench(seed=args.seed, chip_options=chip, faults=faults or None,
                                      baud=args.baud, station_out=args.station_out)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t0 = time.monotonic()
    try:
        bench.start()
        station = bench.station()
        if args.station_out:
            out.info(f"virtual bench ready: station file {args.station_out}")
        elif not out.quiet:
            out.print(bench.station_text.rstrip())
        else:
            out.info(bench.station_text.rstrip())
        out.info(f"board {bench.board_url}; " + "; ".join(
            f"{role} {s.resource}" for role, s in bench.servers.items()) + "; stop with Ctrl-C")
        try:
            stop.wait(args.duration)
        except KeyboardInterrupt:
            pass
    finally:
        bench.stop()
        signal.signal(signal.SIGTERM, previous)
    return {
        "station": station,
        "station_file": args.station_out,
        "seed": args.seed,
        "served_s": round(time.monotonic() - t0, 3),
        "board_frames": bench.firmware.frames,
        "program_pulses": bench.firmware.program_pulses,
        "faults_injected": dict(bench.firmware.faults.stats),
    }
