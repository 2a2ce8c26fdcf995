"""SCPI drivers against the emulated instruments, over real loopback sockets and pyvisa-py."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit
from drivers.scope import KeysightInfiniiVision, Preamble
from drivers.scpi import InstrumentError
from drivers.smu import ComplianceError, Keithley2400
from drivers.tempctl import LakeShore336
from simulator.emulated import open_sim
from simulator.instruments import (
    InfiniiVisionEmulator,
    Keithley2400Emulator,
    LakeShore336Emulator,
    Wiring,
)
from simulator.scpi_device import ScpiDevice
from simulator.scpi_server import ScpiServer


class FakeClock:
    """A settable clock for the temperature controller's thermal model."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rig():
    """One quiet emulated chip, its three instruments served on loopback, drivers opened."""
    array = open_sim("sim://", {"seed": "7", "noise": "0", "program_noise": "0"})
    wiring = Wiring(smu_cell=(3, 5), scope_columns={1: 4, 2: 9})
    clock = FakeClock()
    emus = {"smu": Keithley2400Emulator(array, wiring), "scope": InfiniiVisionEmulator(array, wiring),
            "tempctl": LakeShore336Emulator(array, time_constant_s=10.0, clock=clock)}
    servers = {k: ScpiServer(d) for k, d in emus.items()}
    drivers = {
        "smu": Keithley2400(servers["smu"].resource, max_compliance_a=5e-6, timeout_s=2),
        "scope": KeysightInfiniiVision(servers["scope"].resource, timeout_s=2),
        "tempctl": LakeShore336(servers["tempctl"].resource, timeout_s=2),
    }

    class Rig:
        pass

    r = Rig()
    r.array, r.wiring, r.emu, r.servers, r.clock = array, wiring, emus, servers, clock
    r.smu, r.scope, r.tempctl = drivers["smu"], drivers["scope"], drivers["tempctl"]
    yield r
    for d in drivers.values():
        d.close()
    for s in servers.values():
        s.stop()


def received(device: ScpiDevice, driver=None) -> list[str]:
    """Lines the instrument received; with ``driver``, after a ``*OPC?`` round trip
    (so that every write before it has been processed)."""
    if driver is not None:
        assert driver.query("*OPC?") == "1"
        return list(device.log)[:-1]
    return list(device.log)


# ----------------------------------------------------------------- SMU


def test_smu_sweep_sends_exactly_the_2400_command_sequence(rig):
    rig.smu.sweep([0.5, 1.0, 1.5], 1e-6)
    assert received(rig.emu["smu"], rig.smu) == [
        ":OUTP OFF", ":SYST:ERR?",
        ":SOUR:FUNC VOLT", ":SYST:ERR?",
        ":SOUR:VOLT:MODE FIX",
        ':SENS:FUNC "CURR"',
        ":SENS:CURR:PROT 1e-06", ":SYST:ERR?",
        ":SENS:CURR:RANG:AUTO ON",
        ":SENS:CURR:NPLC 1",
        ":FORM:ELEM CURR",
        ":TRIG:COUN 1",
        ":OUTP ON", ":SYST:ERR?",
        ":SOUR:VOLT:MODE LIST",
        ":SOUR:LIST:VOLT 0.5,1,1.5",
        ":TRIG:COUN 3", ":SYST:ERR?",
        ":READ?",
        ":OUTP OFF", ":SYST:ERR?",
        ":SOUR:VOLT:MODE FIX",
        ":TRIG:COUN 1",
    ]
    assert rig.emu["smu"].output is False


def test_smu_output_needs_a_compliance_and_nothing_is_sent_without_one(rig):
    with pytest.raises(ComplianceError, match="compliance"):
        rig.smu.output = True
    with pytest.raises(ComplianceError, match="1e-05 A is above the allowed 5e-06 A"):
        rig.smu.compliance_a = labkit.Q_(10, "uA")
    assert received(rig.emu["smu"], rig.smu) == []
    assert rig.emu["smu"].output is False
    rig.smu.compliance_a = "500 nA"  # units at the edge
    assert rig.emu["smu"].compliance_a == pytest.approx(5e-7)
    rig.smu.output = True
    assert rig.emu["smu"].output is True
    rig.smu.reset()  # *RST forgets the compliance: output needs a new one
    with pytest.raises(ComplianceError):
        rig.smu.output = True


def test_bad_setting_is_a_value_error_before_anything_is_written(rig):
    with pytest.raises(ValueError, match="250 V is outside"):
        rig.smu.source_v = 250.0
    with pytest.raises(ValueError, match="not convertible to V"):
        rig.smu.source_v = labkit.Q_(1, "A")
    with pytest.raises(ValueError, match="expected one of"):
        rig.scope.waveform_format = "FLOAT"
    assert received(rig.emu["smu"], rig.smu) == [] and received(rig.emu["scope"], rig.scope) == []


def test_instrument_errors_are_drained_and_raised(rig):
    # a level beyond the fixed 2 V source range is refused by the instrument, and raised
    rig.smu.source_range_v = 2.0
    with pytest.raises(InstrumentError, match=r"-222,'Data out of range'") as info:
        rig.smu.source_v = 5.0
    assert info.value.errors == [(-222, "Data out of range")]
    rig.smu.write(":BOGus:COMMand 1")
    rig.smu.write(":SOUR:VOLT:LEV abc")
    assert rig.smu.errors() == [(-113, "Undefined header"), (-104, "Data type error")]
    assert rig.smu.errors() == []  # drained
    rig.smu.check_errors()  # clean queue: no raise
    # a full queue reports an overflow as its last entry
    for _ in range(12):
        rig.smu.write(":NOPE")
    errs = rig.smu.errors()
    assert len(errs) == 10 and errs[-1] == (-350, "Queue overflow")


def test_smu_reading_follows_the_programmed_cell(rig):
    chip = rig.array.chip
    rig.smu.configure_voltage_source(5e-6)
    rig.smu.output = True
    before = rig.smu.measure_current(1.8)
    assert before == pytest.approx(chip.current_at_gate(1.8)[3, 5], rel=1e-5)
    other = chip.current_at_gate(1.8)[0, 0]
    rig.array.program_pulses(np.array([[3, 5]]), np.array([6.0]), np.array([1e-5]))
    after = rig.smu.measure_current(1.8)
    assert after < 0.7 * before
    assert after == pytest.approx(chip.current_at_gate(1.8)[3, 5], rel=1e-5)
    rig.wiring.smu_cell = (0, 0)  # the board routes another cell to the test port
    assert rig.smu.measure_current(1.8) == pytest.approx(other, rel=1e-3)
    rig.smu.output = False


def test_smu_id_vg_sweep_is_monotone_and_clipped_at_compliance(rig):
    gate = np.linspace(0.0, 2.5, 120)  # more than one 100-point source list
    i = rig.smu.sweep(gate, 2e-7)
    assert i.shape == (120,)
    assert np.all(np.diff(i) >= 0)
    assert i[-1] == pytest.approx(2e-7) and rig.smu.tripped is False  # output off after the sweep
    np.testing.assert_allclose(i, rig.array.id_vg((3, 5), gate, 2e-7), rtol=1e-5)
    assert ":SOUR:LIST:VOLT " in "".join(received(rig.emu["smu"], rig.smu))


# ----------------------------------------------------------------- scope


def test_scope_captures_the_bit_line_of_the_next_vmm(rig):
    T = rig.array.settings.integration_time_s
    widths = np.linspace(0, T, 16)
    rig.scope.arm_single(2, window_s=2.5e-6, volts_per_div=0.15, offset_v=0.55)
    assert rig.emu["scope"].armed
    rig.emu["scope"].trigger(widths)  # the board's integration-start on EXT
    t, v = rig.scope.fetch(2, points=500)
    assert len(t) == len(v) == 500
    assert t[0] == pytest.approx(0.0) and t[-1] == pytest.approx(2.5e-6, rel=0.01)
    ref_t, ref_v = rig.array.capture_bitline(widths, 9)  # channel 2 probes column 9
    lsb = 0.15 * 8 / 65536
    expected = np.interp(t, ref_t, ref_v)
    assert np.abs(v - expected).max() < 2 * lsb + 1e-4
    assert v[0] > 0.6 and v[-1] < v[0] - 0.2  # precharged, then discharged
    log = received(rig.emu["scope"], rig.scope)
    assert log[log.index(":WAV:SOUR CHAN2") :] == [
        ":WAV:SOUR CHAN2", ":WAV:FORM WORD", ":WAV:BYT LSBF", ":WAV:UNS 1", ":WAV:POIN 500",
        ":WAV:PRE?", ":WAV:DATA?", ":SYST:ERR?",
    ]


def test_scope_without_a_trigger_reports_no_data(rig):
    rig.scope.arm_single(1, window_s=2e-6)
    with pytest.raises(labkit.BackendError):
        rig.scope.fetch(1)


def test_preamble_parses_the_ten_fields():
    pre = Preamble.parse("+1,+0,+4,+1,+2.0E-09,-1.0E-06,+0,+1.0E-03,+5.0E-01,+32768")
    np.testing.assert_allclose(pre.times(4), [-1e-6, -1e-6 + 2e-9, -1e-6 + 4e-9, -1e-6 + 6e-9])
    np.testing.assert_allclose(pre.volts([32768, 32769]), [0.5, 0.501])
    with pytest.raises(ValueError, match="10 comma-separated"):
        Preamble.parse("1,2,3")


# ----------------------------------------------------------------- temperature controller


def test_temperature_controller_regulates_the_chip_with_its_time_constant(rig):
    assert rig.tempctl.idn.startswith("LSCI,MODEL336")
    assert rig.tempctl.temperature_k == pytest.approx(300.0)
    i_cold = rig.array.read_currents(np.array([[1, 1]]))[0]
    rig.tempctl.regulate(labkit.Q_(50, "degC"))
    assert rig.tempctl.setpoint_k == pytest.approx(323.15)
    assert rig.tempctl.temperature_k == pytest.approx(300.0)  # nothing happens at once
    rig.clock.now += 10.0  # one time constant
    assert rig.tempctl.temperature_k == pytest.approx(300.0 + 23.15 * (1 - np.exp(-1)), abs=1e-3)
    assert rig.tempctl.heater_percent > 0
    rig.clock.now += 200.0
    assert rig.tempctl.temperature_k == pytest.approx(323.15, abs=1e-3)
    assert rig.array.temperature_k() == pytest.approx(323.15, abs=1e-3)
    assert rig.array.read_currents(np.array([[1, 1]]))[0] != i_cold
    log = received(rig.emu["tempctl"], rig.tempctl)
    assert log[log.index("OUTMODE 1,1,1,0") :][:6] == [
        "OUTMODE 1,1,1,0", "*ESR?", "SETP 1,323.15", "RANGE 1,2", "*ESR?", "*ESR?"]
    rig.tempctl.regulate(290.0)  # the stage cools too
    rig.clock.now += 300.0
    assert rig.tempctl.temperature_k == pytest.approx(290.0, abs=1e-3) and rig.tempctl.heater_percent >= 0
    assert rig.array.temperature_k() == pytest.approx(290.0, abs=1e-3)
    rig.tempctl.heater_range = 0  # heater off: back to ambient
    rig.clock.now += 300.0
    assert rig.tempctl.temperature_k == pytest.approx(300.0, abs=1e-3)


def test_set_point_ramp_runs_at_its_rate_and_reports_its_status(rig):
    t = rig.tempctl
    t.ramp = "1,6.0"  # 6 K/min
    t.regulate(310.0)
    assert t.query("RAMPST? 1") == "1"
    rig.clock.now += 50.0  # 5 K of ramp, the stage lagging one time constant behind
    assert 303.0 < t.temperature_k < 305.0
    rig.clock.now += 400.0
    assert t.query("RAMPST? 1") == "0" and t.temperature_k == pytest.approx(310.0, abs=1e-3)


def test_wait_stable_waits_for_the_loop_in_real_time():
    array = open_sim("sim://", {"seed": "7", "noise": "0"})
    with ScpiServer(LakeShore336Emulator(array, time_constant_s=0.1)) as server, \
            LakeShore336(server.resource, timeout_s=2) as t:
        t.regulate(305.0)
        assert t.temperature_k < 304.0
        t0 = time.monotonic()
        assert t.wait_stable(0.05, timeout_s=5.0, poll_s=0.05) == pytest.approx(305.0, abs=0.05)
        assert 0.2 < time.monotonic() - t0 < 3.0  # ln(5 K / 0.05 K) time constants


def test_temperature_controller_errors_come_from_the_event_status_register(rig):
    rig.tempctl.write("NOSUCH 1")
    with pytest.raises(InstrumentError, match="Command error"):
        rig.tempctl.check_errors()
    rig.tempctl.check_errors()  # *ESR? read clears it
    with pytest.raises(InstrumentError, match="Execution error"):
        rig.tempctl.regulate(450.0)  # beyond what the chip socket may reach
    assert rig.array.temperature_k() == pytest.approx(300.0)


# ----------------------------------------------------------------- the SCPI engine


def test_headers_match_short_and_long_forms_case_insensitively(rig):
    smu = rig.emu["smu"]
    for line in (":SENS:CURR:PROT 2e-6", "sense:current:dc:protection:level 2e-6", ":SENSE1:CURR:PROT 2e-6",
                 "CURR:PROT 2E-6"):
        smu.compliance_a = 0.0
        assert smu.handle(line) is None and smu.compliance_a == 2e-6, line
    assert smu.handle("*IDN?;:SENS:CURR:PROT?") == f"{smu.idn};+2.000000E-06"
    assert not smu.errors


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_random_lines_never_crash_an_instrument(line):
    array = _shared_array()
    for device in (Keithley2400Emulator(array, Wiring()), InfiniiVisionEmulator(array, Wiring()),
                   LakeShore336Emulator(array)):
        reply = device.handle(line.replace("\n", " "))
        assert reply is None or isinstance(reply, (str, bytes))
        assert len(device.errors) <= device.queue_size
    assert 200.0 <= array.temperature_k() <= 420.0


_ARRAY = []


def _shared_array():
    if not _ARRAY:
        _ARRAY.append(open_sim("sim://", {"seed": "1"}))
    return _ARRAY[0]
