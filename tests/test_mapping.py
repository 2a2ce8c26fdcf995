"""Weight mapping: signed weights onto dual-branch column pairs, the current window, precision."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import labkit
from labkit.backend import Datasheet, Geometry
from labkit.program.mapping import (WeightRangeError, WeightWindow, check_weights, map_weights, precision,
                            unmap_currents)
from labkit.program.programming import ProgramConfig, program_weights

G = Geometry()
SHEET = Datasheet()


def window(**kw) -> WeightWindow:
    return WeightWindow.from_datasheet(SHEET, 1e-6, G.rows, **kw)


def test_window_keeps_a_full_column_within_the_bit_line_full_scale():
    w = window()
    assert w.i_min_a == SHEET.cell_current_range_a[0]
    # 16 cells at I_max for the whole integration window use `headroom` of the full-scale charge
    assert G.rows * w.i_max_a * 1e-6 == pytest.approx(0.9 * SHEET.full_scale_charge_c)
    assert 10e-9 < w.i_max_a < 12.5e-9
    assert w.i_scale_a == pytest.approx(w.i_max_a - w.i_min_a)
    # a longer integration window shrinks it; one too long leaves no window at all
    assert WeightWindow.from_datasheet(SHEET, 2e-6, G.rows).i_max_a == pytest.approx(w.i_max_a / 2)
    with pytest.raises(ValueError, match="no weight window"):
        WeightWindow.from_datasheet(SHEET, 10e-6, G.rows)
    with pytest.raises(ValueError, match="headroom"):
        window(headroom=1.5)
    with pytest.raises(ValueError, match="scheme"):
        window(scheme="single")


def test_offset_scheme_zero_is_both_branches_at_i_min_and_pairs_follow_geometry():
    w = window()
    weights = np.zeros((16, 8))
    weights[0, 0], weights[1, 3], weights[2, 7] = 1.0, -0.5, 0.25
    t = map_weights(weights, w, G)
    assert t.shape == (16, 16)
    assert t[0, 0] == pytest.approx(w.i_max_a) and t[0, 1] == pytest.approx(w.i_min_a)  # pair 0 = cols (0, 1)
    assert t[1, 6] == pytest.approx(w.i_min_a) and t[1, 7] == pytest.approx(w.i_min_a + 0.5 * w.i_scale_a)
    assert t[2, 14] == pytest.approx(w.i_min_a + 0.25 * w.i_scale_a)
    zero = weights == 0
    plus = t[:, 0::2][zero]
    minus = t[:, 1::2][zero]
    assert np.all(plus == w.i_min_a) and np.all(minus == w.i_min_a)
    assert np.allclose(unmap_currents(t, w, G), weights)


def test_balanced_scheme_keeps_each_pair_sum_constant():
    w = window(scheme="balanced")
    weights = np.random.default_rng(0).uniform(-1, 1, (16, 8))
    t = map_weights(weights, w, G)
    assert np.allclose(t[:, 0::2] + t[:, 1::2], w.i_min_a + w.i_max_a)
    assert t.min() >= w.i_min_a * (1 - 1e-12) and t.max() <= w.i_max_a * (1 + 1e-12)
    assert np.allclose(unmap_currents(t, w, G), weights)


@settings(max_examples=60, deadline=None)
@given(arrays(float, (16, 8), elements=st.floats(-1, 1, allow_nan=False)), st.sampled_from(["offset", "balanced"]))
def test_map_unmap_round_trip_and_currents_stay_in_the_window(weights, scheme):
    w = window(scheme=scheme)
    t = map_weights(weights, w, G)
    assert np.all(t >= w.i_min_a * (1 - 1e-12)) and np.all(t <= w.i_max_a * (1 + 1e-12))
    assert np.allclose(unmap_currents(t, w, G), weights, atol=1e-12)
    # column charge never exceeds the headroom share of full scale
    assert np.all(t.sum(axis=0) * 1e-6 <= 0.9 * SHEET.full_scale_charge_c * (1 + 1e-9))


def test_bad_weights_are_named():
    w = window()
    with pytest.raises(ValueError, match=r"shape \(8, 16\); expected \(16, 8\)"):
        map_weights(np.zeros((8, 16)), w, G)
    bad = np.zeros((16, 8))
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"weights\[3, 4\] = nan"):
        map_weights(bad, w, G)
    bad[3, 4] = np.inf
    with pytest.raises(ValueError, match="finite"):
        map_weights(bad, w, G)
    big = np.zeros((16, 8))
    big[2, 5] = 1.7
    with pytest.raises(WeightRangeError, match=r"weights\[2, 5\] = 1.7 is outside \[-1, 1\].*--clip"):
        map_weights(big, w, G)
    clipped = map_weights(big, w, G, clip=True)
    assert clipped[2, 10] == pytest.approx(w.i_max_a)
    with pytest.raises(ValueError, match="dtype"):
        check_weights(np.array([["a"] * 8] * 16), G)
    # smaller tiles only when asked: padded with zero weights
    tile = check_weights(np.ones((10, 3)) * 0.5, G, pad=True)
    assert tile.shape == (16, 8) and tile[:10, :3].min() == 0.5 and tile[10:].max() == 0 and tile[:, 3:].max() == 0
    with pytest.raises(ValueError):
        check_weights(np.ones((10, 3)), G)


def test_precision_and_snapping_of_the_smallest_weights():
    w = window()
    p = precision(w, 0.01)
    assert p["zero_error"] == pytest.approx(2 * 0.01 * w.i_min_a / w.i_scale_a)
    assert p["full_scale_error"] == pytest.approx(0.01 * (2 * w.i_min_a + w.i_scale_a) / w.i_scale_a)
    assert p["zero_error"] < p["full_scale_error"] < 0.02
    assert p["bits_zero"] > p["bits_full_scale"] > 6
    # zero sits where the error is smallest: the balanced scheme is worse there
    assert precision(window(scheme="balanced"), 0.01)["zero_error"] > 2 * p["zero_error"]
    tiny = np.zeros((16, 8))
    tiny[0, 0] = 0.3 * p["resolution"]
    snapped = map_weights(tiny, w, G, snap_below=p["resolution"])
    assert snapped[0, 0] == snapped[0, 1] == w.i_min_a
    assert map_weights(tiny, w, G)[0, 0] > w.i_min_a
    with pytest.raises(ValueError):
        precision(w, 0.0)


def test_programmed_weights_drive_signed_vmm_outputs():
    """End to end on the emulated chip: weights -> currents -> programmed -> VMM outputs follow w."""
    with labkit.open_backend("sim://?seed=7") as backend:
        weights = np.random.default_rng(3).uniform(-1, 1, (16, 8))
        result, win, achieved = program_weights(backend, weights, config=ProgramConfig())
        assert result.summary()["within_tolerance_fraction"] >= 0.99
        assert win == WeightWindow.for_backend(backend)
        assert np.max(np.abs(achieved - weights)) <= precision(win, 0.01)["full_scale_error"]
        # one-hot rows, repeated: y_j = t_j(x=0) - t_j(x) is column j's charge; signed = plus - minus
        eye = np.repeat(np.eye(16), 8, axis=0)
        t = backend.vmm_x(eye).reshape(16, 8, 16).mean(axis=1)
        t0 = backend.vmm_x(np.zeros((32, 16))).mean(axis=0)
        y = t0 - t
        signed = y[:, 0::2] - y[:, 1::2]
        corr = np.corrcoef(signed.ravel(), weights.ravel())[0, 1]
        assert corr > 0.97, corr
        # and the full-scale column stays readable (no output clipped at the TDC zero)
        full = backend.vmm_x(np.ones((4, 16)))
        assert np.all(full > 0)


def test_a_small_tile_is_padded_with_zero_weights():
    with labkit.open_backend("sim://?seed=8") as backend:
        tile = np.random.default_rng(1).uniform(-1, 1, (5, 3))
        with pytest.raises(ValueError, match="shape"):
            program_weights(backend, tile)
        result, win, achieved = program_weights(backend, tile, pad=True)
        assert result.summary()["cells"] == 256 and result.summary()["failed_cells"] == 0
        assert np.max(np.abs(achieved[:5, :3] - tile)) < 0.015
        assert np.max(np.abs(achieved[5:])) < 0.005 and np.max(np.abs(achieved[:, 3:])) < 0.005
