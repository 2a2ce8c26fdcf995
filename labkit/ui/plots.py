"""PNG reports for what a user reads after a run (matplotlib, Agg canvas, no pyplot state).

:func:`characterization_report` draws one page per characterization: cell current
heatmap, Id-Vg curves, crosstalk map, linearity and droop, output noise, and the
temperature and retention panels where they were measured.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np



def _median_band(plot, x, values) -> None:
    """``plot`` (an axis method) the median over each row of ``values`` against ``x``,
    with the 10-90 % band shaded."""
    plot(x, np.median(values, axis=1), "o-", label="median")
    plot.__self__.fill_between(x, np.percentile(values, 10, axis=1), np.percentile(values, 90, axis=1),
                               alpha=0.3, label="10-90 %")

def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _heatmap(fig, ax, data, title: str, unit: str, cmap: str = "viridis", log: bool = False):
    from matplotlib.colors import LogNorm

    norm = LogNorm(vmin=float(np.min(data)), vmax=float(np.max(data))) if log and np.min(data) > 0 else None
    im = ax.imshow(data, cmap=cmap, norm=norm, origin="upper", interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    fig.colorbar(im, ax=ax, label=unit, shrink=0.85)
    return im


def characterization_report(result, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the PNG report of a :class:`labkit.measure.Characterization`; returns the path.

    Written to ``PATH.part`` first and renamed, so a failed write leaves no half file;
    an unwritable path raises ``OSError`` naming it."""
    path = Path(path)
    extra = result.temperature is not None or result.retention is not None
    fig = _figure(15, 13 if extra else 9)
    grid = fig.subplots(3 if extra else 2, 3)
    s = result.summary()
    fig.suptitle(title or f"characterization of {result.chip_id} ({result.backend}): noise floor "
                 f"{s['noise_floor_ser_db']:.1f} dB, crosstalk {1e3 * s['crosstalk_mean_v']:.2f} mV/edge, "
                 f"droop {100 * s['droop_fraction']:.1f} %")

    # 1. cell current map
    _heatmap(fig, grid[0, 0], result.cell_current_a * 1e9, "cell current at read voltage", "nA", log=True)

    # 2. Id-Vg curves
    ax = grid[0, 1]
    iv = result.idvg
    for cell, cur in zip(iv.cells, iv.current_a):
        ax.semilogy(iv.gate_v, np.maximum(cur, 1e-15), marker=".", label=f"({cell[0]},{cell[1]})")
    ax.axhline(iv.compliance_a, color="0.5", ls=":", lw=1)
    ax.set_title(f"Id-Vg ({iv.path})")
    ax.set_xlabel("gate voltage (V)")
    ax.set_ylabel("drain current (A)")
    ax.legend(fontsize=7, title="cell", title_fontsize=7)
    ax.grid(True, which="both", alpha=0.3)

    # 3. crosstalk map
    xt = result.crosstalk
    _heatmap(fig, grid[0, 2], xt.volts * 1e3, "crosstalk per falling edge (nominal)", "mV", cmap="magma")
    grid[0, 2].text(0.0, -0.22, s["crosstalk_pattern"], transform=grid[0, 2].transAxes, fontsize=7, va="top")

    # 4. linearity
    ax = grid[1, 0]
    dr = result.droop
    lin = dr.linear_s()
    colors = [f"C{j % 10}" for j in range(result.cols)]
    for j in range(result.cols):
        v = dr.valid[:, j]
        ax.plot(dr.x_levels[v], dr.y_s[v, j] * 1e9, color=colors[j], lw=1)
        ax.plot(dr.x_levels, lin[:, j] * 1e9, color=colors[j], lw=0.6, ls="--")
    ax.set_title("linearity: all rows at level x (dashed: linear)")
    ax.set_xlabel("input level x")
    ax.set_ylabel("output y = t0 - t (ns)")
    ax.grid(True, alpha=0.3)

    # 5. droop per column
    ax = grid[1, 1]
    ax.bar(np.arange(result.cols), 100 * np.nan_to_num(dr.droop_fraction_col), color=colors)
    ax.axhline(100 * dr.droop_fraction, color="k", ls="--", lw=1, label=f"mean {100 * dr.droop_fraction:.1f} %")
    ax.set_title("droop at the largest unsaturated level")
    ax.set_xlabel("column")
    ax.set_ylabel("droop (%)")
    ax.legend(fontsize=8)

    # 6. noise
    ax = grid[1, 2]
    res = (result.repeats.y_s - result.repeats.y_s.mean(axis=0, keepdims=True)).ravel() * 1e9
    ax.hist(res, bins=60, color="C0", alpha=0.8)
    ax.set_title(f"repeat residuals\nnoise floor {s['noise_floor_ser_db']:.1f} dB "
                 f"({s['noise_floor_bits']:.1f} bits)")
    ax.set_xlabel("y - mean of repeats (ns)")
    ax.set_ylabel("count")

    if extra:
        ax = grid[2, 0]
        if result.temperature is not None:
            ts = result.temperature
            _median_band(ax.semilogy, ts.measured_k, ts.currents_a.reshape(len(ts.set_k), -1))
            ax.set_title("cell current vs temperature")
            ax.set_xlabel("temperature (K)")
            ax.set_ylabel("current (A)")
            ax.legend(fontsize=8)
        else:
            ax.set_axis_off()
        ax = grid[2, 1]
        if result.retention is not None:
            rt = result.retention
            rel = rt.currents_a.reshape(len(rt.elapsed_s), -1) / rt.currents_a[0].reshape(1, -1) - 1
            t = np.maximum(rt.elapsed_s, rt.elapsed_s[rt.elapsed_s > 0].min() / 10 if np.any(rt.elapsed_s > 0) else 1)
            _median_band(ax.semilogx, t, 100 * rel)
            ax.set_title("retention" + (" (virtual time)" if rt.virtual else ""))
            ax.set_xlabel("elapsed time (s)")
            ax.set_ylabel("current change (%)")
            ax.legend(fontsize=8)
        else:
            ax.set_axis_off()
        ax = grid[2, 2]
        ax.set_axis_off()
        lines = [f"{k}: {_short(v)}" for k, v in s.items() if k not in ("crosstalk_layout", "datasets")]
        ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7, transform=ax.transAxes)
    return save_png(fig, path)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = str(v)
    return text if len(text) < 70 else text[:67] + "..."


def save_png(fig, path: str | os.PathLike) -> Path:
    """Render ``fig`` to ``path`` through a ``.part`` file (atomic rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OSError(f"cannot write report {path}: {exc.strerror or exc}") from None
    return path
