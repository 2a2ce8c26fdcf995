"""``labkit live``: a live dashboard of the array while a measurement runs.

Shows the cell current map as a heatmap with fixed colour levels and a running
linearity sweep (all rows at increasing input level), refreshed on a timer. With
``--frames N`` or ``--seconds S`` it ends by itself; ``--screenshot FILE`` saves the
window as a PNG at the end. Without a display it renders offscreen (then a stop rule
is required).
"""

from __future__ import annotations

import math
import queue
import signal
import threading
from pathlib import Path

from labkit.backend import BackendError, open_backend
from labkit.cli import options
from labkit.errors import UsageError
from labkit.units import si

HELP = "live dashboard: array heatmap and running sweep while measuring (pyqtgraph)"


def add_arguments(parser) -> None:
    options.add(parser, "backend")
    parser.add_argument("--frames", type=int, default=None, help="stop after N frames")
    parser.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--screenshot", metavar="PNG", default=None, help="save the window as PNG at the end")
    parser.add_argument("--levels", nargs=2, metavar=("LOW", "HIGH"), default=None,
                        help="fixed colour range of the heatmap in A (default: the datasheet's cell current window)")
    parser.add_argument("--size", nargs=2, type=int, metavar=("W", "H"), default=(960, 480),
                        help="window size in pixels (default 960 480)")
    parser.add_argument("--interval", type=int, default=50, metavar="MS", help="refresh period in ms (default 50)")
    parser.add_argument("--sweep-levels", type=int, default=16, help="levels of the running sweep (default 16)")
    parser.add_argument("--repeats", type=int, default=4, help="VMMs per sweep level (default 4)")


def _check(args) -> None:
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames {args.frames}; expected an integer >= 1")
    if args.seconds is not None and not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise ValueError(f"--seconds {args.seconds}; expected a duration > 0 s")
    if args.screenshot is not None:
        parent = Path(args.screenshot).resolve().parent
        if not parent.is_dir():
            raise ValueError(f"--screenshot {args.screenshot}: directory {parent} does not exist")
    if not 1 <= args.interval <= 60_000:
        raise UsageError(f"--interval {args.interval}; expected 1 to 60000 ms")
    if not 2 <= args.sweep_levels <= 256:
        raise UsageError(f"--sweep-levels {args.sweep_levels}; expected 2 to 256 levels")
    if not 1 <= args.repeats <= 1024:
        raise UsageError(f"--repeats {args.repeats}; expected 1 to 1024 VMMs per level")
    w, h = args.size
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        raise UsageError(f"--size {w} {h}; expected a width and height of 64 to 8192 pixels")
    if args.levels is not None:
        lo, hi = (float(si(_num(v), "A", "--levels")) for v in args.levels)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise UsageError(f"--levels {args.levels[0]} {args.levels[1]}; expected colour levels 0 < LOW < HIGH in A")


def run(args, out) -> dict:
    _check(args)
    try:
        import pyqtgraph  # noqa: F401  (and through it a Qt binding)

        from labkit.ui import live
    except ImportError as exc:
        raise UsageError(f"labkit live needs a Qt binding ({exc}); install it with: pip install 'labkit[qt]'") from None

    offscreen = live.ensure_display()
    if offscreen:
        out.info("labkit live: no display, rendering offscreen")
    import os

    if os.environ.get("QT_QPA_PLATFORM") == "offscreen" and args.frames is None and args.seconds is None:
        raise ValueError("no display (offscreen): give --frames N or --seconds S")
    with open_backend(args.backend) as backend:
        sheet = backend.datasheet
        if args.levels is None:
            levels = sheet.cell_current_range_a
        else:
            levels = tuple(float(si(_num(v), "A", "--levels")) for v in args.levels)
        frames: queue.Queue = queue.Queue(maxsize=2)
        dash = live.Dashboard(backend.geometry.rows, backend.geometry.cols, levels, tuple(args.size),
                              args.interval, title=f"labkit live: {backend.identity.chip_id} ({args.backend})",
                              frames=frames, sweep_range_s=(0.0, sheet.full_scale_charge_c / sheet.reference_current_a))
        meas = live.LiveMeasurement(backend, frames, levels=args.sweep_levels, repeats=args.repeats,
                                    max_steps=args.frames)
        shot: dict = {}
        interrupted = threading.Event()

        def on_stop(d) -> None:
            shot["pixels"] = d.cell_pixels()
            if args.screenshot:
                shot["path"] = d.save(args.screenshot)
            img = d.grab()
            shot["size"] = (img.width(), img.height())

        def on_sigint(signum, frame) -> None:
            interrupted.set()
            dash.stop()

        old = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
        meas.start()
        try:
            dash.run(frames=args.frames, seconds=args.seconds, on_stop=on_stop)
        finally:
            meas.stop()
            dash.close()
            if old is not None:
                signal.signal(signal.SIGINT, old)
        if interrupted.is_set():
            raise KeyboardInterrupt
        if dash.error:
            raise BackendError(f"measurement stopped: {dash.error}")
        currents = dash.last_currents
    out.print(f"{dash.frames_shown} frames of {backend.identity.chip_id}"
              + (f"; screenshot {shot['path']}" if "path" in shot else ""))
    return {
        "backend": args.backend,
        "chip_id": backend.identity.chip_id,
        "frames": dash.frames_shown,
        "screenshot": shot.get("path"),
        "width": shot.get("size", (None, None))[0],
        "height": shot.get("size", (None, None))[1],
        "levels_a": list(levels),
        "colormap": live.COLORMAP,
        "offscreen": os.environ.get("QT_QPA_PLATFORM") == "offscreen",
        "cell_current_a": None if currents is None else currents.tolist(),
        "cell_pixels": shot["pixels"].tolist() if "pixels" in shot else None,
    }


def _num(text: str):
    try:
        return float(text)
    except ValueError:
        return text
