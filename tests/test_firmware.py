"""The board firmware emulator as a pure state machine: exact answers to every error,
the replay cache that keeps pulses single, faults, and robustness against any bytes."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import protocol as p
from labkit.backend import SafetyEnvelope, VmmSettings
from simulator.emulated import EmulatedArray, chip_from_options
from simulator.faults import FaultConfig
from simulator.firmware import BoardFirmware

C, S = p.Command, p.Status


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_fw(seed=1, faults=None, clock=None, **chip):
    opts = {"seed": str(seed), **{k: str(int(v)) for k, v in chip.items()}}
    return BoardFirmware(EmulatedArray(chip_from_options(opts)), clock=clock or FakeClock(), faults=faults, boot_id=7)


def ask(fw, seq, cmd, payload=b""):
    """One request -> the reply frames it produced."""
    return p.FrameDecoder().feed(fw.feed(p.request(seq, cmd, payload)))


def one(fw, seq, cmd, payload=b""):
    (frame,) = ask(fw, seq, cmd, payload)
    assert frame.reply and frame.seq == seq and frame.command == cmd
    return frame


@pytest.fixture(scope="module")
def fw():
    return make_fw(noise=False)


def test_hello_describes_the_board_and_chip(fw):
    info = p.decode_hello_reply(one(fw, 1, C.HELLO).payload)
    assert info.chip_id == fw.array.identity.chip_id == "EMU-0001"
    assert info.firmware.startswith("labkit-emu-fw") and info.board_serial.startswith("EMU-")
    assert info.max_payload == 8192 and info.boot_id == 7
    assert info.geometry == fw.array.geometry and info.datasheet == fw.array.datasheet
    assert p.Capability.VMM in info.capabilities and p.Capability.TEMPERATURE in info.capabilities


def test_exact_error_replies_of_the_firmware():
    fw = make_fw()
    # unknown command
    assert fw.feed(p.request(1, 0x7E)) == p.error_reply(1, 0x7E, S.UNKNOWN_COMMAND, "unknown command 0x7e")
    # bad CRC: answered with the seq the header carried
    wire = bytearray(p.request(1, C.HELLO))
    wire[9] ^= 1
    assert fw.feed(bytes(wire)).hex() == "030101048101090e637263206572726f72fabcaacb00"
    # CRC fine, length field wrong
    body = struct.pack("<BHBBH", 1, 9, C.PING, 0, 5) + b"ab"
    assert fw.feed(p.cobs_encode(body + struct.pack("<I", zlib.crc32(body))) + b"\x00") == p.error_reply(
        9, C.PING, S.BAD_FRAME, "length error")
    # another protocol version
    assert fw.feed(p.encode_frame(p.Frame(3, C.HELLO, version=2))) == p.error_reply(
        3, C.HELLO, S.BAD_VERSION, "version 2; board speaks 1")
    # malformed payload, unknown cell
    assert one(fw, 4, C.READ, b"\x02\x00\x01").status == S.BAD_ARGUMENT
    bad_cell = one(fw, 5, C.READ, p.encode_cells([[16, 0]]))
    assert bad_cell.status == S.BAD_ARGUMENT and "unknown cell (16, 0)" in p.decode_text(bad_cell.payload)
    # programming while disarmed, then outside the limits once armed
    assert fw.feed(p.request(6, C.PROGRAM, p.encode_program_request([[0, 0]], 5.0, 1e-6))) == p.error_reply(
        6, C.PROGRAM, S.NOT_ARMED, "programming refused: high voltage not armed")
    assert p.decode_flag(one(fw, 7, C.ARM, p.encode_flag(True)).payload)
    too_high = one(fw, 8, C.PROGRAM, p.encode_program_request([[0, 0]], 9.0, 1e-6))
    assert too_high.status == S.OUT_OF_RANGE and "9 V" in p.decode_text(too_high.payload)
    assert one(fw, 9, C.VMM, p.encode_vmm_request(np.full((1, 16), 257))).status == S.OUT_OF_RANGE
    assert one(fw, 10, C.VMM, p.encode_vmm_request(np.zeros((1, 15)))).status == S.BAD_ARGUMENT
    assert fw.program_pulses == 0 and fw.array.chip.pulses_applied == 0  # nothing was applied


def test_busy_and_hardware_fault_replies_execute_nothing():
    fw = make_fw(faults={"busy": 1.0})
    assert fw.feed(p.request(1, C.ARM, p.encode_flag(True))) == p.error_reply(1, C.ARM, S.BUSY, "busy")
    assert not fw.armed
    fw = make_fw(faults={"hw_fault": 1.0})
    assert fw.feed(p.request(1, C.ARM, p.encode_flag(True))) == p.error_reply(
        1, C.ARM, S.HARDWARE_FAULT, "injected hardware fault")
    assert not fw.armed


def test_a_failing_chip_is_a_hardware_fault_not_a_crash():
    fw = make_fw()

    def broken(widths):
        raise RuntimeError("comparator bias lost")

    fw.array.vmm = broken
    reply = one(fw, 1, C.VMM, p.encode_vmm_request(np.zeros((2, 16))))
    assert reply.status == S.HARDWARE_FAULT and "comparator bias lost" in p.decode_text(reply.payload)


def test_repeated_sequence_number_replays_instead_of_pulsing_again():
    fw = make_fw(noise=False, program_noise=False)
    one(fw, 1, C.ARM, p.encode_flag(True))
    req = p.request(2, C.PROGRAM, p.encode_program_request([[3, 4]], 5.5, 1e-6))
    first = fw.feed(req)
    after_one = fw.array.read_currents(np.array([[3, 4]]))
    again = fw.feed(p.DELIMITER + req)  # a host retry: same seq, same bytes
    assert again == first and fw.replays == 1
    assert fw.program_pulses == 1 and fw.array.chip.pulses_applied == 1
    assert fw.array.read_currents(np.array([[3, 4]])) == after_one
    # the same seq with other bytes is a new request (a restarted host), not a replay
    one(fw, 2, C.PROGRAM, p.encode_program_request([[3, 5]], 5.5, 1e-6))
    assert fw.program_pulses == 2


def test_lost_reply_then_retry_applies_the_pulse_once():
    fw = make_fw(faults={"drop": 1.0})
    fw.armed = True
    req = p.request(5, C.PROGRAM, p.encode_program_request([[0, 0]], 5.0, 1e-6))
    assert fw.feed(req) == b""  # executed, reply lost
    assert fw.program_pulses == 1
    fw.faults.config = FaultConfig()  # the link heals
    (frame,) = p.FrameDecoder().feed(fw.feed(req))
    assert p.decode_applied(frame.payload) == (1, 1) and fw.program_pulses == 1 and fw.replays == 1


def test_delayed_replies_follow_the_injected_clock():
    clock = FakeClock()
    fw = make_fw(faults={"delay": 0.5}, clock=clock)
    assert fw.feed(p.request(1, C.PING, b"hi")) == b""
    assert fw.next_due() == pytest.approx(100.5)
    clock.t = 100.4
    assert fw.poll() == b""
    clock.t = 100.6
    assert fw.poll() == p.reply(1, C.PING, b"hi") and fw.next_due() is None


def test_disconnect_after_n_frames_and_reconnect():
    fw = make_fw(faults={"disconnect_after": 2})
    assert one(fw, 1, C.PING).ok and one(fw, 2, C.PING).ok
    assert fw.feed(p.request(3, C.PING)) == b"" and fw.disconnected
    assert fw.feed(p.request(4, C.PING)) == b""
    fw.reset_link()
    assert not fw.disconnected


def test_corrupted_replies_fail_the_host_crc_and_faults_are_reproducible():
    outs = []
    for _ in range(2):
        fw = make_fw(faults={"corrupt": 0.5, "fault_seed": 11})
        outs.append(b"".join(fw.feed(p.request(k, C.PING, b"payload")) for k in range(40)))
    assert outs[0] == outs[1]
    items = p.FrameDecoder().feed(outs[0])
    assert any(isinstance(i, p.FrameError) for i in items)
    assert any(isinstance(i, p.Frame) and i.ok for i in items)


def test_limits_can_only_be_tightened_and_are_enforced():
    fw = make_fw()
    fw.armed = True
    tight = SafetyEnvelope(max_program_voltage_v=5.0)
    assert p.decode_limits(one(fw, 1, C.SET_LIMITS, p.encode_limits(tight)).payload) == tight
    assert p.decode_limits(one(fw, 2, C.GET_LIMITS).payload) == tight
    assert one(fw, 3, C.PROGRAM, p.encode_program_request([[0, 0]], 5.5, 1e-6)).status == S.OUT_OF_RANGE
    loose = SafetyEnvelope(max_program_voltage_v=20.0)
    assert one(fw, 4, C.SET_LIMITS, p.encode_limits(loose)).status == S.OUT_OF_RANGE
    nan = p.encode_limits(SafetyEnvelope(max_program_voltage_v=float("nan")))
    assert one(fw, 5, C.SET_LIMITS, nan).status == S.BAD_ARGUMENT


def test_configure_vmm_status_and_reboot():
    fw = make_fw(noise=False)
    s = VmmSettings(integration_time_s=2e-6, input_bits=6)
    assert p.decode_settings(one(fw, 1, C.CONFIGURE, p.encode_settings(s)).payload) == s
    assert p.decode_settings(one(fw, 2, C.GET_CONFIG).payload) == s
    bad = VmmSettings(integration_time_s=1.0)
    assert one(fw, 3, C.CONFIGURE, p.encode_settings(bad)).status == S.OUT_OF_RANGE
    ticks = np.random.default_rng(0).integers(0, 65, (5, 16))
    counts = p.decode_vmm_reply(one(fw, 4, C.VMM, p.encode_vmm_request(ticks)).payload)
    direct = fw.array.vmm(p.ticks_to_widths(ticks, s))
    assert (p.counts_to_times(counts, s) == direct).all()  # exact over the wire
    st0 = p.decode_status_reply(one(fw, 5, C.STATUS).payload)
    assert st0.frames == 5 and st0.boot_id == 7 and not st0.armed
    fw.reboot(boot_id=8)
    assert p.decode_status_reply(one(fw, 6, C.STATUS).payload).boot_id == 8


# ------------------------------------------------------------ robustness

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_fw():
    return make_fw(seed=5)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_the_firmware_and_it_recovers(fuzz_fw, data):
    out = fuzz_fw.feed(data)
    for item in p.FrameDecoder().feed(out):
        assert isinstance(item, p.Frame) and item.reply  # only well-formed answers leave the board
    hello = fuzz_fw.feed(p.DELIMITER + p.request(1, C.HELLO))
    *garbage, frame = p.FrameDecoder().feed(hello)  # the delimiter may end garbage held so far
    assert frame.ok and frame.command == C.HELLO
    assert all(g.status in (S.BAD_CRC, S.BAD_FRAME) for g in garbage) and len(garbage) <= 1


@FUZZ
@given(st.integers(0, 0x7F), st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_valid_frames_with_any_command_and_payload_get_exactly_one_answer(fuzz_fw, cmd, payload, seq):
    fuzz_fw.armed = False  # random PROGRAM/ERASE payloads must not reach the chip
    items = p.FrameDecoder().feed(fuzz_fw.feed(p.request(seq, cmd, payload)))
    assert len(items) == 1 and isinstance(items[0], p.Frame)
    assert items[0].seq == seq and items[0].status in set(S)
    if cmd == C.ARM:
        fuzz_fw.armed = False


def test_the_emulator_disarms_by_itself_without_host_traffic():
    clock = FakeClock()
    fw = BoardFirmware(EmulatedArray(chip_from_options({"seed": "1"})), clock=clock, boot_id=7, arm_timeout_s=0.5)
    assert p.decode_hello_reply(one(fw, 1, C.HELLO).payload).arm_timeout_s == 0.5
    one(fw, 2, C.ARM, p.encode_flag(True))
    clock.t += 0.4
    assert p.decode_status_reply(one(fw, 3, C.STATUS).payload).armed  # traffic restarted the timer
    clock.t += 0.4
    assert fw.poll() == b"" and fw.armed
    clock.t += 0.2  # 0.6 s of silence
    fw.poll()
    assert not fw.armed and fw.watchdog_disarms == 1
    cells = p.encode_program_request([[0, 0]], 5.0, 1e-6)
    assert one(fw, 4, C.PROGRAM, cells).status == S.NOT_ARMED


def test_reset_and_route():
    fw = make_fw()
    one(fw, 1, C.ARM, p.encode_flag(True))
    assert one(fw, 2, C.ROUTE, p.encode_route((3, 4))).payload == b"\x03\x04" and fw.routed == (3, 4)
    assert one(fw, 3, C.ROUTE, bytes([16, 0])).status == S.BAD_ARGUMENT
    old = fw.boot_id
    assert one(fw, 4, C.RESET).ok
    assert fw.boot_id != old and not fw.armed and fw.routed is None


def test_the_emulator_codec_shares_no_code_with_the_host_codec():
    import ast
    from pathlib import Path

    for name in ("firmware.py", "wire.py"):
        tree = ast.parse((Path(__file__).parent.parent / "simulator" / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.startswith("drivers") for m in imported), (name, imported)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0x7F), st.integers(0, 9), st.binary(max_size=600))
def test_the_two_independent_codecs_agree_on_every_frame(seq, cmd, status, payload):
    """Host codec (drivers.protocol) and board codec (simulator.wire), written apart."""
    from simulator import wire as w

    board = w.Wire()
    (host_view,) = p.FrameDecoder().feed(board.reply(seq, cmd, status, payload))
    assert (host_view.seq, host_view.command, host_view.status, host_view.payload, host_view.reply) == \
        (seq, cmd, status, payload, True)
    board_view = board.parse(p.request(seq, cmd, payload)[:-1])
    assert (board_view.seq, board_view.command, board_view.payload, board_view.is_reply, board_view.version) == \
        (seq, cmd, payload, False, 1)
    stuffed = p.request(seq, cmd, payload)[:-1]
    off = stuffed[:-1] + bytes([1 + stuffed[-1] % 255])  # the last byte changed (never to 0x00)
    assert isinstance(board.parse(off), w.Garbled)  # one byte off: refused, never misread
