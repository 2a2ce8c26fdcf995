"""The board conformance suite: passes against both board implementations (the Python
emulator and the C reference firmware on a pty), and fails against boards with a
deliberate misreading of the specification (wrong CRC variant, byte-order slip, a
second pulse on replay, no arm time-out)."""

from __future__ import annotations

import itertools
import json
import struct
import subprocess
import sys

import pytest

from drivers.conformance import run_conformance
from simulator import serial_handler
from simulator import wire as w
from simulator.board_server import BoardServer
from simulator.emulated import EmulatedArray, chip_from_options
from simulator.firmware import BoardFirmware
from tests import helpers_firmware as hf

_names = itertools.count()
needs_cc = pytest.mark.skipif(not hf.have_cc(), reason="needs a C compiler and make")


def emulator(cls=BoardFirmware, **kw) -> BoardFirmware:
    return cls(EmulatedArray(chip_from_options({"seed": "4"})), arm_timeout_s=0.3, **kw)


def conformance(fw: BoardFirmware, **kw):
    name = f"conf{next(_names)}"
    url = serial_handler.attach(name, fw)
    try:
        return run_conformance(url, vectors=1024, **kw)
    finally:
        serial_handler.detach(name)


def describe(report) -> str:
    return "; ".join(f"{c.name}: {c.detail}" for c in report.checks if c.ok is False)


# ----------------------------------------------------------- passing boards


def test_suite_passes_against_the_python_emulator_and_checks_everything():
    fw = emulator()
    report = conformance(fw)
    assert report.passed, describe(report)
    names = {c.name for c in report.checks}
    assert {"replay", "corrupt_crc", "framing", "boot_id", "board_limits", "arm_timeout", "throughput"} <= names
    assert all(c.ok for c in report.checks), [c.name for c in report.checks if not c.ok]
    # what the suite did, seen from inside the board: replays answered from the cache,
    # corrupt frames counted, the arm time-out fired, the board left disarmed
    assert fw.replays >= 5 and fw.watchdog_disarms >= 1 and not fw.armed
    assert report.figures["vmm_vectors_per_s"] > 500


def test_suite_passes_over_a_socket_paced_like_a_uart_and_holds_throughput_to_the_link_rate():
    with BoardServer(emulator(), baud=921600).start() as server:
        report = run_conformance(server.url, vectors=1024, link_baud=921600)
    assert report.passed, describe(report)
    assert 0.5 <= report.figures["share_of_link_rate"] <= 1.05  # pipelined VMM keeps the paced link busy


@pytest.fixture(scope="module")
def c_firmware(tmp_path_factory):
    return hf.built(tmp_path_factory, "labkit-fw-host")


def test_suite_passes_against_the_c_reference_firmware_over_a_pty(c_firmware):
    with hf.running(c_firmware) as pty:
        report = run_conformance(pty, vectors=1024)
    assert report.passed, describe(report)
    assert report.info["firmware"].startswith("labkit-ref-fw") and report.info["arm_timeout_s"] == 0.3
    assert all(c.ok for c in report.checks), [c.name for c in report.checks if not c.ok]


# ------------------------------------------------------ deliberately wrong boards


class Bzip2CrcWire(w.Wire):
    """CRC-32/BZIP2: the same polynomial, but not reflected (a classic misreading)."""

    def crc(self, data: bytes) -> int:
        crc = 0xFFFFFFFF
        for byte in data:
            crc ^= byte << 24
            for _ in range(8):
                crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
        return crc ^ 0xFFFFFFFF


class BigEndianWire(w.Wire):
    ORDER = ">"


class SlippedCounts(BoardFirmware):
    """Only the PROGRAM/ERASE reply counts big-endian: a one-field byte-order slip."""

    def _applied(self, n: int, total: int) -> bytes:
        return struct.pack(">HI", n, total & 0xFFFFFFFF)


class PulsesOnReplay(BoardFirmware):
    """Forgets PROGRAM replies: a retried PROGRAM pulses again."""

    def _handle(self, chunk):
        out = super()._handle(chunk)
        for key in [k for k in self._cache if k[1] == w.PROGRAM]:
            del self._cache[key]
        return out


class NoWatchdog(BoardFirmware):
    def watchdog(self) -> bool:
        return False


@pytest.mark.parametrize("make,fails", [
    (lambda: emulator(wire=Bzip2CrcWire()), "hello"),
    (lambda: emulator(wire=BigEndianWire()), "hello"),
    (lambda: emulator(SlippedCounts), "program"),
    (lambda: emulator(PulsesOnReplay), "replay"),
    (lambda: emulator(NoWatchdog), "arm_timeout"),
], ids=["crc-variant", "byte-order", "one-field-byte-order", "pulse-on-replay", "no-arm-timeout"])
def test_a_misreading_in_the_python_emulator_fails_the_suite(make, fails):
    report = conformance(make(), only=(fails, "status"))  # HELLO always runs first
    assert not report.passed
    assert fails in report.failed, report.failed


@needs_cc
@pytest.mark.parametrize("flag", ["-DLKB_CRC_VARIANT_BZIP2", "-DLKB_BYTE_ORDER_SLIP"])
def test_a_misreading_in_the_c_firmware_fails_the_suite(tmp_path, flag):
    run = hf.build(tmp_path / "build", flag)
    assert run.returncode == 0, run.stderr
    with hf.running(tmp_path / "build" / "labkit-fw-host") as pty:
        report = run_conformance(pty, vectors=64, timeout=0.3)
    assert not report.passed and "hello" in report.failed


# ------------------------------------------------------------- the command


def test_the_board_command_is_registered_for_the_labkit_command_line():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="labkit.commands") if e.name == "board"]
    module = ep.load()
    assert ep.value == "drivers.board_command" and isinstance(module.HELP, str)
    assert callable(module.add_arguments) and callable(module.run)


def test_board_command_reports_json_and_exit_codes():
    fw = emulator()
    url = serial_handler.attach("cmd_ok", fw)
    bad = serial_handler.attach("cmd_bad", emulator(wire=Bzip2CrcWire()))
    try:
        from drivers import board_command

        code = board_command.main(["--json", "conformance", "--port", url, "--only", "ping,replay"])
        assert code == 0
        assert board_command.main(["conformance", "--port", bad, "--timeout", "0.2"]) == 3
        assert board_command.main(["conformance", "--port", url, "--only", "nosuch"]) == 2
    finally:
        serial_handler.detach("cmd_ok")
        serial_handler.detach("cmd_bad")


def test_labkit_board_conformance_as_a_process_prints_one_json_object(c_firmware):
    with hf.running(c_firmware) as pty:
        run = subprocess.run([sys.executable, "-m", "labkit.cli", "board", "conformance", "--json", "--port", pty,
                              "--only", "hello,replay,corrupt_crc"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["passed"] and [c["name"] for c in result["checks"]] == ["hello", "replay", "corrupt_crc"]
    run = subprocess.run([sys.executable, "-m", "labkit.cli", "board", "conformance", "--port", "/nonexistent/tty"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 4 and len(run.stderr.strip().splitlines()) == 1, run.stderr  # a link fault
