"""The field's own drivers against the emulated instruments: PyMeasure's and QCoDeS's
Keithley 2400 and Lake Shore 336, PyMeasure's InfiniiVision (DSOX1102G) driver and a
generic pyvisa session, over pyvisa-py and loopback sockets. Each test makes the calls a
lab script makes, checks the values against the coupled chip, and fails on any error the
instrument queued."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from simulator.bench import BenchArray, wire_instruments
from simulator.emulated import open_sim
from simulator.instruments import (
    InfiniiVisionEmulator,
    Keithley2400Emulator,
    Wiring,
)
from simulator.scpi_server import ScpiServer

pymeasure = pytest.importorskip("pymeasure")
qcodes = pytest.importorskip("qcodes")

CELL = (3, 5)


@pytest.fixture
def bench():
    """A quiet chip wired as on the bench: SMU on CELL, scope on columns 4 and 9."""
    array = open_sim("sim://", {"seed": "7", "noise": "0", "program_noise": "0"})
    wiring = Wiring(smu_cell=CELL, scope_columns={1: 4, 2: 9})
    chip = BenchArray(array, wiring)
    emus = wire_instruments(chip, wiring, thermal_time_constant_s=0.05)
    servers = {k: ScpiServer(d) for k, d in emus.items()}

    class Bench:
        pass

    b = Bench()
    b.array, b.chip, b.emu, b.servers = array, chip, emus, servers
    b.address = {k: s.resource for k, s in servers.items()}
    yield b
    for s in servers.values():
        s.stop()
    from qcodes.instrument import Instrument

    Instrument.close_all()


def no_errors(device) -> None:
    """Nothing queued: the SCPI error queue is empty and no error bit is set in *ESR."""
    assert list(device.errors) == [] if device.has_error_queue else True
    assert device.esr & 0b0011_1100 == 0, f"ESR {device.esr:#x}, errors {list(device.errors)}"


def _pm(cls, address, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return cls(address, visa_library="@py", **kw)


# ----------------------------------------------------------------- Keithley 2400


def test_pymeasure_keithley2400_measures_the_routed_cell_and_fills_its_buffer(bench):
    from pymeasure.instruments.keithley import Keithley2400

    k = _pm(Keithley2400, bench.address["smu"], read_termination="\n", write_termination="\n")
    chip = bench.array.chip
    assert k.id.startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2400")
    k.reset()
    k.clear()
    k.source_mode = "voltage"
    k.compliance_current = 5e-6
    k.source_voltage_range = 2
    k.current_range_auto_enabled = True
    k.current_nplc = 1
    k.enable_source()
    assert k.source_enabled is True
    k.source_voltage = 1.8
    assert k.current == pytest.approx(chip.current_at_gate(1.8)[CELL], rel=1e-5)
    k.ramp_to_voltage(1.2, steps=4, pause=0)
    assert k.source_voltage == pytest.approx(1.2)
    assert k.current == pytest.approx(chip.current_at_gate(1.2)[CELL], rel=1e-5)
    # the buffer API: 10 triggered readings, statistics from CALC3
    k.source_voltage = 1.8
    k.config_buffer(points=10)
    k.start_buffer()
    k.wait_for_buffer(timeout=5, interval=0.01)
    assert k.is_buffer_full()
    data = k.buffer_data
    assert data.shape == (50,)  # five elements per reading after reset
    np.testing.assert_allclose(data[1::5], chip.current_at_gate(1.8)[CELL], rtol=1e-5)
    assert k.mean_current == pytest.approx(chip.current_at_gate(1.8)[CELL], rel=1e-5)
    assert k.mean_voltage == pytest.approx(1.8)
    # trigger model
    k.trigger_count = 3
    k.arm_count = 2
    assert (k.trigger_count, k.arm_count) == (3, 2)
    k.trigger_delay = 0.001
    assert k.trigger_delay == pytest.approx(0.001)
    k.trigger_on_bus()
    k.trigger_immediately()
    k.trigger_count, k.arm_count = 1, 1
    k.wires = 4
    assert k.wires == 4
    k.wires = 2
    k.display_enabled = False
    k.display_enabled = True
    k.beep(440, 0.1)
    k.auto_zero = True
    k.line_frequency = 50
    assert k.line_frequency == 50
    k.shutdown()
    assert k.complete == "1"  # a round trip: every write before it has been handled
    assert bench.emu["smu"].output is False
    assert k.check_errors() == []
    no_errors(bench.emu["smu"])


def test_pymeasure_keithley2400_sources_current_into_the_cell(bench):
    from pymeasure.instruments.keithley import Keithley2400

    k = _pm(Keithley2400, bench.address["smu"], read_termination="\n", write_termination="\n")
    k.reset()
    k.source_mode = "current"
    k.compliance_voltage = 2.5
    k.source_current_range = 1e-6
    k.source_current = 10e-9
    k.voltage_nplc = 1
    k.enable_source()
    v = k.voltage
    # the gate voltage at which the cell conducts 10 nA
    assert bench.array.id_vg(CELL, np.array([v]), 1.0)[0] == pytest.approx(10e-9, rel=0.02)
    assert k.current == pytest.approx(10e-9)
    k.disable_source()
    assert k.check_errors() == []
    no_errors(bench.emu["smu"])


def test_qcodes_keithley2400_reads_the_cell_and_resets(bench):
    from qcodes.instrument_drivers.Keithley import Keithley2400

    k = Keithley2400("smu", bench.address["smu"], visalib="@py", terminator="\n")
    chip = bench.array.chip
    k.output(True)
    k.reset()  # sends ':*RST'
    assert k.ask("*OPC?") == "1" and bench.emu["smu"].output is False
    k.mode("VOLT")
    assert k.sense() == '"CURR:DC"'
    k.compliancei(5e-6)
    k.rangev(2.0)
    k.nplci(0.5)
    assert k.compliancei() == pytest.approx(5e-6) and k.nplci() == pytest.approx(0.5)
    k.output(True)
    for gate in (1.0, 1.8):
        k.volt(gate)
        assert k.curr() == pytest.approx(chip.current_at_gate(gate)[CELL], rel=1e-5)
    assert k.resistance() == pytest.approx(1.8 / chip.current_at_gate(1.8)[CELL], rel=1e-5)
    k.output(False)
    k.mode("CURR")
    k.compliancev(2.5)
    k.rangei(1e-6)
    k.output(True)
    k.curr(20e-9)
    assert bench.array.id_vg(CELL, np.array([k.volt()]), 1.0)[0] == pytest.approx(20e-9, rel=0.02)
    k.output(False)
    assert k.ask(":SYST:ERR:ALL?") == '0,"No error"'
    no_errors(bench.emu["smu"])


def test_smu_noise_follows_nplc_and_range():
    array = open_sim("sim://", {"seed": "7", "noise": "0"})
    smu = Keithley2400Emulator(array, Wiring(smu_cell=CELL), noise=True)
    smu.handle(":SENS:CURR:PROT 1e-5;:OUTP ON;:SOUR:VOLT 1.8;:FORM:ELEM CURR;:TRIG:COUN 400")

    def spread(setup: str) -> float:
        smu.handle(setup)
        return float(np.std([float(x) for x in smu.handle(":READ?").split(",")]))

    truth = array.id_vg(CELL, np.array([1.8]), 1e-5)[0]
    slow = spread(":SENS:CURR:NPLC 10;:SENS:CURR:RANG 1e-5")
    base = spread(":SENS:CURR:NPLC 1")
    fast = spread(":SENS:CURR:NPLC 0.01")
    wide = spread(":SENS:CURR:NPLC 1;:SENS:CURR:RANG 1e-3")
    assert base == pytest.approx(1e-5 * 1e-5, rel=0.2)  # 1e-5 of the 10 uA range at 1 PLC
    assert fast == pytest.approx(10 * base, rel=0.25) and slow == pytest.approx(base / np.sqrt(10), rel=0.25)
    assert wide == pytest.approx(100 * base, rel=0.25)
    reads = [float(x) for x in smu.handle(":SENS:CURR:NPLC 1;:SENS:CURR:RANG:AUTO ON;:READ?").split(",")]
    assert len(set(reads)) > 0.9 * len(reads) and np.mean(reads) == pytest.approx(truth, rel=0.01)
    assert not smu.errors


# ----------------------------------------------------------------- Lake Shore 336


def test_pymeasure_lakeshore_heats_the_chip_and_waits(bench):
    from pymeasure.instruments.lakeshore import LakeShore3xx

    t = _pm(LakeShore3xx, bench.address["tempctl"])
    bench.emu["tempctl"].esr = 0  # power-on bit
    assert t.id.startswith("LSCI,MODEL336")
    assert t.input_A.kelvin == pytest.approx(300.0)
    assert t.input_A.celsius == pytest.approx(26.85)
    assert t.input_A.sensor == pytest.approx(100 * (1 + 3.9083e-3 * 26.85 - 5.775e-7 * 26.85**2), abs=1e-3)
    t.output_1.setpoint = 310
    t.output_1.range = "low"
    assert t.output_1.range == "low" and t.output_1.setpoint == pytest.approx(310)
    assert t.output_1.output > 0
    t.input_A.wait_for_temperature(310, accuracy=0.02, interval=0.05, timeout=10)
    assert bench.chip.temperature_k() == pytest.approx(310, abs=0.1)
    assert t.input_A.kelvin == pytest.approx(310, abs=0.1)
    t.output_1.range = "off"
    t.output_2.mout = 12.5
    assert t.output_2.mout == pytest.approx(12.5)
    assert t.complete == "1"
    assert int(t.ask("*ESR?")) == 0


def test_qcodes_lakeshore336_sensor_setup_loop_and_ramp(bench):
    from qcodes.instrument_drivers.Lakeshore import LakeshoreModel336

    t = LakeshoreModel336("ls", bench.address["tempctl"], visalib="@py")
    bench.emu["tempctl"].esr = 0
    a = t.A
    assert a.temperature() == pytest.approx(300.0)
    assert (a.units(), a.sensor_type(), a.sensor_status()) == ("kelvin", "platinum_rtd", "OK")
    assert a.curve_number() == 6 and a.curve_name().strip() == "PT-100"
    a.t_limit(400)
    assert a.t_limit() == pytest.approx(400)
    a.sensor_name("chip socket A  ")  # QCoDeS insists on at least 15 characters
    assert a.sensor_name().strip() == "chip socket A"
    assert t.B.sensor_status() == "Sensor Units Overrange"  # nothing on input B
    h = t.output_1
    h.mode("closed_loop")
    h.input_channel("A")
    h.P(40), h.I(10), h.D(0)
    assert (h.P(), h.I(), h.D()) == (40, 10, 0)
    h.setpoint_ramp_enabled(True)
    h.setpoint_ramp_rate(60.0)  # 1 K/s
    h.output_range("medium")
    h.setpoint(303.0)
    assert h.setpoint_ramp_status() is True
    assert h.output() > 0
    h.wait_cycle_time(0.05), h.wait_tolerance(0.0005), h.wait_equilibration_time(0.2)
    h.wait_until_set_point_reached()
    assert h.setpoint_ramp_status() is False
    assert a.temperature() == pytest.approx(303.0, abs=0.15)
    h.range_limits([250, 350, 400])
    h.set_setpoint_and_range(305.0)
    assert h.output_range() == "medium"
    for out in (t.output_3, t.output_4):  # the voltage outputs
        out.mode("off")
        out.output_range("low")
        assert out.output_range() == "low"
        out.output_range("off")
    h.output_range("off")
    assert int(t.ask("*ESR?")) == 0
    t.close()


# ----------------------------------------------------------------- scope


def test_pymeasure_dsox_driver_downloads_the_bit_line_of_a_vmm(bench):
    from pymeasure.instruments.keysight import KeysightDSOX1102G

    s = _pm(KeysightDSOX1102G, bench.address["scope"], read_termination="\n", write_termination="\n")
    T = bench.array.settings.integration_time_s
    widths = np.linspace(0.0, T, 16)
    s.factory_reset()
    s.clear_status()
    s.autoscale()
    s.timebase_setup(mode="main", horizontal_range=2e-6)  # the driver sends "%f": keep it exact
    s.write(":TIM:REF LEFT;:TIM:POS 0")
    s.ch1.setup(coupling="dc", display=True, offset=0.55, scale=0.15, label="bl4")
    assert s.ch1.current_configuration["OFFS"] == pytest.approx(0.55)
    assert s.ch1.current_configuration["LAB"] == '"BL4"' and s.ch1.scale == pytest.approx(0.15)
    s.acquisition_type = "normal"
    assert (s.timebase_range, s.acquisition_type, s.acquisition_mode) == (pytest.approx(2e-6), "normal", "realtime")
    s.write(":TRIG:SWE NORM;:TRIG:EDGE:SOUR EXT;:TRIG:EDGE:LEV 1.0;:TRIG:EDGE:SLOP POS")
    s.single()
    assert s.ask("*OPC?").strip() == "1"  # armed before the board runs the VMM
    bench.chip.vmm(widths[None, :])  # the board's integration start triggers the scope
    data, pre = s.download_data("channel1", points=500)
    assert pre["points"] == 500 and len(data) == 500 and pre["xincrement"] == pytest.approx(4e-9)
    t = pre["xorigin"] + pre["xincrement"] * np.arange(500)
    ref_t, ref_v = bench.array.capture_bitline(widths, 4)
    np.testing.assert_allclose(data, np.interp(t, ref_t, ref_v), atol=1e-5)
    s.digitize("channel2")  # NORMal sweep: armed until the next VMM
    assert s.ask("*OPC?").strip() == "1"
    bench.chip.vmm(widths[None, :])
    data2, _ = s.download_data("channel2", points=500)
    ref_t, ref_v = bench.array.capture_bitline(widths, 9)
    np.testing.assert_allclose(data2, np.interp(t, ref_t, ref_v), atol=1e-5)
    assert s.ask(":SYST:ERR?") == '+0,"No error"'
    no_errors(bench.emu["scope"])


def test_generic_visa_session_reads_infiniivision_word_blocks_with_the_8_digit_header(bench):
    import pyvisa

    rm = pyvisa.ResourceManager("@py")
    s = rm.open_resource(bench.address["scope"], read_termination="\n", write_termination="\n", timeout=3000)
    try:
        s.write("*RST;:TIM:SCAL 250e-9;:TIM:REF LEFT;:CHAN3:SCAL 0.1;:CHAN3:OFFS 0.5;:TRIG:EDGE:SOUR EXT")
        s.write(":SING")
        assert int(s.query(":OPER:COND?")) & 32  # waiting for the trigger
        bench.chip.vmm(np.full((1, 16), 1e-7))
        assert s.query(":TER?") == "+1"
        s.write(":WAV:SOUR CHAN1;:WAV:FORM WORD;:WAV:BYT MSBF;:WAV:UNS 1;:WAV:POIN:MODE RAW;:WAV:POIN 1000")
        s.write(":WAV:DATA?")
        raw = s.read_bytes(10 + 2000 + 1)
        assert raw[:10] == b"#800002000" and raw[-1:] == b"\n"
        codes = s.query_binary_values(":WAV:DATA?", datatype="H", is_big_endian=True, container=np.array)
        yinc, yorg, yref = (float(s.query(f":WAV:{q}?")) for q in ("YINC", "YOR", "YREF"))
        xinc, xorg = float(s.query(":WAV:XINC?")), float(s.query(":WAV:XOR?"))
        volts = (codes - yref) * yinc + yorg
        ref_t, ref_v = bench.array.capture_bitline(np.full(16, 1e-7), 4)
        t = xorg + xinc * np.arange(codes.size)
        assert np.abs(volts - np.interp(t, ref_t, ref_v)).max() < 2 * yinc
        s.write(":WAV:FORM ASC")
        text = s.query(":WAV:DATA?")
        assert text.startswith("#8") and int(text[2:10]) == len(text) - 10
        assert s.query(":SYST:ERR?") == '+0,"No error"'
    finally:
        s.close()
        rm.close()
    no_errors(bench.emu["scope"])


@pytest.mark.parametrize("scale_s, rate, points", [
    (1e-9, 5e9, 50), (100e-9, 5e9, 5000), (100e-6, 4e9, 4_000_000), (1e-3, 4e8, 4_000_000),
    (50.0, 5e3, 2_500_000)])
def test_scope_record_length_and_sample_rate_follow_the_time_base(scale_s, rate, points):
    scope = InfiniiVisionEmulator(open_sim("sim://", {"seed": "1"}), Wiring())
    scope.handle(f":TIM:SCAL {scale_s}")
    assert float(scope.handle(":ACQ:SRAT?")) == pytest.approx(rate)
    assert int(scope.handle(":ACQ:POIN?")) == points
    scope.handle(":CHAN2:DISP ON")  # both channels of a pair: half the rate and memory
    assert float(scope.handle(":ACQ:SRAT?")) <= min(rate, 2.5e9)
    assert int(scope.handle(":ACQ:POIN?")) <= min(max(points, 25), 2_000_000)
    assert not scope.errors
