"""The public validators (labkit.validate): one-line UsageErrors naming the value, and the
checked value returned in the form the caller goes on with; the routines that use them
refuse bad input with the same type (CLI exit code 2)."""

from __future__ import annotations

import numpy as np
import pytest

from labkit import calibrate, measure
from labkit.errors import UsageError, exit_code
from labkit.validate import check_fraction, check_inputs, check_int, check_positive


def refused(call, match: str) -> UsageError:
    with pytest.raises(UsageError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and exit_code(info.value) == 2
    return info.value


def test_check_int_takes_integers_in_range_only():
    assert check_int("n", np.int64(7), 1) == 7 and type(check_int("n", np.int64(7), 1)) is int
    assert check_int("n", 10, 1, 10) == 10
    refused(lambda: check_int("patterns", True, 1), r"patterns=True; expected an integer >= 1")
    refused(lambda: check_int("patterns", 2.0, 1), r"patterns=2\.0; expected an integer >= 1")
    refused(lambda: check_int("points", 11, 2, 10), r"points=11; expected an integer in \[2, 10\]")
    refused(lambda: check_int("seed", -1, 0), r"seed=-1")


def test_check_positive_and_check_fraction():
    check_positive("epochs", 3)
    check_positive("lr", 1e-3, integer=False)
    refused(lambda: check_positive("epochs", 2.5), "epochs=2.5: expected a positive whole number")
    refused(lambda: check_positive("lr", float("inf"), integer=False), "lr=inf: expected a positive number")
    assert check_fraction("zero_fraction", 1) == 1.0
    refused(lambda: check_fraction("zero_fraction", 1.0, closed=False), r"expected a fraction in \[0, 1\)")
    refused(lambda: check_fraction("zero_fraction", "0.3"), r"zero_fraction='0.3'")
    refused(lambda: check_fraction("zero_fraction", float("nan")), "zero_fraction=nan")


def test_check_inputs_shape_finiteness_and_range():
    x = check_inputs("x", [[0.0, 0.5, 1.0]], 3)
    assert x.dtype == float and x.shape == (1, 3)
    refused(lambda: check_inputs("x", np.zeros((4, 15)), 16), r"x has shape \(4, 15\); expected \(B >= 1, 16\)")
    refused(lambda: check_inputs("x", np.zeros((0, 16)), 16), "shape")
    refused(lambda: check_inputs("x", [[np.nan, 0.0]], 2), "x contains nan; expected finite values")
    refused(lambda: check_inputs("background", [[0.0, 1.5]], 2), r"background must be in \[0, 1\]")


def test_measurement_and_calibration_refuse_with_the_same_validators():
    refused(lambda: measure.random_patterns(0), "patterns=0")
    refused(lambda: measure.random_patterns(4, zero_fraction=1.5), "zero_fraction=1.5")
    refused(lambda: measure.activation_like_patterns(4, zero_fraction=1.0), r"zero_fraction=1\.0")
    refused(lambda: measure.SuiteConfig(droop_levels=3).validate(), r"droop_levels=3; expected an integer in \[4, 4096\]")
    refused(lambda: calibrate.CalibrationConfig(seed=-1).validate(), "seed=-1")
    refused(lambda: calibrate.CalibrationConfig(activation_zero_fraction=1.0).validate(), "activation_zero_fraction")
