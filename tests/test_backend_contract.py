"""The ArrayBackend contract, for every backend kind (sim://, the virtual bench, ...)."""

from __future__ import annotations

import numpy as np
import pytest

from labkit import SafetyError
from tests.conftest import chip_of

GRID = 256  # inputs on the 8-bit input clock grid


def test_identity_and_geometry(array_factory):
    b = array_factory(seed=3)
    g = b.geometry
    assert (g.rows, g.cols) == (16, 16)
    assert sorted(c for pair in g.pairs for c in pair) == list(range(16))
    assert b.identity.chip_id and b.identity.firmware
    assert b.settings.integration_time_s > 0


def test_reads_are_positive_and_finite(array_factory):
    b = array_factory(seed=1)
    i = b.read_currents()
    assert i.shape == (16, 16)
    assert np.all(np.isfinite(i)) and np.all(i > 0)
    assert 1e-10 < np.median(i) < 1e-6
    assert b.read_currents([[2, 3], [15, 15]]).shape == (2,)


def test_erase_raises_and_program_lowers_only_the_addressed_cell(array_factory):
    b = array_factory(seed=2, noise=False)
    before = b.read_currents()
    b.erase_rows([4], 13.0, 1e-3)
    erased = b.read_currents()
    assert np.all(erased[4] > before[4] * 1.5)
    np.testing.assert_allclose(np.delete(erased, 4, axis=0), np.delete(before, 4, axis=0), rtol=1e-9)
    b.program_pulses([[4, 7]], 5.5, 1e-6)
    after = b.read_currents()
    assert after[4, 7] < erased[4, 7] * 0.9
    others = np.ones((16, 16), bool)
    others[4, 7] = False
    rel = np.abs(after[others] / erased[others] - 1)
    assert rel.max() < 0.02  # half-select disturb bound


def test_vmm_output_time_is_monotone_in_each_input(array_factory):
    b = array_factory(seed=4)
    base = np.full(16, 0.3)
    rows = [0, 5, 10, 15]
    for i in rows:
        times = []
        for xi in (0.0, 0.5, 1.0):
            x = base.copy()
            x[i] = xi
            times.append(b.vmm_x(np.tile(x, (16, 1))).mean(axis=0))
        t0, t1, t2 = times
        tol = 3 * b.settings.tdc_lsb_s
        assert np.all(t1 <= t0 + tol) and np.all(t2 <= t1 + tol), f"row {i} not monotone"
        assert np.any(t2 < t0 - 5 * b.settings.tdc_lsb_s), f"row {i} has no effect"


def test_ideal_chip_computes_the_dot_product_within_tdc_quantization(array_factory):
    b = array_factory(seed=5, noise=False, crosstalk=False, droop=False)
    chip = chip_of(b)
    rng = np.random.default_rng(0)
    x = rng.integers(0, GRID + 1, size=(64, 16)) / GRID
    t_zero = b.vmm_x(np.zeros((1, 16)))[0]
    y = t_zero - b.vmm_x(x)  # s
    currents = b.read_currents()
    expected = (x * b.settings.integration_time_s) @ currents / chip.params.reference_current_a
    assert np.abs(y - expected).max() <= 2.01 * b.settings.tdc_lsb_s


def test_safety_envelope_rejects_before_anything_is_applied(array_factory):
    b = array_factory(seed=6, noise=False)
    chip = chip_of(b)
    before, pulses = b.read_currents(), chip.pulses_applied
    with pytest.raises(SafetyError, match="7.5 V"):
        b.program_pulses([[0, 0], [1, 1]], [5.0, 7.5], 1e-6)
    with pytest.raises(SafetyError, match="width"):
        b.program_pulses([[0, 0]], 5.0, 1.0)
    with pytest.raises(SafetyError, match="erase voltage"):
        b.erase_rows([0], 20.0, 1e-3)
    with pytest.raises(SafetyError, match="read_voltage"):
        b.configure(read_voltage_v=5.0)
    assert chip.pulses_applied == pulses
    np.testing.assert_array_equal(b.read_currents(), before)
