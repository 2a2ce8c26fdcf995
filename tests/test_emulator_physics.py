"""Each non-ideality of the emulated chip, switched on alone, shows its physics."""

from __future__ import annotations

import numpy as np

import labkit
from simulator.chip import Switches, VirtualChip

OFF = dict(noise=0, crosstalk=0, droop=0, variability=1, program_noise=0, disturb=0, leakage=0, retention=0)


def open_with(seed=0, **on):
    opts = {**OFF, **on}
    return labkit.open_backend(f"sim://?seed={seed}&preset=model&" + "&".join(f"{k}={int(v)}" for k, v in opts.items()))


def charge(b, x):
    """Output charge (C) per column, from the zero-input baseline."""
    t0 = b.vmm_x(np.zeros((1, 16)))[0]
    return (t0 - b.vmm_x(x)) * b.inner.chip.params.reference_current_a


def test_drain_effect_compresses_large_outputs():
    x_small, x_large = np.full((1, 16), 0.125), np.full((1, 16), 1.0)
    ratios = {}
    for droop in (0, 1):
        with open_with(seed=1, droop=droop) as b:
            ratios[droop] = charge(b, x_large)[0] / charge(b, x_small)[0]
    assert np.allclose(ratios[0], 8.0, rtol=0.03)
    assert np.all(ratios[1] < ratios[0] * 0.97)  # >3 % compression at full scale


def test_crosstalk_makes_output_depend_on_the_pattern_not_only_the_dot_product():
    col = 6
    diffs = {}
    for xt in (0, 1):
        with open_with(seed=2, crosstalk=xt) as b:
            i = b.read_currents()[:, col]
            q = 0.9 * i.min() * 1e-6  # same target charge for both patterns
            spread = np.zeros((1, 16))
            spread[0] = q / 16 / i / 1e-6  # every row contributes q/16: 16 falling edges
            single = np.zeros((1, 16))
            single[0, 0] = q / i[0] / 1e-6  # one row carries it all: one edge
            grid = 256
            spread, single = np.round(spread * grid) / grid, np.round(single * grid) / grid
            diffs[xt] = abs(charge(b, spread)[0, col] - charge(b, single)[0, col])
    lsb_charge = 1.25e-9 * 0.2e-6
    assert diffs[0] < 4 * lsb_charge
    assert diffs[1] > 10 * lsb_charge


def test_programming_noise_spreads_repeated_programming():
    spreads = {}
    for noise in (0, 1):
        with labkit.open_backend(f"sim://?seed=3&preset=model&noise=0&variability=0&disturb=0&program_noise={noise}") as b:
            b.erase_rows([2], 14.0, 0.05)
            before = b.read_currents()[2]
            for _ in range(3):
                b.program_pulses([[2, c] for c in range(16)], 5.0, 0.5e-6)
            drop = np.log(before / b.read_currents()[2])
            spreads[noise] = drop.std() / drop.mean()
    assert spreads[0] < 1e-6
    assert spreads[1] > 0.01


def test_virtual_time_moves_currents():
    with open_with(seed=4, retention=1) as b:
        before = b.read_currents()
        b.capability(labkit.backend.VirtualClock).advance_time_s(1e6)
        after = b.read_currents()
    assert np.all(after < before)
    assert np.median(1 - after / before) > 0.01


def test_temperature_scales_currents_and_compresses_ratios():
    with open_with(seed=5) as b:
        cold = b.read_currents()
        b.capability(labkit.backend.TemperatureControl).set_temperature_k(340.0)
        hot = b.read_currents()
    assert np.median(hot / cold) > 1.5
    assert np.log(hot.max() / hot.min()) < np.log(cold.max() / cold.min())


def test_integration_error_is_below_0p05_percent_of_full_scale():
    chip = VirtualChip(seed=6, switches=Switches(noise=False))
    rng = np.random.default_rng(1)
    x = rng.random((256, 16))
    x[rng.random(x.shape) < 0.4] = 0
    chip.erase(np.arange(16), 12.0, 0.3e-3)  # large currents: strong droop
    widths = x * chip.settings.integration_time_s
    coarse = chip.integrate(widths)
    fine = chip.integrate(widths, substeps=10 * chip.substeps)
    full_scale = chip.sheet.precharge_v - chip.sheet.threshold_v
    assert np.abs(coarse - fine).max() < 5e-4 * full_scale


def test_each_seed_is_a_different_chip_and_a_seed_is_reproducible():
    a, b, a2 = VirtualChip(seed=1), VirtualChip(seed=2), VirtualChip(seed=1)
    assert np.abs(a.params.coupling_f / b.params.coupling_f - 1).max() > 0.05
    np.testing.assert_array_equal(a.params.coupling_f, a2.params.coupling_f)
    # layout pattern: coupling grows along the row and shielded columns couple less
    cf = a.params.coupling_f
    assert cf[:, 12:15].mean() > cf[:, 0:3].mean()
    assert cf[:, 3::4].mean() < cf[:, 0::4].mean()
