"""Live dashboard (pyqtgraph): the array heatmap and the running sweep while a measurement runs.

A measurement thread (:class:`LiveMeasurement`) owns the backend and puts
:class:`Frame` objects on a thread-safe queue; the Qt main thread's :class:`Dashboard`
drains that queue on a QTimer and redraws: the cell current map as an ImageItem with
*fixed* colour levels (log10 of amperes, the datasheet's programmable window unless
told otherwise, so colours mean the same current in every frame) and the sweep as a
PlotDataItem. Runs offscreen too (``QT_QPA_PLATFORM=offscreen``), where
:meth:`Dashboard.grab` still renders the window to an image.
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from labkit.measure import linearity_levels, linearity_step, measure_baseline

COLORMAP = "viridis"


@dataclass
class Frame:
    """One update: a current map (rows, cols) in A and/or new sweep points.

    ``sweep_x``/``sweep_y`` replace the whole sweep curve (x: input level; y: output in
    s). ``error`` ends the dashboard with that message; ``done`` marks the last frame."""

    currents_a: np.ndarray | None = None
    sweep_x: np.ndarray | None = None
    sweep_y: np.ndarray | None = None
    status: str = ""
    error: str | None = None
    done: bool = False


def ensure_display() -> bool:
    """Use Qt's offscreen platform where there is no display (Linux without X or
    Wayland). Returns True when it switched. Call before the QApplication exists."""
    if os.environ.get("QT_QPA_PLATFORM"):
        return False
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        return True
    return False


def check_qt_binding() -> None:
    """Refuse PySide6 6.12.0 on CPython < 3.12: its signal emissions drop references to
    ``True`` (and virtual calls to ``None``) until the interpreter aborts mid-session
    ("bool_dealloc"). pyproject.toml excludes that release; this catches an environment
    that has it anyway, with a one-line error instead of a crash."""
    if sys.version_info >= (3, 12):
        return
    try:
        from importlib.metadata import version

        pyside = version("PySide6-Essentials")
    except Exception:  # another binding or a differently named distribution
        return
    if pyside == "6.12.0":
        raise ValueError("PySide6 6.12.0 crashes Python 3.11 after a few hundred frames; "
                         "install another release: pip install 'PySide6-Essentials!=6.12.0'")


class Dashboard:
    """The window: heatmap (left, row 0 at the top) and running sweep (right).

    ``levels_a``: fixed colour range (A) of the heatmap, drawn on a log scale;
    ``size``: window size in pixels; ``interval_ms``: how often the queue is drained;
    ``sweep_range_s``: fixed y range of the sweep (s), e.g. the nominal full-scale output
    (auto-ranging when None).
    """

    def __init__(self, rows: int = 16, cols: int = 16, levels_a: tuple[float, float] = (1e-9, 1e-6),
                 size: tuple[int, int] = (960, 480), interval_ms: int = 50, title: str = "labkit live",
                 frames: queue.Queue | None = None, sweep_range_s: tuple[float, float] | None = None):
        lo, hi = (float(v) for v in levels_a)
        if not (0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"colour levels {levels_a} A; expected 0 < low < high")
        if not (isinstance(interval_ms, int) and interval_ms >= 1):
            raise ValueError(f"interval_ms={interval_ms!r}; expected an integer >= 1")
        w, h = (int(v) for v in size)
        if w < 200 or h < 150:
            raise ValueError(f"window size {size}; expected at least 200 x 150 pixels")
        check_qt_binding()
        import pyqtgraph as pg
        from pyqtgraph.Qt import QtCore

        self.pg, self.QtCore = pg, QtCore
        self.app = pg.mkQApp("labkit live")
        self.rows, self.cols = rows, cols
        self.levels = (math.log10(lo), math.log10(hi))
        self.queue: queue.Queue = frames if frames is not None else queue.Queue()
        self.frames_shown = 0
        self.last_currents: np.ndarray | None = None  # (rows, cols) A of the heatmap shown
        self.last_sweep: tuple[np.ndarray, np.ndarray] | None = None  # (x, y in s) of the curve shown
        self.error: str | None = None
        self.finished = False
        self._stop_rules: tuple[int | None, float | None] = (None, None)
        self._t0 = time.monotonic()
        self._on_stop = None

        pg.setConfigOptions(antialias=False)
        self.widget = pg.GraphicsLayoutWidget(title=title)
        self.widget.setBackground("w")
        self.widget.resize(w, h)
        self.colormap = pg.colormap.get(COLORMAP)
        self.lut = self.colormap.getLookupTable(nPts=256, alpha=False)

        self.heat_plot = self.widget.addPlot(row=0, col=0, title="cell current, log10(A)")
        self.heat_plot.setAspectLocked(True)
        self.heat_plot.invertY(True)
        self.heat_plot.setLabel("bottom", "column")
        self.heat_plot.setLabel("left", "row")
        self.heat_plot.hideButtons()
        self.heat_plot.setMouseEnabled(False, False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setLookupTable(self.lut)
        self.image.setImage(np.full((rows, cols), self.levels[0]), autoLevels=False, levels=self.levels)
        self.heat_plot.addItem(self.image)
        self.heat_plot.setRange(xRange=(0, cols), yRange=(0, rows), padding=0.02)
        self.colorbar = pg.ColorBarItem(values=self.levels, colorMap=self.colormap, interactive=False,
                                        width=14, label="log10 A")
        self.colorbar.setImageItem(self.image, insert_in=self.heat_plot)

        self.sweep_plot = self.widget.addPlot(row=0, col=1, title="running sweep")
        self.sweep_plot.setLabel("bottom", "input level x (all rows)")
        self.sweep_plot.setLabel("left", "output t0 - t", units="s")
        self.sweep_plot.showGrid(x=True, y=True, alpha=0.3)
        self.sweep_plot.setXRange(0, 1, padding=0.02)
        if sweep_range_s is not None:
            self.sweep_plot.setYRange(*sweep_range_s, padding=0.02)
        self.curve = self.sweep_plot.plot([], [], pen=pg.mkPen((200, 30, 30), width=2), symbol="o",
                                          symbolSize=6, symbolBrush=(200, 30, 30), symbolPen=None)
        self.status = pg.LabelItem(justify="left", color="k")
        self.widget.addItem(self.status, row=1, col=0, colspan=2)

        self.timer = QtCore.QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.poll)

    # ---------------------------------------------------------------- updates
    def show_frame(self, frame: Frame) -> None:
        """Draw one frame now (heatmap data clipped to the fixed levels)."""
        if frame.currents_a is not None:
            data = np.log10(np.maximum(np.asarray(frame.currents_a, dtype=float), 1e-30))
            if data.shape != (self.rows, self.cols):
                raise ValueError(f"current map has shape {data.shape}; expected ({self.rows}, {self.cols})")
            self.image.setImage(data, autoLevels=False, levels=self.levels)
            self.last_currents = np.array(frame.currents_a, dtype=float)
        if frame.sweep_x is not None and frame.sweep_y is not None:
            self.last_sweep = (np.asarray(frame.sweep_x, float), np.asarray(frame.sweep_y, float))
            self.curve.setData(*self.last_sweep)
        if frame.status:
            self.status.setText(frame.status)

    def poll(self) -> None:
        """Timer slot: apply every queued frame (the newest heatmap wins), then check the stop rules."""
        got = False
        while True:
            try:
                frame = self.queue.get_nowait()
            except queue.Empty:
                break
            if frame.error:
                self.error = frame.error
                self.stop()
                return
            self.show_frame(frame)
            if frame.currents_a is not None:
                self.frames_shown += 1
                got = True
            max_frames, _ = self._stop_rules
            if frame.done or (max_frames is not None and self.frames_shown >= max_frames):
                self.stop()
                return
        _, max_s = self._stop_rules
        if max_s is not None and time.monotonic() - self._t0 >= max_s:
            self.stop()
        elif got:
            self.widget.update()

    # ---------------------------------------------------------------- geometry and images
    def cell_pixel(self, row: int, col: int) -> tuple[int, int]:
        """Window pixel (x, y) at the centre of heatmap cell (row, col)."""
        QtCore = self.QtCore
        scene = self.image.mapToScene(QtCore.QPointF(col + 0.5, row + 0.5))
        p = self.widget.mapFromScene(scene)
        return int(p.x()), int(p.y())

    def cell_pixels(self) -> np.ndarray:
        """(rows, cols, 2) window pixel (x, y) of every cell centre (after :meth:`settle`)."""
        self.settle()
        return np.array([[self.cell_pixel(r, c) for c in range(self.cols)] for r in range(self.rows)])

    def settle(self, max_passes: int = 20) -> None:
        """Process events until the layout stops moving (it takes a few passes after a
        show, a resize or a new frame)."""
        last, same = None, 0
        for _ in range(max_passes):
            self.app.processEvents()
            now = (self.cell_pixel(0, 0), self.cell_pixel(self.rows - 1, self.cols - 1))
            same = same + 1 if now == last else 0
            if same >= 2:
                return
            last = now

    def grab(self):
        """The window rendered to a QImage (works offscreen)."""
        self.settle()
        return self.widget.grab().toImage()

    def save(self, path) -> str:
        """Save the window as a PNG; OSError naming the path if it cannot be written."""
        path = os.fspath(path)
        if not self.grab().save(path, "PNG"):
            raise OSError(f"cannot write screenshot {path}")
        return path

    # ---------------------------------------------------------------- running
    def run(self, frames: int | None = None, seconds: float | None = None, on_stop=None) -> None:
        """Show the window and process events until ``frames`` heatmaps were drawn,
        ``seconds`` passed, the producer said ``done``, or the window was closed.
        ``on_stop(dashboard)`` runs while the window still shows the last frame."""
        self._stop_rules = (frames, seconds)
        self._on_stop = on_stop
        self._t0 = time.monotonic()
        self.widget.show()
        self.timer.start()
        self._loop = self.QtCore.QEventLoop()
        self.widget.destroyed.connect(self._loop.quit)
        self.app.lastWindowClosed.connect(self.stop)
        self._loop.exec()

    def stop(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.timer.stop()
        self.app.processEvents()
        try:
            if self._on_stop is not None:
                self._on_stop(self)
        finally:
            loop = getattr(self, "_loop", None)
            if loop is not None:
                loop.quit()

    def close(self) -> None:
        """Close the window and delete its Qt objects now (``last_*`` stay). Deleting them
        here, not at interpreter exit, avoids a PySide6 crash in the final garbage
        collection when several dashboards lived in one process."""
        self.timer.stop()
        self.widget.close()
        self.widget.deleteLater()
        self.app.sendPostedEvents(None, self.QtCore.QEvent.Type.DeferredDelete)
        self.app.processEvents()


class LiveMeasurement(threading.Thread):
    """The measurement thread: repeated current maps and a running linearity sweep.

    Every step reads the whole current map and measures one sweep level (every row at
    input level ``x_k``, ``repeats`` VMMs, output averaged over the columns against a
    zero-input baseline: :func:`labkit.measure.linearity_step` at the levels of
    :func:`labkit.measure.linearity_levels`); the sweep restarts after ``levels``
    levels. Each step puts one :class:`Frame` on ``frames`` (give it a bounded queue:
    the measurement then waits for the display). The backend is used by this thread only.
    """

    def __init__(self, backend, frames: queue.Queue, levels: int = 16, repeats: int = 4,
                 period_s: float = 0.0, max_steps: int | None = None, run=None):
        super().__init__(name="labkit-live-measurement", daemon=True)
        if not (isinstance(levels, int) and 2 <= levels <= 1024):
            raise ValueError(f"levels={levels!r}; expected an integer in [2, 1024]")
        if not (isinstance(repeats, int) and repeats >= 1):
            raise ValueError(f"repeats={repeats!r}; expected an integer >= 1")
        if not (period_s >= 0 and math.isfinite(period_s)):
            raise ValueError(f"period_s={period_s!r}; expected >= 0 s")
        self.backend, self.frames, self.levels, self.repeats = backend, frames, levels, repeats
        self.period_s, self.max_steps, self.run_ = period_s, max_steps, run
        self.stop_event = threading.Event()
        self.steps = 0
        self.last_currents: np.ndarray | None = None

    def run(self) -> None:  # noqa: D401 (threading API)
        b = self.backend
        try:
            xs = linearity_levels(self.levels, b.settings.input_bits)
            base = measure_baseline(b, max(8, self.repeats))
            sx, sy = [], []
            while not self.stop_event.is_set():
                k = self.steps % len(xs)
                if k == 0:
                    sx, sy = [], []
                i = b.read_currents()
                y = float(linearity_step(b, base, xs[k], self.repeats).mean())
                sx.append(xs[k])
                sy.append(y)
                self.last_currents = i
                if self.run_ is not None:
                    self.run_.add_points("live", cell_current_a=i[None], level=[xs[k]], y_mean_s=[y])
                self.steps += 1
                last = self.max_steps is not None and self.steps >= self.max_steps
                self._put(Frame(i, np.array(sx), np.array(sy),
                                status=f"frame {self.steps}: median {np.median(i) * 1e9:.2f} nA, "
                                       f"sweep level {xs[k]:.3f}", done=last))
                if last:
                    break
                if self.period_s:
                    self.stop_event.wait(self.period_s)
        except Exception as exc:  # shown by the dashboard, raised by the caller
            self._put(Frame(error=f"{type(exc).__name__}: {exc}".splitlines()[0]))

    def _put(self, frame: Frame) -> None:
        # A bounded queue paces the measurement to the display: wait for room.
        while not self.stop_event.is_set():
            try:
                self.frames.put(frame, timeout=0.1)
                return
            except queue.Full:
                continue

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.join(timeout)
