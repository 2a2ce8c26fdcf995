"""Station files and SiliconBackend over the virtual bench (real sockets, board protocol, pyvisa-py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import labkit
from labkit.backend import GateSweep, SafetyError, TemperatureControl, VirtualClock, WaveformCapture
from drivers.station import StationError, dump_station, load_station, parse_station
from simulator.scpi_server import ScpiServer
from tests.fixtures_bench import virtual_bench, virtual_bench_backend  # noqa: F401 (fixture)

GOOD = """
name: bench-2
board: {url: socket://127.0.0.1:5000, baud: 921600, timeout_s: 1.5}
instruments:
  smu: {model: keithley2400, address: "GPIB0::24::INSTR"}
  scope: {address: "TCPIP::10.0.0.7::INSTR", columns: {1: 0, 3: 9}}
  tempctl: {model: lakeshore336, address: "TCPIP::10.0.0.8::7777::SOCKET", read_termination: "\\r\\n"}
limits:
  max_program_voltage_v: 6.0
  program_width_range_s: [1.0e-8, 1.0e-4]
faults: {drop: 0.1}
"""


def test_a_good_station_file_parses():
    st = parse_station(GOOD, "bench.yaml")
    assert st.name == "bench-2" and st.board_url == "socket://127.0.0.1:5000"
    assert st.board_baud == 921600 and st.board_timeout_s == 1.5
    assert st.instruments["scope"].model == "infiniivision"  # the default model of the role
    assert st.instruments["scope"].columns == {1: 0, 3: 9}
    assert st.instruments["tempctl"].read_termination == "\r\n"
    env = labkit.SafetyEnvelope().tightened(**st.limits)
    assert env.max_program_voltage_v == 6.0 and env.program_width_range_s == (1e-8, 1e-4)
    assert st.faults == {"drop": 0.1}


def _edit(path: str, value):
    doc = yaml.safe_load(GOOD)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return yaml.safe_dump(doc)


@pytest.mark.parametrize(
    "text, match",
    [
        (_edit("board", KeyError), r"board: expected a mapping"),
        (_edit("board.url", ""), r"board\.url: ''"),
        (_edit("board.baud", -9600), r"board\.baud: -9600"),
        (_edit("board.parity", "N"), r"board\.parity: unknown key"),
        (_edit("instruments.dmm", {"address": "GPIB0::1::INSTR"}), r"instruments\.dmm: unknown key"),
        (_edit("instruments.smu.model", "keithley2450"), r"instruments\.smu\.model: 'keithley2450'"),
        (_edit("instruments.smu.address", "24"), r"instruments\.smu\.address: '24'"),
        (_edit("instruments.smu.timeout_s", 0), r"instruments\.smu\.timeout_s: 0"),
        (_edit("instruments.scope.columns", {5: 0}), r"instruments\.scope\.columns: channel 5"),
        (_edit("instruments.smu.columns", {1: 0}), r"instruments\.smu\.columns: only a scope"),
        (_edit("limits.max_program_voltage_v", 9.0), r"limits: .*max_program_voltage_v=9\.0 is looser"),
        (_edit("limits.program_width_range_s", [1e-4, 1e-8]), r"program_width_range_s: \[0\.0001, 1e-08\]: low above high"),
        (_edit("limits.max_voltage", 3.0), r"limits\.max_voltage: unknown key"),
        (_edit("limits.max_compliance_a", "1 uA"), r"limits\.max_compliance_a: '1 uA'; expected a finite number"),
        (_edit("faults", [1, 2]), r"faults: expected a mapping"),
        ("board: [unclosed", r"line 1, column 17: .*expected a YAML mapping"),
        ("- just\n- a list\n", r"expected a mapping with a 'board' key"),
        ("board: !!python/object/apply:os.system ['true']\n", r"could not determine a constructor"),  # safe_load refuses
    ],
)
def test_station_errors_name_the_key(text, match):
    with pytest.raises(StationError, match=match) as info:
        parse_station(text, "bench.yaml")
    assert str(info.value).startswith("bench.yaml: ")
    assert isinstance(info.value, ValueError)


def test_dump_station_writes_what_load_station_reads_and_refuses_bad_ones(tmp_path):
    path = tmp_path / "bench.yaml"
    dump_station(path, board_url="COM3", baud=115200, name="lab-1",
                 instruments={"smu": {"address": "GPIB0::24::INSTR"}}, limits={"max_compliance_a": 1e-6})
    st = load_station(path)
    assert (st.name, st.board_url, st.board_baud) == ("lab-1", "COM3", 115200)
    assert st.instruments["smu"].model == "keithley2400" and st.limits == {"max_compliance_a": 1e-6}
    with pytest.raises(StationError, match="max_compliance_a=1.0 is looser"):
        dump_station(tmp_path / "bad.yaml", board_url="COM3", instruments={}, limits={"max_compliance_a": 1.0})
    assert not (tmp_path / "bad.yaml").exists()


def test_missing_station_file_is_a_clear_error(tmp_path):
    with pytest.raises(StationError, match="does not exist"):
        load_station(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="nope.yaml"):
        with labkit.open_backend(f"station:{tmp_path / 'nope.yaml'}"):
            pass
    with pytest.raises(ValueError, match="takes none"):
        with labkit.open_backend(f"station:{tmp_path / 'x.yaml'}?retries=3"):
            pass


def test_unreachable_board_is_a_backend_error_and_nothing_stays_open(tmp_path, virtual_bench):
    doc = yaml.safe_load(virtual_bench.station_text)
    port = virtual_bench.board_server.port
    virtual_bench.board_server.stop()  # nothing listens there any more
    doc["board"]["url"] = f"socket://127.0.0.1:{port}"
    path = tmp_path / "dead.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(labkit.BackendError, match="cannot open the test board"):
        with labkit.open_backend(f"station:{path}"):
            pass


# ----------------------------------------------------------------- over the virtual bench


def test_station_backend_identity_includes_the_instruments(virtual_bench):
    station = virtual_bench.station_out
    with labkit.open_backend(f"station:{station}") as b:
        ident = b.identity
        assert ident.chip_id == "EMU-0011" and ident.backend == f"station:{station}"
        assert ident.firmware and ident.board_serial
        assert set(ident.instruments) == {"smu", "scope", "tempctl"}
        assert ident.instruments["smu"].startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2400")
        assert ident.instruments["scope"].startswith("KEYSIGHT TECHNOLOGIES,DSOX3024T")
        assert ident.instruments["tempctl"].startswith("LSCI,MODEL336")
        assert b.capability(GateSweep) and b.capability(WaveformCapture) and b.capability(TemperatureControl)
        assert b.capability(VirtualClock) is None  # real time on a bench, even a virtual one
        assert b.read_currents().shape == (16, 16)


def test_the_virtual_bench_binds_to_loopback_only(virtual_bench):
    assert virtual_bench.board_server.host == "127.0.0.1"
    for server in virtual_bench.servers.values():
        assert server._server.server_address[0] == "127.0.0.1"
    doc = yaml.safe_load(virtual_bench.station_text)
    assert doc["board"]["url"].startswith("socket://127.0.0.1:")
    assert all(i["address"].startswith("TCPIP::127.0.0.1::") for i in doc["instruments"].values())
    with pytest.raises(ValueError, match="127.0.0.1 only"):
        ScpiServer(virtual_bench.devices["smu"], host="0.0.0.0")


def test_capabilities_exist_only_with_their_instruments():
    with virtual_bench_backend(seed=1, instruments=("smu",)) as b:
        assert isinstance(b.inner, GateSweep)
        assert not isinstance(b.inner, WaveformCapture) and not isinstance(b.inner, TemperatureControl)
        assert set(b.identity.instruments) == {"smu"}
        assert b.temperature_k() == pytest.approx(300.0)  # from the board's own sensor
    with virtual_bench_backend(seed=1, instruments=()) as b:
        assert b.capability(GateSweep) is None and b.identity.instruments == {}


def test_smu_id_vg_follows_the_cell_programmed_through_the_board():
    with virtual_bench_backend(seed=4, noise=False, program_noise=False) as b:
        chip, sweep = b.inner.emulated_chip, b.capability(GateSweep)
        cell, gate = (6, 9), np.array([1.0, 1.4, 1.8])
        before = sweep.id_vg(cell, gate, 5e-6)
        board_read = b.read_currents([cell])[0]
        assert before[-1] == pytest.approx(board_read, rel=1e-5)  # SMU and board agree at 1.8 V
        np.testing.assert_allclose(before, [chip.current_at_gate(g)[cell] for g in gate], rtol=1e-5)
        b.program_pulses([cell], 6.0, 1e-5)
        after = sweep.id_vg(cell, gate, 5e-6)
        assert np.all(after < 0.8 * before)
        np.testing.assert_allclose(after, [chip.current_at_gate(g)[cell] for g in gate], rtol=1e-5)
        neighbour = sweep.id_vg((6, 10), [1.8], 5e-6)[0]
        assert neighbour == pytest.approx(chip.current_at_gate(1.8)[6, 10], rel=1e-5)


def test_id_vg_limits_are_checked_before_the_smu_is_touched():
    with virtual_bench_backend(seed=4, limits={"max_compliance_a": 2e-6}) as b:
        smu = b.bench.devices["smu"]
        sweep = b.capability(GateSweep)
        lines = len(smu.log)
        with pytest.raises(SafetyError, match="compliance_a=5e-06 A is outside the allowed"):
            sweep.id_vg((0, 0), [1.0], 5e-6)
        with pytest.raises(SafetyError, match="gate voltage=3 V"):
            sweep.id_vg((0, 0), [1.0, 3.0], 1e-6)
        with pytest.raises(ValueError, match=r"cell \(0, 16\)"):
            sweep.id_vg((0, 16), [1.0], 1e-6)
        assert len(smu.log) == lines and smu.output is False
        assert b.envelope.max_compliance_a == 2e-6 and b.inner.board.limits().max_compliance_a == 2e-6


def test_station_limits_tighten_the_envelope_on_host_and_board():
    with virtual_bench_backend(seed=5, limits={"max_program_voltage_v": 6.0}) as b:
        pulses = b.inner.emulated_chip.pulses_applied
        with pytest.raises(SafetyError, match="6.2 V is outside"):
            b.program_pulses([[0, 0]], 6.2, 1e-6)
        with pytest.raises(SafetyError):  # the board enforces it too
            b.inner.board.arm(True)
            b.inner.board.program_pulses([[0, 0]], 6.2, 1e-6)
        b.inner.board.arm(False)
        assert b.inner.emulated_chip.pulses_applied == pulses


def test_scope_captures_the_bit_line_of_a_vmm_through_the_board():
    with virtual_bench_backend(seed=6, noise=False) as b:
        cap = b.capability(WaveformCapture)
        T = b.settings.integration_time_s
        widths = np.linspace(0.0, T, 16)
        t, v = cap.capture_bitline(widths, 14)
        assert len(t) == 1000 and t[0] == pytest.approx(0.0)
        ref_t, ref_v = b.bench.array.capture_bitline(widths, 14)
        expected = np.interp(t, ref_t, ref_v)
        assert np.abs(v - expected).max() < 1e-3  # 16-bit codes over the screen, plus interpolation
        assert v[0] > 0.7 and v[np.searchsorted(t, T)] < v[0] - 0.05
        with pytest.raises(ValueError, match=r"col=5 is not probed by the scope; probed columns: \[0, 1, 14, 15\]"):
            cap.capture_bitline(widths, 5)
        with pytest.raises(SafetyError, match="pulse width"):
            cap.capture_bitline(np.full(16, 2 * T), 0)


def test_temperature_control_through_the_controller():
    with virtual_bench_backend(seed=7) as b:
        before = b.read_currents([[3, 3]])[0]
        b.capability(TemperatureControl).set_temperature_k(labkit.Q_(340, "K"))
        assert b.temperature_k() == pytest.approx(340.0, abs=1e-3)
        assert b.inner.emulated_chip.temperature_k == pytest.approx(340.0)
        assert b.read_currents([[3, 3]])[0] != pytest.approx(before, rel=1e-3)


def test_link_faults_from_the_station_recover_and_never_pulse_twice():
    faults = {"drop": 0.15, "corrupt": 0.1, "fault_seed": 3}
    with virtual_bench_backend(seed=8, faults=faults, noise=False, board_timeout_s=0.1) as b:
        assert yaml.safe_load(b.inner.station.text)["faults"] == faults  # recorded for provenance
        chip, firmware = b.inner.emulated_chip, b.bench.firmware
        reads = b.read_currents()
        np.testing.assert_array_equal(b.read_currents(), reads)
        before = chip.pulses_applied
        for k in range(12):
            b.program_pulses([[k, k]], 5.0, 1e-7)
        assert chip.pulses_applied - before == 12
        assert firmware.program_pulses == 12
        assert sum(firmware.faults.stats.values()) > 0  # faults really happened


def test_a_station_may_name_the_in_process_board_emulator_with_faults_in_its_url(tmp_path):
    import simulator.serial_handler  # noqa: F401 (registers labkitemu:// with pyserial)

    path = tmp_path / "emu.yaml"
    path.write_text('board: {url: "labkitemu://?seed=3&noise=0&drop=0.2&fault_seed=1", timeout_s: 0.05}\n')
    with labkit.open_backend(f"station:{path}") as b:
        assert b.identity.chip_id == "EMU-0003" and b.identity.instruments == {}
        np.testing.assert_array_equal(b.read_currents(), b.read_currents())
        assert b.capability(GateSweep) is None


# ----------------------------------------------------------------- labkit sim serve


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"labkit sim serve exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no station file from labkit sim serve")
        time.sleep(0.05)


def test_labkit_sim_serve_runs_a_bench_that_labkit_info_can_use(tmp_path):
    station = tmp_path / "bench.yaml"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "labkit.cli", "sim", "serve", "--seed", "2",
                             "--chip", "noise=0", "--station-out", str(station), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for(station, proc)
        from labkit.cli import main

        def info(uri):
            import contextlib
            import io

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert main(["info", "--backend", uri, "--json"]) == 0
            return json.loads(buf.getvalue())

        bench, sim = info(f"station:{station}"), info("sim://?seed=2&noise=0")
        assert set(bench) == set(sim)
        for key in ("chip_id", "rows", "cols", "pairs", "settings", "datasheet", "envelope", "temperature_k"):
            assert bench[key] == sim[key], key
        assert set(bench["instruments"]) == {"smu", "scope", "tempctl"} and sim["instruments"] == {}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["seed"] == 2 and result["board_frames"] > 0
    assert result["station"]["board"]["url"].startswith("socket://127.0.0.1:")
    assert not station.exists()  # a stopped bench leaves no station pointing at dead ports


def test_labkit_sim_serve_rejects_bad_options():
    from labkit.cli import main

    assert main(["sim", "serve", "--faults", "drop=2"]) == 2
    assert main(["sim", "serve", "--faults", "nonsense"]) == 2
    assert main(["sim", "serve", "--chip", "warp=1"]) == 2


# ----------------------------------------------------------------- a real bench


@pytest.mark.hardware
def test_real_bench_answers_and_reads(request):
    """Read-only checks of the bench named by --station PATH (nothing is pulsed)."""
    path = request.config.getoption("--station")
    with labkit.open_backend(f"station:{path}") as b:
        assert b.identity.chip_id and b.identity.firmware
        i = b.read_currents()
        assert i.shape == (b.geometry.rows, b.geometry.cols) and np.all(np.isfinite(i))
        sweep = b.capability(GateSweep)
        if sweep is not None:
            lo, hi = b.envelope.read_voltage_range_v
            iv = sweep.id_vg((0, 0), np.linspace(lo, min(hi, b.settings.read_voltage_v), 5), 1e-6)
            assert np.all(np.isfinite(iv)) and np.all(iv <= 1e-6 * 1.01)
