"""The live dashboard rendered offscreen: the grabbed image is what it should be.

Checks size, that it is not blank, and that every heatmap cell's pixel colour is the
colour-map entry of that cell's current under the fixed levels.
"""

from __future__ import annotations

import json
import os
import queue

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import labkit  # noqa: E402
from labkit import cli  # noqa: E402
from labkit import measure  # noqa: E402
from labkit.backend import BackendError, SafeArray  # noqa: E402
from tests.conftest import chip_of, sim_uri  # noqa: E402

live = pytest.importorskip("labkit.ui.live")
pytest.importorskip("PySide6")


def image_array(qimage) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a QImage."""
    from pyqtgraph.Qt import QtGui

    img = qimage.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    w, h, stride = img.width(), img.height(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=stride * h).reshape(h, stride)
    return buf[:, : 3 * w].reshape(h, w, 3).copy()


def lut_index(rgb: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Nearest colour-map entry of each pixel colour."""
    d = ((rgb[..., None, :].astype(int) - lut[None, :, :3].astype(int)) ** 2).sum(-1)
    return d.argmin(-1)


def expected_index(currents_a, levels_a, n: int = 256) -> np.ndarray:
    lo, hi = np.log10(levels_a)
    v = np.log10(currents_a)
    return np.clip(np.floor((v - lo) * n / (hi - lo)), 0, n - 1)


def check_heatmap(rgb: np.ndarray, pixels: np.ndarray, currents, levels, lut) -> None:
    got = lut_index(rgb[pixels[..., 1], pixels[..., 0]], lut)
    want = expected_index(currents, levels)
    assert np.max(np.abs(got - want)) <= 3, (got, want)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_dashboard_heatmap_pixels_follow_the_data():
    dash = live.Dashboard(size=(800, 400), levels_a=(1e-9, 1e-6))
    try:
        rng = np.random.default_rng(0)
        # three decades across the columns, a random factor per cell, two cells off-scale
        cur = 10 ** (-9 + 3 * (np.arange(16)[None, :] + rng.random((16, 16))) / 17)
        cur[0, 0], cur[15, 15] = 1e-12, 1e-3
        dash.widget.show()
        dash.show_frame(live.Frame(cur, np.linspace(0.1, 1, 10), np.linspace(0.1, 1, 10) * 1e-6, status="test"))
        img = dash.grab()
        assert (img.width(), img.height()) == (800, 400)
        rgb = image_array(img)
        assert rgb.std() > 20 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 100  # not blank
        pixels = dash.cell_pixels()
        assert np.all(np.diff(pixels[..., 0], axis=1) > 5)  # columns left to right
        assert np.all(np.diff(pixels[..., 1], axis=0) > 5)  # row 0 at the top
        check_heatmap(rgb, pixels, cur, (1e-9, 1e-6), dash.lut)
        got = lut_index(rgb[pixels[..., 1], pixels[..., 0]], dash.lut)
        assert got[0, 0] == 0 and got[15, 15] == 255  # clipped at the fixed levels
        # The sweep curve is drawn in the right half in its pen colour.
        right = rgb[:, 420:]
        red = (right[..., 0] > 150) & (right[..., 1] < 90) & (right[..., 2] < 90)
        assert red.sum() > 100
        x, y = dash.curve.getData()
        np.testing.assert_allclose(y, np.linspace(0.1, 1, 10) * 1e-6)
        # New data re-colours the same pixels (levels stay fixed, no auto-scaling).
        dash.show_frame(live.Frame(cur / 10))
        rgb2 = image_array(dash.grab())
        check_heatmap(rgb2, pixels, cur / 10, (1e-9, 1e-6), dash.lut)
    finally:
        dash.close()


def test_dashboard_with_the_measurement_thread():
    with labkit.open_backend(sim_uri(3)) as b:
        frames: queue.Queue = queue.Queue(maxsize=2)
        dash = live.Dashboard(frames=frames, size=(700, 360), interval_ms=10)
        meas = live.LiveMeasurement(b, frames, levels=8, repeats=2, max_steps=6)
        seen = {}
        meas.start()
        try:
            dash.run(frames=6, seconds=30, on_stop=lambda d: seen.update(img=d.grab(), px=d.cell_pixels()))
        finally:
            meas.stop()
            dash.close()
        truth = chip_of(b).currents()
    assert dash.frames_shown == 6 and dash.error is None
    np.testing.assert_allclose(dash.last_currents, truth, rtol=0.02)
    check_heatmap(image_array(seen["img"]), seen["px"], dash.last_currents, (1e-9, 1e-6), dash.lut)
    x, y = dash.last_sweep
    assert len(x) == 6 and np.all(np.diff(y) > 0)  # outputs grow with the input level


def test_the_live_sweep_is_the_linearity_sweep_of_measure():
    """The running sweep is measure's: the levels of ``linearity_levels`` (on the input
    grid, never a zero level, even with more levels than input clock steps) and at each
    level ``linearity_step`` against ``measure_baseline``, number for number."""
    steps = 5
    with labkit.open_backend(sim_uri(5)) as b:
        frames: queue.Queue = queue.Queue()
        live.LiveMeasurement(b, frames, levels=1024, repeats=2, max_steps=steps).run()  # in this thread
        last = [frames.get_nowait() for _ in range(steps)][-1]
    levels = measure.linearity_levels(1024, 8)
    assert len(levels) == 256 and levels[0] == 1 / 256
    np.testing.assert_array_equal(last.sweep_x, levels[:steps])
    with labkit.open_backend(sim_uri(5)) as b:  # the same chip again, the same calls
        base = measure.measure_baseline(b, 8)
        want = []
        for x in levels[:steps]:
            b.read_currents()
            want.append(measure.linearity_step(b, base, x, 2).mean())
    np.testing.assert_allclose(last.sweep_y, want, rtol=1e-12)
    assert np.all(np.diff(last.sweep_y) > 0)


class Broken:
    """A raw backend whose VMMs fail (a link fault)."""

    def __init__(self, inner):
        self.__dict__.update(geometry=inner.geometry, identity=inner.identity, datasheet=inner.datasheet,
                             envelope=inner.envelope, _inner=inner)

    settings = property(lambda self: self._inner.settings)

    def read_currents(self, cells):
        return self._inner.read_currents(cells)

    def vmm(self, w):
        raise BackendError("board not responding")

    def close(self):
        pass


def test_measurement_error_stops_the_dashboard():
    with labkit.open_backend(sim_uri(0)) as b:
        frames: queue.Queue = queue.Queue(maxsize=2)
        dash = live.Dashboard(frames=frames, interval_ms=10)
        meas = live.LiveMeasurement(SafeArray(Broken(b.inner)), frames)
        meas.start()
        try:
            dash.run(seconds=20)
        finally:
            meas.stop()
            dash.close()
    assert dash.error and "board not responding" in dash.error


def test_cli_live_screenshot(tmp_path, capsys):
    png = tmp_path / "live.png"
    code = cli.main(["live", "--backend", "sim://?seed=5", "--frames", "4", "--size", "640", "400",
                     "--screenshot", str(png), "--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    d = json.loads(cap.out)
    assert d["frames"] == 4 and d["screenshot"] == str(png) and (d["width"], d["height"]) == (640, 400)
    from pyqtgraph.Qt import QtGui

    img = QtGui.QImage(str(png))
    assert (img.width(), img.height()) == (640, 400)
    rgb = image_array(img)
    assert rgb.std() > 20
    cur = np.array(d["cell_current_a"])
    with labkit.open_backend("sim://?seed=5") as b:  # a fresh copy of the same chip
        np.testing.assert_allclose(cur, chip_of(b).currents(), rtol=0.02)
    import pyqtgraph as pg

    lut = pg.colormap.get(d["colormap"]).getLookupTable(nPts=256, alpha=False)
    check_heatmap(rgb, np.array(d["cell_pixels"]), cur, d["levels_a"], lut)


@pytest.mark.parametrize("argv, message", [
    (["--frames", "0"], "--frames"),
    (["--seconds", "-1"], "--seconds"),
    ([], "--frames N or --seconds S"),
    (["--frames", "2", "--levels", "1e-6", "1e-9"], "colour levels"),
    (["--frames", "2", "--backend", "nope://"], "unknown backend"),
    (["--frames", "2", "--screenshot", "/no/such/dir/x.png"], "does not exist"),
])
def test_cli_live_bad_input(capsys, argv, message):
    code = cli.main(["live", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_long_session_ends_cleanly(tmp_path):
    """400 frames in a real process, offscreen: exit code 0 and one JSON object (guards
    against binding refcount bugs that abort the interpreter after many frames)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([sys.executable, "-m", "labkit.cli", "live", "--frames", "400", "--interval", "1",
                           "--json"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["frames"] == 400
