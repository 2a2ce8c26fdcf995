"""TestBoard against the firmware emulator over real links: the in-process pyserial URL
(``labkitemu://``) and a real TCP socket (``socket://127.0.0.1:PORT``), with and
without injected faults."""

from __future__ import annotations

import itertools
import socket
import time

import numpy as np
import pytest
import serial

from drivers import protocol as p
from drivers.board import TestBoard
from labkit.backend import SafetyEnvelope, SafetyError, VmmSettings
from simulator import serial_handler
from simulator.board_server import BoardServer
from simulator.emulated import EmulatedArray, chip_from_options
from simulator.faults import FaultConfig
from simulator.firmware import BoardFirmware

QUIET = {"noise": "0", "program_noise": "0"}  # deterministic chip: the twin stays identical
_names = itertools.count()


def chip(seed=2, **opts):
    return EmulatedArray(chip_from_options({"seed": str(seed), **QUIET, **opts}))


def firmware(seed=2, faults=None, **opts):
    return BoardFirmware(chip(seed, **opts), faults=faults)


@pytest.fixture
def connect():
    """connect(fw, transport, **TestBoard kwargs) -> TestBoard; everything closed afterwards."""
    opened = []

    def _connect(fw, transport="inproc", query="", **kwargs):
        if transport == "inproc":
            name = f"board{next(_names)}"
            url = serial_handler.attach(name, fw) + query
            opened.append(lambda: serial_handler.detach(name))
        else:
            server = BoardServer(fw).start()
            url = server.url
            opened.append(server.stop)
        board = TestBoard(url, **kwargs)
        opened.append(board.close)
        return board

    yield _connect
    for close in reversed(opened):
        close()


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
def test_board_drives_the_chip_exactly_like_the_chip_itself(connect, transport):
    fw, twin = firmware(), chip()
    board = connect(fw, transport)
    info = board.info
    assert (info.chip_id, info.geometry, info.datasheet) == ("EMU-0002", twin.geometry, twin.datasheet)
    assert info.firmware.startswith("labkit-emu-fw") and info.board_serial
    assert board.settings == twin.settings
    assert board.limits() == SafetyEnvelope()
    assert board.temperature_k() == twin.temperature_k()
    cells = np.stack(np.divmod(np.arange(256), 16), axis=1)
    np.testing.assert_array_equal(board.read_currents(cells), twin.read_currents(cells))

    s = VmmSettings(integration_time_s=2e-6, input_bits=6, tdc_lsb_s=2.5e-9)
    assert board.configure(s) == s and board.settings == s
    twin.configure(s)
    widths = np.random.default_rng(1).uniform(0, 2e-6, (300, 16))  # off-grid widths: rounded alike
    np.testing.assert_array_equal(board.vmm(widths), twin.vmm(widths))
    np.testing.assert_array_equal(board.vmm(widths[0]), twin.vmm(widths[:1])[0])

    assert board.arm() is True
    assert board.erase_rows([3], 13.0, 1e-3) == 1
    assert board.program_pulses([[3, 4], [3, 5]], [5.5, 5.0], 1e-6) == 2
    twin.erase_rows(np.array([3]), 13.0, 1e-3)
    twin.program_pulses(np.array([[3, 4], [3, 5]]), np.array([5.5, 5.0]), np.array([1e-6, 1e-6]))
    np.testing.assert_array_equal(board.read_currents(cells), twin.read_currents(cells))
    st = board.status()
    assert (st.armed, st.program_pulses, st.erase_pulses, st.crc_errors) == (True, 2, 1, 0)
    assert board.ping(b"\x00echo") > 0


def test_refusals_raise_the_mapped_exceptions_and_apply_nothing(connect):
    fw = firmware()
    board = connect(fw)
    with pytest.raises(p.NotArmedError, match="not armed") as e:
        board.program_pulses([[0, 0]], 5.0, 1e-6)
    assert isinstance(e.value, SafetyError)
    board.arm()
    with pytest.raises(p.OutOfRangeError, match="9 V"):
        board.program_pulses([[0, 0]], 9.0, 1e-6)
    with pytest.raises(p.BadArgumentError, match=r"unknown cell \(16, 0\)") as e:
        board.read_currents([[16, 0]])
    assert isinstance(e.value, ValueError)
    with pytest.raises(p.OutOfRangeError, match="looser"):
        board.set_limits(SafetyEnvelope(max_erase_voltage_v=30.0))
    tight = board.set_limits(SafetyEnvelope(max_program_voltage_v=5.0))
    assert board.limits() == tight
    with pytest.raises(p.OutOfRangeError):
        board.program_pulses([[0, 0]], 5.5, 1e-6)
    with pytest.raises(p.OutOfRangeError):
        board.configure(VmmSettings(read_voltage_v=3.0))
    assert fw.array.chip.pulses_applied == 0 and board.stats["resent"] == 0  # refusals are not retried


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
def test_idempotent_commands_recover_from_a_lossy_link(connect, transport):
    faults = FaultConfig(drop=0.2, corrupt=0.1, busy=0.1, drop_request=0.1, delay=0.08, delay_p=0.1, fault_seed=4)
    fw, twin = firmware(faults=faults), chip()
    board = connect(fw, transport, timeout=0.04, retries=12)
    cells = np.stack(np.divmod(np.arange(256), 16), axis=1)
    widths = np.random.default_rng(2).integers(0, 257, (700, 16)) * (1e-6 / 256)
    for _ in range(6):
        np.testing.assert_array_equal(board.read_currents(cells), twin.read_currents(cells))
        assert board.temperature_k() == twin.temperature_k()
        assert board.status().boot_id == fw.boot_id
    np.testing.assert_array_equal(board.vmm(widths), twin.vmm(widths))
    injected = fw.faults.stats
    assert injected["drop"] and injected["corrupt"] and injected["busy"] and injected["drop_request"]
    assert board.stats["resent"] >= injected["drop"] and board.stats["recovered"] > 0


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
def test_lost_replies_never_make_a_pulse_happen_twice(connect, transport):
    faults = FaultConfig(drop=0.35, corrupt=0.1, drop_request=0.1, fault_seed=9)
    fw, twin = firmware(faults=faults), chip()
    board = connect(fw, transport, timeout=0.04, retries=12)
    board.arm()
    twin_cells = []
    for k in range(30):
        cell = [k % 16, (5 * k) % 16]
        assert board.program_pulses([cell], 5.0, 1e-6) == 1
        twin_cells.append(cell)
    assert board.erase_rows([1, 2], 12.5, 1e-4) == 2
    # the pulse counter: exactly one pulse per request although replies were lost
    assert fw.faults.stats["drop"] >= 5 and fw.replays >= 5
    assert fw.program_pulses == 30 and fw.erase_pulses == 2 and fw.array.chip.pulses_applied == 32
    # and the chip itself agrees: the same 32 pulses applied once each give identical cells
    twin.program_pulses(np.array(twin_cells), np.full(30, 5.0), np.full(30, 1e-6))
    twin.erase_rows(np.array([1, 2]), 12.5, 1e-4)
    np.testing.assert_array_equal(fw.array.chip.overdrive_v, twin.chip.overdrive_v)


def test_an_unrecoverable_link_ends_in_a_clear_error_not_a_hang(connect):
    fw = firmware()
    board = connect(fw, timeout=0.05, retries=3)
    board.arm()
    fw.faults.config = FaultConfig(drop=1.0)  # from now on every answer is lost
    t0 = time.monotonic()
    with pytest.raises(p.LinkError) as e:
        board.read_currents([[0, 0]])
    assert time.monotonic() - t0 < 2.0
    msg = str(e.value)
    assert "did not complete READ" in msg and "4 attempts" in msg and "ping got no answer" in msg
    assert "resynchronised" in msg
    with pytest.raises(p.LinkError, match="applied at most once"):
        board.program_pulses([[0, 0]], 5.0, 1e-6)
    assert fw.program_pulses == 1  # executed once; never sent under another sequence number
    fw.faults.config = FaultConfig()  # the link heals: the same board object works again
    assert board.status().program_pulses == 1


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
def test_a_pulled_cable_is_a_prompt_link_error(connect, transport):
    fw = firmware(faults=FaultConfig(disconnect_after=6))  # open: HELLO, ARM 0, STATUS, GET_CONFIG
    board = connect(fw, transport, timeout=0.2, retries=3)
    board.ping()
    t0 = time.monotonic()
    with pytest.raises(p.LinkError):
        for _ in range(5):
            board.read_currents([[0, 0]])
    assert time.monotonic() - t0 < 3.0


def test_a_board_restart_during_a_pulse_retry_is_reported_not_repeated(connect):
    class RestartsAfterPulse(BoardFirmware):
        def _execute(self, frame):
            wire = super()._execute(frame)
            if frame.command == p.Command.PROGRAM:
                self.reboot()  # power glitch right after the pulse: the reply is lost
                self.armed = True
                return b""
            return wire

        def _emit(self, wire):
            return super()._emit(wire) if wire else b""

    fw = RestartsAfterPulse(chip())
    board = connect(fw, timeout=0.05)
    board.arm()
    with pytest.raises(p.LinkError, match="restarted"):
        board.program_pulses([[2, 2]], 5.0, 1e-6)
    assert fw.program_pulses == 1  # not re-sent into a board that lost its reply cache


def test_garbage_on_the_line_is_survived(connect):
    fw = firmware()
    board = connect(fw, timeout=0.05)
    board.port.write(bytes(np.random.default_rng(3).integers(1, 256, 300, dtype=np.uint8)))
    assert board.ping(b"after garbage") > 0
    board.port.write(b"\x00\x01\x02\x00\xff\x00")
    assert board.status().frames >= 2


def test_deadlines_scale_with_wire_time_and_pulse_length(connect):
    fw = firmware()
    board = connect(fw, query="?baud=115200", baudrate=115200, timeout=0.05)
    cells = np.stack(np.divmod(np.arange(256), 16), axis=1)
    t0 = time.monotonic()
    currents = board.read_currents(cells)  # ~2 kB answer: 0.18 s on this wire, > timeout
    assert time.monotonic() - t0 > 0.15 and len(currents) == 256
    assert board.stats["timeout"] == 0
    erase = board._request(p.Command.ERASE, b"", exec_s=3 * 0.1)
    assert erase.deadline_s >= 0.05 + 0.6


def test_pipelined_vmm_survives_delayed_answers(connect):
    fw, twin = firmware(faults=FaultConfig(delay=0.3, delay_p=0.3, fault_seed=2)), chip()
    # a fast link: deadlines (timeout + wire time) are shorter than the injected delay
    board = connect(fw, timeout=0.03, retries=10, window=4, baudrate=10_000_000)
    widths = np.random.default_rng(5).integers(0, 257, (1500, 16)) * (1e-6 / 256)
    np.testing.assert_array_equal(board.vmm(widths), twin.vmm(widths))
    assert board.stats["timeout"] > 0 and fw.faults.stats["delay_p"] > 0


def test_url_options_and_open_errors():
    serial_handler.register()
    with TestBoard("labkitemu://?seed=4&noise=0&drop=0.0", timeout=0.1) as board:
        assert board.info.chip_id == "EMU-0004"
        assert isinstance(board.port.firmware, BoardFirmware)
    with pytest.raises(p.LinkError, match="frobnicate"):
        TestBoard("labkitemu://?frobnicate=1")
    with pytest.raises(p.LinkError, match="no emulated board"):
        TestBoard("labkitemu://nobody")
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(p.LinkError, match="cannot open"):
        TestBoard(f"socket://127.0.0.1:{port}", timeout=0.1)
    with pytest.raises(ValueError, match="loopback"):
        BoardServer(firmware(), host="0.0.0.0")
    with pytest.raises(ValueError, match="retries"):
        TestBoard("labkitemu://?seed=1", retries=-1)
    assert isinstance(serial.serial_for_url("labkitemu://?seed=1&baud=9600"), serial_handler.Serial)


def test_the_host_reads_the_capability_bits(connect):
    class NoSensorNoRoute(BoardFirmware):
        @property
        def capabilities(self) -> int:
            return super().capabilities & ~(16 | 32)  # TEMPERATURE, ROUTE

    fw = NoSensorNoRoute(chip())
    board = connect(fw)
    assert not board.has(p.Capability.ROUTE) and board.has(p.Capability.READ)
    frames = fw.frames
    assert board.temperature_k() is None  # not asked: the board has no sensor
    with pytest.raises(p.UnknownCommandError, match="ROUTE"):
        board.route((1, 1))
    assert fw.frames == frames  # refused on the host, nothing sent
    assert connect(firmware()).temperature_k() > 0


def test_opening_disarms_a_board_left_armed(connect):
    fw = firmware()
    fw.armed = True  # as a crashed session left it
    board = connect(fw)
    assert not fw.armed and not board.opened_status.armed
