"""The C reference firmware: a strict C99 build, a short sanitizer fuzz, its arm
time-out after the host is killed, and the host driver over its pty."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from drivers import protocol as p
from drivers.board import TestBoard
from drivers.conformance import RawLink
from tests import helpers_firmware as hf

pytestmark = pytest.mark.skipif(not hf.have_cc(), reason="needs a C compiler and make")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("fwc") / "build"
    run = hf.build(out)
    assert run.returncode == 0, run.stdout + run.stderr
    return out, run


def test_the_core_builds_as_strict_c99_with_warnings_as_errors(built):
    out, run = built
    core_cmd = next(line for line in run.stdout.splitlines() if "src/lkb_core.c" in line)
    assert hf.STRICT in core_cmd  # the flags CI uses: any warning fails the build
    assert "warning" not in run.stderr.lower()
    size = subprocess.run(["size", str(out / "lkb_core.o")], capture_output=True, text=True)
    text = int(size.stdout.splitlines()[1].split()[0])
    assert 0 < text < 32_000  # bytes of code: fits a small MCU's flash


def test_a_short_fuzz_under_sanitizers_finds_nothing(tmp_path):
    run = hf.build(tmp_path / "build", target=f"{tmp_path}/build/fuzz")
    assert run.returncode == 0, run.stderr
    fuzz = subprocess.run([str(tmp_path / "build" / "fuzz"), "20000", "3"], capture_output=True, text=True, timeout=120)
    assert fuzz.returncode == 0, fuzz.stdout + fuzz.stderr
    assert "0 hangs" in fuzz.stdout and "0 malformed replies" in fuzz.stdout and "0 pulses without HV" in fuzz.stdout
    assert "runtime error" not in fuzz.stderr and "AddressSanitizer" not in fuzz.stderr


def test_the_host_driver_runs_the_chip_model_over_the_pty(built):
    out, _ = built
    with hf.running(out / "labkit-fw-host") as pty, TestBoard(pty) as board:
        assert board.info.chip_id == "REF-CHIP-0001" and board.info.max_payload == 1024
        assert not board.opened_status.armed
        before = board.read_currents([[5, 5]])[0]
        board.arm(True)
        assert board.program_pulses([[5, 5]], 6.0, 1e-5) == 1
        board.arm(False)
        assert board.read_currents([[5, 5]])[0] < before  # a program pulse lowers the current
        t = board.vmm(np.full((200, 16), 0.5e-6))  # 200 vectors over several frames
        assert t.shape == (200, 16) and np.all(t > 0)
        assert board.route((2, 3)) == (2, 3) and board.temperature_k() == 300.0


def test_a_host_killed_while_armed_leaves_the_c_board_to_disarm_by_itself(built):
    out, _ = built
    with hf.running(out / "labkit-fw-host", arm_timeout_ms=400) as pty:
        host = subprocess.Popen([sys.executable, "-m", "tests.helpers_board_host", "board", pty],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert host.stdout.readline().strip() == "armed"
            time.sleep(0.05)  # programming
            host.send_signal(signal.SIGKILL)
            host.wait(5)
        finally:
            if host.poll() is None:
                host.kill()
        link = RawLink(pty, 921600, 0.5)
        try:
            link.drain(0.02)
            left = p.decode_status_reply(link.ok(p.Command.STATUS))
            assert left.armed and left.program_pulses > 0  # the dead host left it armed, mid-programming
            time.sleep(0.6)  # no traffic
            later = p.decode_status_reply(link.ok(p.Command.STATUS))
            assert not later.armed
        finally:
            link.close()
