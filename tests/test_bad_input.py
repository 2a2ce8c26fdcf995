"""Bad input is a ValueError naming the value, and changes nothing on the chip."""

from __future__ import annotations

import numpy as np
import pytest

import labkit
from tests.conftest import chip_of


@pytest.fixture
def quiet():
    with labkit.open_backend("sim://?seed=9&noise=0") as b:
        yield b


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda b: b.vmm(np.zeros((4, 15))), r"\(4, 15\)"),
        (lambda b: b.vmm(np.full((2, 16), np.nan)), "nan"),
        (lambda b: b.vmm(np.full((2, 16), -1e-7)), "-1e-07"),
        (lambda b: b.vmm(np.full((2, 16), 2e-6)), "2e-06 s"),
        (lambda b: b.vmm_x(np.full(16, 1.5)), "1.5"),
        (lambda b: b.read_currents([[16, 0]]), r"\(16, 0\)"),
        (lambda b: b.read_currents([[0, -1]]), r"\(0, -1\)"),
        (lambda b: b.read_currents([1, 2, 3]), r"\(3,\)"),
        (lambda b: b.program_pulses([[0, 0]], np.nan, 1e-6), "nan"),
        (lambda b: b.program_pulses([[0, 99]], 5.0, 1e-6), r"\(0, 99\)"),
        (lambda b: b.program_pulses([[0, 0]], 5.0, -1e-6), "-1e-06"),
        (lambda b: b.erase_rows([17], 12.0, 1e-3), "17"),
        (lambda b: b.configure(integration_time_s=1.0), "integration_time_s=1"),
        (lambda b: b.configure(tdc_bits=40), "tdc_bits=40"),
        (lambda b: b.configure(bogus=1), "bogus"),
    ],
)
def test_bad_input_names_the_value_and_changes_nothing(quiet, call, match):
    chip = chip_of(quiet)
    before, pulses, settings = quiet.read_currents(), chip.pulses_applied, quiet.settings
    with pytest.raises(ValueError, match=match):
        call(quiet)
    assert chip.pulses_applied == pulses
    assert quiet.settings == settings
    np.testing.assert_array_equal(quiet.read_currents(), before)


def test_pint_quantities_are_accepted_at_the_edge(quiet):
    q = labkit.Q_
    quiet.configure(integration_time_s=q(2, "us"))
    assert quiet.settings.integration_time_s == pytest.approx(2e-6)
    with pytest.raises(ValueError, match="not convertible"):
        quiet.configure(integration_time_s=q(2, "V"))


@pytest.mark.parametrize(
    "uri, match",
    [
        ("nosuch://x", "nosuch"),
        ("sim://?seed=abc", "abc"),
        ("sim://?wobble=1", "wobble"),
        ("sim://?preset=shiny", "shiny"),
        ("sim://?noise=maybe", "maybe"),
        ("no-colon", "no-colon"),
    ],
)
def test_bad_uris(uri, match):
    with pytest.raises(ValueError, match=match):
        with labkit.open_backend(uri):
            pass
