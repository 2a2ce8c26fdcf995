"""Safe by default at the board (issue 14, item 2): a host killed during PROGRAM never
leaves the high voltage armed for the next session. Real subprocesses, real signals,
the virtual bench over loopback TCP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

import labkit
from drivers.board import TestBoard
from simulator.bench import VirtualBench
from simulator.faults import FaultConfig


@pytest.fixture
def bench(tmp_path):
    with VirtualBench(seed=5, chip_options={"noise": False}, instruments=(), board_timeout_s=3.0,
                      station_out=tmp_path / "station.yaml") as bench:
        bench.station_path = tmp_path / "station.yaml"
        yield bench


def host_mid_program(bench, delay_s: float = 1.0) -> subprocess.Popen:
    """A host process stopped inside PROGRAM: the board has applied the pulse while armed
    and holds its reply back (``delay_s``), so the host is waiting on PROGRAM with HV armed."""
    fw = bench.firmware
    host = subprocess.Popen([sys.executable, "-m", "tests.helpers_board_host", "station", str(bench.station_path)],
                            stdout=subprocess.PIPE, text=True)
    assert host.stdout.readline().strip() == "ready"
    fw.faults.config = FaultConfig(delay=delay_s)  # every answer from now on arrives late
    before = fw.program_pulses
    t0 = time.monotonic()
    while not (fw.armed and fw.program_pulses > before):
        assert time.monotonic() - t0 < 10, "the host never got to programming"
        time.sleep(0.002)
    return host


def test_kill_9_during_program_then_opening_the_backend_finds_the_board_disarmed(bench):
    fw = bench.firmware
    fw.arm_timeout_s = 600.0  # take the board's own time-out out of this test
    host = host_mid_program(bench)
    host.send_signal(signal.SIGKILL)
    assert host.wait(5) == -signal.SIGKILL
    fw.faults.config = FaultConfig()
    assert fw.armed  # the dead host left the high voltage armed
    with labkit.open_backend(f"station:{bench.station_path}") as chip:
        assert not fw.armed  # opening disarmed it ...
        status = chip.inner.board_status  # ... and checked the board's own word for it
        assert not status.armed and status.program_pulses == fw.program_pulses
        chip.read_currents([[0, 0]])
    assert not fw.armed


def test_a_board_left_armed_by_a_killed_host_disarms_by_itself(bench):
    fw = bench.firmware
    fw.arm_timeout_s = 0.6  # longer than the 0.3 s reply delay between ARM and PROGRAM
    host = host_mid_program(bench, delay_s=0.3)
    host.send_signal(signal.SIGKILL)
    host.wait(5)
    t_kill = time.monotonic()
    while fw.armed:  # nobody talks to the board now
        assert time.monotonic() - t_kill < 2.0, "the board stayed armed without host traffic"
        time.sleep(0.01)
    assert fw.watchdog_disarms == 1


def test_sigterm_during_program_disarms_before_the_process_ends(bench):
    fw = bench.firmware
    fw.arm_timeout_s = 600.0
    host = host_mid_program(bench, delay_s=0.4)
    host.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    while fw.armed:
        assert time.monotonic() - t0 < 0.5, "SIGTERM did not disarm the board promptly"
        time.sleep(0.002)
    assert host.wait(15) == 128 + signal.SIGTERM  # and it still ended through its finally blocks
    assert not fw.armed


def test_close_disarms_the_board(bench):
    fw = bench.firmware
    board = TestBoard(bench.board_url)
    board.arm(True)
    assert fw.armed
    board.close()
    assert not fw.armed


def test_id_vg_routes_the_cell_to_the_smu_with_an_explicit_command(tmp_path):
    with VirtualBench(seed=3, chip_options={"noise": False}, instruments=("smu",),
                      station_out=tmp_path / "s.yaml") as bench:
        with labkit.open_backend(f"station:{tmp_path / 's.yaml'}") as chip:
            reads = bench.firmware.frames
            currents = chip.inner.id_vg((2, 3), [1.0, 1.8], 2e-6)
            assert bench.firmware.routed == (2, 3) and bench.bench_array.wiring.smu_cell == (2, 3)
            assert currents[1] > currents[0] > 0
            assert bench.firmware.frames == reads + 1  # one ROUTE frame, no READ to latch the path
