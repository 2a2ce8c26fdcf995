"""Residual structure: where a fitted model misses the chip by more than its noise.

A model family that lacks an effect the chip has still fits, and an SER near the floor
on one dataset can hide a miss that is systematic: in one column, or in one kind of
input. :func:`residual_structure` compares the residuals of held-out measurements with
the noise expected of each one (the repeat noise model ``var = floor^2 + (rel y)^2``),
per column and per pattern class, and flags any group whose residual rms exceeds the
noise by more than ``limit`` (a ratio; about 3 % is the statistical spread of the ratio
over 500 samples). Times in s.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["LIMIT", "pattern_classes", "repeat_variance", "column_noise", "residual_structure"]

LIMIT = 1.25  # residual rms / expected noise rms above which a group is flagged


def pattern_classes(x: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks over patterns ``x`` (B, rows) by how many rows are on: one-hot,
    sparse (2-4), medium (5-10), dense (11+), and those with a pulse shorter than 1/16 T."""
    on = (x > 0).sum(axis=1)
    short = ((x > 0) & (x < 1.0 / 16)).any(axis=1)
    return {"one-hot": on == 1, "sparse": (on >= 2) & (on <= 4), "medium": (on >= 5) & (on <= 10),
            "dense": on >= 11, "short pulses": short}


def repeat_variance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per sample the noise variance (s^2) of its pattern, from the patterns ``x`` that
    were measured more than once in ``y`` (B, cols) (e.g. one-hot reads)."""
    _, group = np.unique(x, axis=0, return_inverse=True)
    group = group.ravel()
    n = np.bincount(group)[group][:, None]
    mean = np.stack([np.bincount(group, y[:, j]) for j in range(y.shape[1])], 1)[group] / n
    ss = np.stack([np.bincount(group, (y[:, j] - mean[:, j]) ** 2) for j in range(y.shape[1])], 1)[group]
    return ss / np.maximum(n - 1, 1)


def column_noise(y_repeats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column ``(floor_s, relative)`` of ``var = floor^2 + (relative y)^2``, least
    squares over the patterns of repeated measurements ``y_repeats`` (R, B, cols)."""
    var = y_repeats.var(axis=0, ddof=1)
    m2 = np.square(y_repeats.mean(axis=0))
    out = [np.linalg.lstsq(np.stack([np.ones_like(m2[:, j]), m2[:, j]], 1), var[:, j], rcond=None)[0]
           for j in range(var.shape[1])]
    f2, r2 = np.maximum(np.array(out), 0.0).T
    return np.sqrt(f2), np.sqrt(r2)


def residual_structure(sets: Mapping[str, tuple], floor_s, relative, limit: float = LIMIT) -> dict:
    """``sets``: name -> (x (B, rows), y measured (B, cols), y predicted (B, cols)[, noise
    variance (B, cols) s^2]); without the variance the noise model ``floor_s``,
    ``relative`` (scalars or per column) gives it.

    Returns ``{"columns": [ratio per column], "classes": {name: ratio}, "worst": ...,
    "flagged": [groups above limit], "structure": bool}``; ratios are residual rms over
    expected noise rms (1: at the noise floor)."""
    xs, rs, vs, tags = [], [], [], []
    for name, (x, y, p, *var) in sets.items():
        r = np.asarray(y, float) - np.asarray(p, float)
        xs.append(np.asarray(x, float))
        rs.append(r)
        vs.append(var[0] if var else floor_s**2 + (relative * np.asarray(y, float)) ** 2)
        tags += [name] * len(r)
    x, r, v, tags = np.concatenate(xs), np.concatenate(rs), np.concatenate(vs), np.array(tags)

    def ratio(sel) -> float:
        return float(np.sqrt(np.mean(r[sel] ** 2) / max(np.mean(v[sel]), 1e-300)))

    cols = [float(np.sqrt(np.mean(r[:, j] ** 2) / max(np.mean(v[:, j]), 1e-300))) for j in range(r.shape[1])]
    classes = {name: ratio(tags == name) for name in sets}
    classes.update({name: ratio(m) for name, m in pattern_classes(x).items() if m.sum() >= 32})
    flagged = [f"column {j}" for j, c in enumerate(cols) if c > limit] + [k for k, c in classes.items() if c > limit]
    return {"columns": cols, "classes": classes, "overall": ratio(np.ones(len(r), bool)),
            "limit": limit, "flagged": flagged, "structure": bool(flagged)}
