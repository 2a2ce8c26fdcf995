"""The second-order physics of the emulated chip (docs/physics.md): each effect alone shows
its physical signature, switching it off leaves the model-form chip untouched, and the
strict ``sim://`` URI parsing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import labkit
from simulator import native_integrate
from simulator.chip import Switches, VirtualChip

QUIET = dict(noise=False, program_noise=False, disturb=False, leakage=False, retention=False)


def chip(seed=0, **on) -> VirtualChip:
    """A model-form chip without noise, with the named switches set."""
    return VirtualChip(seed=seed, switches=dataclasses.replace(Switches(**QUIET), **on))


def charge(c: VirtualChip, widths_s: np.ndarray) -> np.ndarray:
    """Charge (C) each bit line lost during integration, ``(B, cols)`` (white-box)."""
    return (c.params.precharge_v - c.integrate(widths_s)) * c.params.capacitance_f


def set_column_current(c: VirtualChip, col: int, factor: float) -> None:
    """Scale the read currents of one column by ``factor`` (its floating gates move)."""
    p = c.params
    c.overdrive_v[:, col] += p.slope_n[:, col] * 0.02585 * np.log(factor)
    c._invalidate()


def test_presets_silicon_is_default_and_turns_every_second_order_effect_on():
    assert Switches.preset("model") == Switches()
    assert Switches.preset("default") == Switches.preset("silicon")  # sim:// chips are silicon unless told
    silicon = Switches.preset("silicon")
    assert all(getattr(silicon, n) for n in Switches.SECOND_ORDER)
    assert not any(getattr(Switches(), n) for n in Switches.SECOND_ORDER)
    assert all(getattr(silicon, f.name) for f in dataclasses.fields(Switches))


@pytest.mark.parametrize("effect", Switches.SECOND_ORDER)
def test_an_effect_draws_from_its_own_streams(effect):
    """Turning one effect on leaves the chip's other parameters and the shared noise
    stream where the model-form chip has them, so off restores it exactly."""
    a, b = VirtualChip(seed=3), VirtualChip(seed=3, switches=dataclasses.replace(Switches(), **{effect: True}))
    for f in dataclasses.fields(a.params):
        np.testing.assert_array_equal(getattr(a.params, f.name), getattr(b.params, f.name))
    x = np.random.default_rng(0).random((64, 16)) * 1e-6
    for c in (a, b):
        c.program(np.array([[1, 1], [2, 5]]), np.array([5.0, 5.0]), np.array([1e-6, 1e-6]))
        c.advance_time_s(10.0)
        c.vmm(x)
        c.read_currents(np.array([[0, 0]]))
    assert a.noise_rng.bit_generator.state == b.noise_rng.bit_generator.state
    off = VirtualChip(seed=3, switches=dataclasses.replace(Switches(), **{effect: False}))
    np.testing.assert_array_equal(off.vmm(x), VirtualChip(seed=3).vmm(x))


def test_bit_line_coupling_moves_a_column_when_its_neighbour_changes():
    x = np.full((1, 16), 0.8e-6)
    moved = {}
    for on in (False, True):
        c = chip(seed=1, bl_coupling=on)
        before = charge(c, x)[0]
        set_column_current(c, 7, 0.3)  # the neighbour sinks less; column 6's cells do not move
        after = charge(c, x)[0]
        assert after[7] < 0.5 * before[7]
        moved[on] = (before[6] - after[6]) / (before[7] - after[7])
        far = (before[2] - after[2]) / (before[7] - after[7])
        assert abs(far) < 1e-6  # three columns away: nothing (coupling ~2 %^3)
    assert moved[False] == 0.0
    assert 0.01 < moved[True] < 0.03  # C_BB / C ~ 2 %: the neighbour's charge shared


def test_source_line_output_depends_on_the_total_current_of_other_columns():
    x = np.full((1, 16), 0.8e-6)
    drop = {}
    for on in (False, True):
        c = chip(seed=2, source_line=on, droop=False)
        before = charge(c, x)[0]
        for col in range(8, 16):
            set_column_current(c, col, 4.0)  # far columns draw 4x more through the source line
        after = charge(c, x)[0]
        drop[on] = 1 - after[0] / before[0]
        i_extra = (c.currents()[:, 8:].sum() * 0.75)  # A added to the source line
        expected = 1 - np.exp(-c._silicon_consts()["source_a_per_v"] * c.si.source_r_ohm * i_extra)
    assert drop[False] == 0.0
    assert 0.5 * expected < drop[True] < 1.5 * expected and drop[True] > 0.02


def test_word_line_slew_shortens_every_pulse_and_swallows_short_ones():
    ts = np.array([50, 100, 150, 200]) * 3.90625e-9  # whole input clocks
    shortfall, short_part = {}, {}
    for on in (False, True):
        c = chip(seed=4, wl_slew=on, droop=False, crosstalk=False)
        w = np.zeros((len(ts) + 1, 16))
        w[:-1, 3] = ts
        w[-1, 3] = 15.625e-9  # shorter than the 30 ns rise
        q = charge(c, w)[:, 5]
        slope, icpt = np.polyfit(ts, q[:-1], 1)
        shortfall[on] = -icpt / slope  # s of pulse width that does not conduct
        short_part[on] = q[-1] / (slope * 15.625e-9)
    assert abs(shortfall[False]) < 1e-12
    assert 20e-9 < shortfall[True] < 32e-9  # ~ t_rise - 2 tau, tau ~ 1 ns
    assert short_part[False] == pytest.approx(1.0, rel=1e-9) and short_part[True] < 0.01


def test_word_line_slew_a_short_pulse_couples_only_the_level_it_reached():
    c = chip(seed=4, wl_slew=True, droop=False)
    w = np.zeros((2, 16))
    w[0, 3], w[1, 3] = 15.625e-9, 500e-9
    dv = c.params.precharge_v - c.integrate(w)
    step = c.params.coupling_f[3] * c.settings.read_voltage_v / c.params.capacitance_f
    reached = 15.625e-9 / c.si.wl_rise_s[3]
    np.testing.assert_allclose(dv[0], reached * step, rtol=0.02)  # the cell itself barely conducted
    assert np.all(dv[1] > step)


def tdc_histogram(on: bool, n=400_000):
    c = chip(seed=5, tdc_inl=on, comparator=False)
    lsb = c.settings.tdc_lsb_s
    slope = c.readout_slope_v_per_s()
    thr = c.sheet.threshold_v + c.params.comparator_offset_v
    t = np.random.default_rng(1).uniform(100 * lsb, 900 * lsb, size=(n, 16)) - c.params.comparator_delay_s
    codes = np.rint(c.readout_s(thr + t * slope) / lsb).astype(int)
    lo, hi = 120, 880
    hist = np.stack([np.bincount(codes[:, j], minlength=1024)[lo:hi] for j in range(16)])
    return c, hist / hist.mean(axis=1, keepdims=True) - 1, lo, hi


def test_tdc_code_histogram_shows_dnl_and_inl():
    _, dnl_off, _, _ = tdc_histogram(False)
    assert np.abs(dnl_off).std() < 0.06  # flat within counting noise
    c, dnl, lo, hi = tdc_histogram(True)
    from simulator.silicon import tdc_edges_lsb

    edges = tdc_edges_lsb(c.si, c.settings.tdc_bits, 16)
    hidden = np.diff(edges, axis=1)[:, lo - 1:hi - 1] - 1.0  # width of code k: edge k+1 - edge k
    corr = [np.corrcoef(dnl[j], hidden[j])[0, 1] for j in range(16)]
    assert np.median(corr) > 0.8
    assert 0.08 < dnl.std() < 0.3
    inl = np.cumsum(dnl, axis=1)
    inl -= np.linspace(inl[:, :1], inl[:, -1:], inl.shape[1], axis=1)[..., 0]
    assert 0.5 < np.abs(inl).max(axis=1).mean() < 3.0  # ~1.5 LSB peak


def test_comparator_delay_depends_on_the_overdrive():
    for on in (False, True):
        c = chip(seed=6, comparator=on)
        lsb, slope = c.settings.tdc_lsb_s, c.readout_slope_v_per_s()
        thr = c.sheet.threshold_v + c.params.comparator_offset_v
        over = np.array([[0.1e-3], [2e-3], [0.2]]) * np.ones(16)
        t = c.readout_s(thr + over)
        delay = t - over / slope
        big = delay[2] - c.params.comparator_delay_s
        assert np.all(np.abs(big) <= lsb)  # a long ramp: the constant delay of the model form
        if on:
            assert np.all(delay[0] < 0.4 * c.params.comparator_delay_s)  # small overdrive: faster
            assert np.all(delay[1] < delay[2] + lsb)
        else:
            assert np.all(np.abs(delay[0] - c.params.comparator_delay_s) <= lsb)


def log_currents_over_time(uri: str, times_s, program=True) -> np.ndarray:
    with labkit.open_backend(uri) as b:
        if program:
            b.erase_rows(list(range(16)), 14.0, 0.05)
            cells = [[r, col] for r in range(16) for col in range(16)]
            for _ in range(4):
                b.program_pulses(cells, 5.0, 0.5e-6)
        clock = b.capability(labkit.backend.VirtualClock)
        out, now = [], 0.0
        for t in times_s:
            clock.advance_time_s(t - now)
            now = t
            out.append(np.log(b.read_currents()))
    return np.array(out)


def test_relaxation_after_programming_is_logarithmic_then_settles():
    times = np.array([0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6])
    base = "sim://?seed=7&preset=model&noise=0&program_noise=0&disturb=0&retention=0"
    off = log_currents_over_time(base, times)
    assert np.abs(off - off[0]).max() == 0.0
    on = log_currents_over_time(base + "&relaxation=1", times)
    rise = np.median((on - on[0]).reshape(len(times), -1), axis=1)  # the current creeps back up
    per_decade = np.diff(rise)[1:5]  # 1-10 s, ..., 1e3-1e4 s
    assert np.all(per_decade > 0) and per_decade.max() < 2.5 * per_decade.min()
    assert 0.0005 < rise[5] < 0.05  # 0.05-5 % of the current in the first hours (4 pulses)
    assert rise[7] - rise[6] < 0.05 * rise[7]  # settled after a day


def test_flicker_noise_spectrum_falls_as_one_over_f():
    times = np.arange(1024) * 1.0
    base = "sim://?seed=8&preset=model&noise=0&retention=0"
    assert np.ptp(log_currents_over_time(base, times[:8], program=False), axis=0).max() == 0.0
    y = log_currents_over_time(base + "&flicker=1", times, program=False).reshape(len(times), -1)
    y = y - y.mean(axis=0)
    spec = (np.abs(np.fft.rfft(y * np.hanning(len(y))[:, None], axis=0)) ** 2).mean(axis=1)
    f = np.fft.rfftfreq(len(y), d=1.0)
    band = (f > 4 / len(y)) & (f < 0.1)  # below the corner of the fastest component
    slope = np.polyfit(np.log(f[band]), np.log(spec[band]), 1)[0]
    assert -1.3 < slope < -0.75
    rms = y.std(axis=0).mean()
    assert 1e-4 < rms < 0.05  # 0.01-5 % of the current over a quarter hour


def test_silicon_integration_is_accurate_and_the_c_kernel_matches_numpy():
    c = VirtualChip(seed=9, switches=dataclasses.replace(Switches.preset("silicon"), noise=False))
    c.erase(np.arange(16), 12.0, 0.3e-3)  # large currents: strong droop and source-line drop
    rng = np.random.default_rng(2)
    x = rng.random((256, 16))
    x[rng.random(x.shape) < 0.4] = 0
    w = x * c.settings.integration_time_s
    fs = c.sheet.precharge_v - c.sheet.threshold_v
    coarse, fine = c.integrate(w), c.integrate(w, substeps=10)
    assert np.abs(coarse - fine).max() < 5e-4 * fs
    if native_integrate.available():
        c.native = False
        np.testing.assert_allclose(c.integrate(w), coarse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("uri, names", [
    ("sim://3", ["'sim://3'", "sim://?seed=N"]),
    ("sim://?seed=1&seed=2", ["'seed'", "twice"]),
    ("sim://?seed=1&noise=0&noise=1", ["'noise'", "twice"]),
    ("sim://x?seed=1", ["sim://x?seed=1"]),
    ("sim://?seed=1#frag", ["#frag"]),
    ("sim://?preset=chip", ["'chip'", "silicon"]),
    ("sim://?seed=-2", ["'-2'"]),
    ("sim://?bl_coupling=2", ["bl_coupling", "'2'"]),
    ("sim://?blcoupling=0", ["'blcoupling'", "bl_coupling"]),
])
def test_sim_uri_is_parsed_strictly(uri, names):
    with pytest.raises(ValueError) as err:
        with labkit.open_backend(uri):
            pass
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in names), msg


def test_silicon_preset_opens_and_each_effect_can_be_switched_off_in_the_uri():
    x = np.random.default_rng(3).random((32, 16))
    with labkit.open_backend("sim://?seed=2&preset=silicon&noise=0") as b:
        silicon = b.vmm_x(x)
        assert all(getattr(b.inner.chip.switches, n) for n in Switches.SECOND_ORDER)
    all_off = "&".join(f"{n}=0" for n in Switches.SECOND_ORDER)
    with labkit.open_backend("sim://?seed=2&noise=0&preset=silicon&" + all_off) as b:
        model_form = b.vmm_x(x)
    with labkit.open_backend("sim://?seed=2&noise=0&preset=model") as b:
        np.testing.assert_array_equal(b.vmm_x(x), model_form)
    assert np.abs(silicon - model_form).max() > 10 * 1.25e-9
