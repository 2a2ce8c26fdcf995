"""Every capability passes the safety envelope: a request outside it is refused with a
clear error and the backend sees nothing, on every backend kind."""

from __future__ import annotations

import inspect
import math
from typing import Protocol, runtime_checkable

import numpy as np
import pytest

from labkit.backend import contract
from labkit.backend.guards import GUARDS
from labkit.errors import UsageError

T = 1e-6  # the default integration time (s)
BAD = {  # capability -> method -> (arguments, what the error names)
    contract.GateSweep: ("id_vg", [
        (((0, 0), [50.0], 1e-6), "gate voltage=50 V"),
        (((0, 0), [1.0], 1.0), "compliance_a=1 A"),
        (((0, 0), [1.0], 0.0), "compliance_a=0 A"),
        (((0, 0), [1.0], -1e-6), "compliance_a=-1e-06 A"),
        (((0, 0), [-0.5, 1.0], 1e-6), "gate voltage=-0.5 V"),
        (((0, 0), [math.nan], 1e-6), "gate_v contains nan"),
        (((0, 0), [], 1e-6), "gate_v has shape"),
        (((0, 0), np.full(20_001, 1.0), 1e-6), "gate_v has shape"),
        (((16, 0), [1.0], 1e-6), "unknown cell"),
        (([[0, 0], [1, 1]], [1.0], 1e-6), "expected one"),
    ]),
    contract.TemperatureControl: ("set_temperature_k", [
        ((1000.0,), "temperature=1000 K"),
        ((100.0,), "temperature=100 K"),
        ((-5.0,), "temperature=-5 K"),
        ((math.nan,), "temperature=nan K"),
    ]),
    contract.VirtualClock: ("advance_time_s", [
        ((-1.0,), "virtual clock step=-1 s"),
        ((math.inf,), "virtual clock step=inf s"),
        ((1e12,), "virtual clock step=1e+12 s"),
    ]),
    contract.WaveformCapture: ("capture_bitline", [
        ((np.full(16, 2 * T), 0), "pulse width=2e-06 s"),
        ((np.full(16, -1e-9), 0), "pulse width=-1e-09 s"),
        ((np.full(15, 0.5 * T), 0), "widths_s has shape"),
        ((np.full(16, math.nan), 0), "widths_s contains nan"),
        ((np.full(16, 0.5 * T), 99), "col=99"),
        ((np.full(16, 0.5 * T), True), "col=True"),
    ]),
}


def _spy(backend, name: str) -> list:
    """Record every call that reaches the raw backend's ``name`` method."""
    calls = []
    original = getattr(backend.inner, name)

    def recorded(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    setattr(backend.inner, name, recorded)
    return calls


@pytest.mark.parametrize("protocol", list(BAD), ids=lambda p: p.__name__)
def test_capability_requests_outside_the_envelope_never_reach_the_backend(array_factory, protocol):
    b = array_factory(seed=1)
    cap = b.capability(protocol)
    if cap is None:
        pytest.skip(f"{array_factory.kind} has no {protocol.__name__}")
    assert cap is not b.inner
    method, cases = BAD[protocol]
    calls = _spy(b, method)
    for args, names in cases:
        with pytest.raises(UsageError) as err:
            getattr(cap, method)(*args)
        message = str(err.value)
        assert names in message and "\n" not in message, message
    assert calls == []


def test_valid_capability_requests_pass_the_guard(array_factory):
    b = array_factory(seed=1)
    sweep = b.capability(contract.GateSweep)
    i = sweep.id_vg((3, 4), [0.8, 1.2, 1.6], 2e-6)
    assert i.shape == (3,) and np.all(np.diff(i) > 0) and np.all(i <= 2e-6)
    ctl = b.capability(contract.TemperatureControl)
    if ctl is not None and array_factory.kind == "sim":
        ctl.set_temperature_k(320.0)
        assert b.temperature_k() == pytest.approx(320.0)


def test_a_tightened_envelope_is_the_one_the_guards_enforce():
    import dataclasses

    import labkit

    with labkit.open_backend("sim://?seed=2") as b:
        b.inner.envelope = dataclasses.replace(b.envelope, temperature_range_k=(280.0, 330.0))
        calls = _spy(b, "set_temperature_k")
        with pytest.raises(UsageError, match="temperature=340 K is outside the allowed"):
            b.capability(contract.TemperatureControl).set_temperature_k(340.0)
        assert calls == []


def test_every_capability_protocol_has_a_guard():
    protocols = [obj for _, obj in inspect.getmembers(contract, inspect.isclass)
                 if issubclass(obj, Protocol) and obj is not contract.ArrayBackend and obj is not Protocol]
    assert set(protocols) == set(GUARDS), "a capability without a guard would bypass the envelope"


def test_a_capability_without_a_guard_is_never_handed_out():
    import labkit

    @runtime_checkable
    class Unguarded(Protocol):
        def set_temperature_k(self, kelvin: float) -> None: ...

    with labkit.open_backend("sim://") as b:
        with pytest.raises(TypeError, match="no safety guard"):
            b.capability(Unguarded)
