"""The board wire protocol: exact bytes of every command and error reply, CRC and
framing errors, round-trips and robustness against arbitrary bytes (hypothesis)."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import protocol as p
from labkit.backend import BackendError, Datasheet, Geometry, SafetyEnvelope, SafetyError, VmmSettings

C = p.Command

HELLO_INFO = p.BoardInfo(1, "fw1", "SN7", "C3", p.Capability.READ | p.Capability.VMM, 8192, Geometry(2, 2, ((0, 1),)),
                         Datasheet(), 0x01020304)
STATUS = p.BoardStatus(True, 0xA1B2C3D4, 5, 2, 100, 1, 1.5)

# (name, wire bytes built by the codec, expected wire bytes)
EXACT = [
    ("hello request", lambda: p.request(1, C.HELLO), "03010102010101050a60fb4800"),
    ("hello reply", lambda: p.reply(1, C.HELLO, p.encode_hello_reply(HELLO_INFO)),
     "0301010281025307010403020103010101052002020115010366773103534e37024333cdccccccccccec3f01010101012fe03f11"
     "ea2d819997613d48afbc9af2d78a3e95d626e80b2e113e8dedb5a0f7c6b03e8dedb5a0f7c6b03eb276b3c200"),
    ("ping request", lambda: p.request(2, C.PING, b"\x00\xff"), "030102020202020106ff9d81947900"),
    ("ping reply", lambda: p.reply(2, C.PING, b"\x00\xff"), "030102028202020106ff4595246700"),
    ("status request", lambda: p.request(3, C.STATUS), "03010302030101058a093aaf00"),
    ("status reply", lambda: p.reply(3, C.STATUS, p.encode_status_reply(STATUS)),
     "0301030283021d0701d4c3b2a105010102020101026401010201010101010101010107f83fba49655900"),
    ("get-config request", lambda: p.request(4, C.GET_CONFIG), "03010402040101058b01e82f00"),
    ("configure request", lambda: p.request(5, C.CONFIGURE, p.encode_settings(VmmSettings())),
     "0301050205021a1f8dedb5a0f7c6b03ecdccccccccccfc3f080a3a8c30e28e79153e3d7312d900"),
    ("configure reply", lambda: p.reply(5, C.CONFIGURE, p.encode_settings(VmmSettings())),
     "0301050285021a1f8dedb5a0f7c6b03ecdccccccccccfc3f080a3a8c30e28e79153eaf9f91e800"),
    ("read request", lambda: p.request(6, C.READ, p.encode_cells([[0, 1], [15, 2]])),
     "0301060210020602020108010f02570482f900"),
    ("read reply", lambda: p.reply(6, C.READ, p.encode_currents([1e-9, 2.5e-7])),
     "0301060290021202021595d626e80b2e113e8dedb5a0f7c6903ea048d9f300"),
    ("vmm request", lambda: p.request(7, C.VMM, p.encode_vmm_request([[0, 256, 128]])),
     "0301070211020902010203010103018005a668dcd700"),
    ("vmm reply", lambda: p.reply(7, C.VMM, p.encode_vmm_reply([[1023, 0], [5, 300]])),
     "0301070291020b02020402ff03010205072c016e28dde400"),
    ("program request", lambda: p.request(8, C.PROGRAM, p.encode_program_request([[3, 4]], 5.0, 1e-6)),
     "03010802200214020103030401010101010f14408dedb5a0f7c6b03e789d3f1d00"),
    ("program reply", lambda: p.reply(8, C.PROGRAM, p.encode_applied(1, 42)), "03010802a002060201022a01010550760abf00"),
    ("erase request", lambda: p.request(9, C.ERASE, p.encode_erase_request([0, 7], 12.0, 1e-3)),
     "030109022102140101010101010c2840fca9f1d24d62503f02010607b82e3cb400"),
    ("erase reply", lambda: p.reply(9, C.ERASE, p.encode_applied(2, 2)), "03010902a10206020202020101057ea47f2800"),
    ("arm request", lambda: p.request(10, C.ARM, p.encode_flag(True)), "03010a0222020106017ca63cc000"),
    ("arm reply", lambda: p.reply(10, C.ARM, p.encode_flag(True)), "03010a02a202010601ee16da7100"),
    ("get-limits request", lambda: p.request(11, C.GET_LIMITS), "03010b0230010105a8dcf7a100"),
    ("get-limits reply", lambda: p.reply(11, C.GET_LIMITS, p.encode_limits(SafetyEnvelope())),
     "03010b02b00258010101010101031a400101010101232c403a8c30e28e79453efca9f1d24d62503f8dedb5a0f7c6b03e9a9999"
     "999999b93f010101010101010101010101011f044048afbc9af2d77a3ef168e388b5f8e43ef168e388b5f8e43edd9003f000"),
    ("set-limits request",
     lambda: p.request(12, C.SET_LIMITS, p.encode_limits(SafetyEnvelope(max_program_voltage_v=6.0))),
     "03010c023102580101010101010318400101010101232c403a8c30e28e79453efca9f1d24d62503f8dedb5a0f7c6b03e9a9999"
     "999999b93f010101010101010101010101011f044048afbc9af2d77a3ef168e388b5f8e43ef168e388b5f8e43eadf4512e00"),
    ("temperature request", lambda: p.request(13, C.TEMPERATURE), "03010d0240010105299f911c00"),
    ("temperature reply", lambda: p.reply(13, C.TEMPERATURE, p.encode_temperature(300.0)),
     "03010d02c00208010101010108c0724014fcdb6000"),
    ("reset request", lambda: p.request(14, C.RESET), "03010e020601010566ea7a2400"),
    ("reset reply", lambda: p.reply(14, C.RESET), "03010e02860101055d5c23c900"),
    ("route request", lambda: p.request(15, C.ROUTE, p.encode_route((3, 4))), "03010f0212020207030480ee05e000"),
    ("route reply, port disconnected", lambda: p.reply(15, C.ROUTE, p.encode_route(None)),
     "03010f0292020207ffff7d7fd36c00"),
    ("temperature reply, no sensor", lambda: p.reply(13, C.TEMPERATURE, p.encode_temperature(None)),
     "03010d02c0020801010101010107f87fa8377e8600"),
]

# every error status: a PROGRAM (seq 0x1234) refused with message "x"
ERRORS = [
    (p.Status.BAD_CRC, p.CrcError, "07013412a001010678ec963d2c00"),
    (p.Status.BAD_FRAME, p.FramingError, "07013412a0020106780239883e00"),
    (p.Status.BAD_VERSION, p.VersionError, "07013412a003010678675e348600"),
    (p.Status.UNKNOWN_COMMAND, p.UnknownCommandError, "07013412a004010678de66e31b00"),
    (p.Status.BAD_ARGUMENT, p.BadArgumentError, "07013412a005010678bb015fa300"),
    (p.Status.OUT_OF_RANGE, p.OutOfRangeError, "07013412a00601067855aeeab100"),
    (p.Status.NOT_ARMED, p.NotArmedError, "07013412a00701067830c9560900"),
    (p.Status.BUSY, p.BusyError, "07013412a00801067866d9355100"),
    (p.Status.HARDWARE_FAULT, p.HardwareFaultError, "07013412a00901067803be89e900"),
]


def naive_cobs(data: bytes) -> bytes:
    """Reference COBS, byte by byte (independent of the codec's split-based encoder)."""
    out, block = bytearray(), bytearray()
    for b in data + b"\x00":
        if b == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    return bytes(out)


def reference_frame(seq, cmd, payload, status=0, reply=False) -> bytes:
    body = struct.pack("<BHBBH", 1, seq, cmd | (0x80 if reply else 0), status, len(payload)) + payload
    return naive_cobs(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"


@pytest.mark.parametrize("name,build,expected", EXACT, ids=[e[0] for e in EXACT])
def test_exact_bytes_of_every_command(name, build, expected):
    wire = build()
    assert wire.hex() == expected
    (frame,) = p.FrameDecoder().feed(bytes.fromhex(expected))
    assert isinstance(frame, p.Frame) and frame.ok
    assert frame.reply == name.split()[1].startswith("reply")
    assert p.encode_frame(frame) == wire
    # the same bytes from the header layout in the module docstring, built independently
    assert reference_frame(frame.seq, frame.command, frame.payload, reply=frame.reply) == wire


def test_every_command_has_an_exact_bytes_case():
    names = " ".join(e[0] for e in EXACT)
    for cmd in C:
        assert cmd.name.lower().replace("_", "-") in names, cmd


def test_exact_payloads_decode_to_their_values():
    frames = {e[0]: p.FrameDecoder().feed(bytes.fromhex(e[2]))[0] for e in EXACT}
    assert p.decode_hello_reply(frames["hello reply"].payload) == HELLO_INFO
    assert p.decode_status_reply(frames["status reply"].payload) == STATUS
    assert p.decode_settings(frames["configure request"].payload) == VmmSettings()
    assert p.decode_cells(frames["read request"].payload).tolist() == [[0, 1], [15, 2]]
    assert p.decode_currents(frames["read reply"].payload).tolist() == [1e-9, 2.5e-7]
    assert p.decode_vmm_request(frames["vmm request"].payload).tolist() == [[0, 256, 128]]
    assert p.decode_vmm_reply(frames["vmm reply"].payload).tolist() == [[1023, 0], [5, 300]]
    cells, v, w = p.decode_program_request(frames["program request"].payload)
    assert cells.tolist() == [[3, 4]] and v.tolist() == [5.0] and w.tolist() == [1e-6]
    assert p.decode_applied(frames["program reply"].payload) == (1, 42)
    rows, v, w = p.decode_erase_request(frames["erase request"].payload)
    assert rows.tolist() == [0, 7] and (v, w) == (12.0, 1e-3)
    assert p.decode_flag(frames["arm request"].payload) is True
    assert p.decode_limits(frames["get-limits reply"].payload) == SafetyEnvelope()
    assert p.decode_limits(frames["set-limits request"].payload).max_program_voltage_v == 6.0
    assert p.decode_temperature(frames["temperature reply"].payload) == 300.0
    assert p.decode_temperature(frames["temperature reply, no sensor"].payload) is None


@pytest.mark.parametrize("status,exc,expected", ERRORS, ids=[e[0].name for e in ERRORS])
def test_exact_bytes_of_every_error_reply_and_its_exception(status, exc, expected):
    wire = p.error_reply(0x1234, C.PROGRAM, status, "x")
    assert wire.hex() == expected
    (frame,) = p.FrameDecoder().feed(wire)
    assert (frame.seq, frame.command, frame.status, frame.reply) == (0x1234, C.PROGRAM, status, True)
    err = frame.error()
    assert type(err) is exc and err.status == status and "PROGRAM" in str(err) and status.name in str(err)
    assert isinstance(err, BackendError)


def test_refusals_are_value_errors_and_safety_refusals_are_safety_errors():
    assert isinstance(p.error_for(p.Status.BAD_ARGUMENT, C.READ), ValueError)
    assert isinstance(p.error_for(p.Status.OUT_OF_RANGE, C.PROGRAM), SafetyError)
    assert isinstance(p.error_for(p.Status.NOT_ARMED, C.ERASE), SafetyError)
    assert not isinstance(p.error_for(p.Status.BUSY, C.VMM), ValueError)
    assert isinstance(p.error_for(p.Status.BAD_CRC, C.VMM), p.LinkError)
    assert "unknown status" in str(p.error_for(200, C.VMM))


def test_bad_crc_is_detected_and_reported_with_the_header_seq():
    wire = bytearray.fromhex("03010102010101050a60fb4800")  # HELLO, seq 1
    wire[9] ^= 0x01  # a CRC byte
    (err,) = p.FrameDecoder().feed(bytes(wire))
    assert err == p.FrameError("crc", 12, seq=1, command=C.HELLO)
    wire = bytearray.fromhex("03010102010101050a60fb4800")
    wire[1] ^= 0x40  # version byte: CRC no longer matches
    assert p.FrameDecoder().feed(bytes(wire))[0].reason == "crc"
    # the board's exact answer to a frame with a bad CRC
    assert p.error_reply(1, C.HELLO, p.Status.BAD_CRC, "crc error").hex() == (
        "030101048101090e637263206572726f72fabcaacb00")


def test_length_field_inconsistent_with_payload_is_a_framing_error():
    body = struct.pack("<BHBBH", 1, 9, C.PING, 0, 5) + b"ab"  # says 5, carries 2
    wire = naive_cobs(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"
    (err,) = p.FrameDecoder().feed(wire)
    assert (err.reason, err.seq, err.command) == ("length", 9, C.PING)


def test_decoder_resynchronises_after_garbage_and_split_input():
    a, b = p.request(1, C.HELLO), p.request(2, C.STATUS)
    d = p.FrameDecoder()
    items = d.feed(b"\x17\x99garbage\x00" + a[:4])
    assert [i.reason for i in items] == ["cobs"]
    items = d.feed(a[4:] + b"\xff\xfe" + b"\x00" + b)
    assert [type(i).__name__ for i in items] == ["Frame", "FrameError", "Frame"]
    assert [items[0].seq, items[2].seq] == [1, 2]
    assert d.pending == 0


def test_decoder_discards_overlong_runs_without_growing():
    d = p.FrameDecoder(max_payload=64)
    items = d.feed(b"\x05" * 1000)
    assert [i.reason for i in items] == ["overflow"] and d.pending == 0
    assert d.feed(b"\x05" * 50) == [] and d.pending == 0  # still discarding until a delimiter
    items = d.feed(b"\x00" + p.request(3, C.PING, b"ok"))
    assert len(items) == 1 and items[0].payload == b"ok"


def test_quantisation_helpers_are_exact_on_the_grid():
    s = VmmSettings()
    ticks = np.array([[0, 1, 128, 256]])
    widths = p.ticks_to_widths(ticks, s)
    assert widths[0, -1] == s.integration_time_s
    assert (p.widths_to_ticks(widths, s) == ticks).all()
    assert p.widths_to_ticks([[2e-6, -1.0]], s).tolist() == [[256, 0]]  # clipped to the window
    counts = np.array([[0, 7, 1023]])
    assert (p.times_to_counts(p.counts_to_times(counts, s), s) == counts).all()
    assert p.vmm_batch_limit(8192, 16, 16) == 255


def test_encoders_reject_values_that_do_not_fit():
    with pytest.raises(ValueError):
        p.encode_vmm_request([[70000]])
    with pytest.raises(ValueError):
        p.encode_cells([[300, 0]])
    with pytest.raises(ValueError):
        p.encode_frame(p.Frame(70000, C.PING))


# ------------------------------------------------------------- properties

payloads = st.binary(max_size=600)
PROP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(st.binary(max_size=1200))
def test_cobs_round_trip_and_no_zero_bytes(data):
    enc = p.cobs_encode(data)
    assert 0 not in enc
    assert p.cobs_decode(enc) == data
    assert len(enc) <= p.cobs_max_size(len(data))
    assert p.cobs_decode(naive_cobs(data)) == data


@PROP
@given(st.integers(0, 0xFFFF), st.integers(0, 0x7F), st.integers(0, 255), payloads, st.booleans())
def test_frame_round_trip(seq, cmd, status, payload, is_reply):
    frame = p.Frame(seq, cmd, payload, status, is_reply)
    wire = p.encode_frame(frame)
    assert wire.endswith(b"\x00") and 0 not in wire[:-1]
    assert p.FrameDecoder().feed(wire) == [frame]
    assert wire == reference_frame(seq, cmd, payload, status, is_reply)


@PROP
@given(
    st.lists(st.tuples(st.integers(0, 0xFFFF), payloads), min_size=1, max_size=5),
    st.lists(st.binary(max_size=40), min_size=5, max_size=5),
    st.lists(st.integers(1, 97), min_size=1, max_size=10),
)
def test_frames_survive_garbage_between_them_and_any_chunking(frames, garbage, cuts):
    stream = b""
    for (seq, payload), junk in zip(frames, garbage):
        stream += junk + b"\x00" + p.request(seq, C.PING, payload)
    d, got, pos, k = p.FrameDecoder(), [], 0, 0
    while pos < len(stream):
        step = cuts[k % len(cuts)]
        got += d.feed(stream[pos : pos + step])
        pos, k = pos + step, k + 1
    good = [(f.seq, f.payload) for f in got if isinstance(f, p.Frame) and f.command == C.PING and not f.reply]
    assert good[-len(frames):] == frames


@PROP
@given(st.binary(max_size=3000))
def test_random_bytes_never_crash_the_decoder(data):
    d = p.FrameDecoder(max_payload=512)
    for item in d.feed(data) + d.feed(data[::-1]):
        assert isinstance(item, (p.Frame, p.FrameError))
    assert d.pending <= d.max_wire


@PROP
@given(st.sampled_from([
    p.decode_hello_reply, p.decode_status_reply, p.decode_settings, p.decode_cells, p.decode_currents,
    p.decode_vmm_request, p.decode_vmm_reply, p.decode_program_request, p.decode_erase_request,
    p.decode_applied, p.decode_flag, p.decode_limits, p.decode_temperature,
]), st.binary(max_size=120))
def test_random_payloads_decode_or_raise_payload_error(decoder, data):
    try:
        decoder(data)
    except p.PayloadError:
        pass


@PROP
@given(
    st.lists(st.tuples(st.integers(0, 15), st.integers(0, 15)), max_size=20),
    st.floats(0, 14, allow_nan=False),
    st.floats(1e-9, 0.1, allow_nan=False),
)
def test_payload_round_trips(cells, volts, width):
    cells = np.array(cells, dtype=np.int64).reshape(-1, 2)
    assert (p.decode_cells(p.encode_cells(cells)) == cells).all()
    got, v, w = p.decode_program_request(p.encode_program_request(cells, volts, width))
    assert (got == cells).all() and (v == volts).all() and (w == width).all()
    rows, v2, w2 = p.decode_erase_request(p.encode_erase_request(cells[:, 0], volts, width))
    assert (rows == cells[:, 0]).all() and (v2, w2) == (volts, width)
    s = VmmSettings(integration_time_s=width, read_voltage_v=volts, input_bits=6, tdc_bits=12, tdc_lsb_s=width / 7)
    assert p.decode_settings(p.encode_settings(s)) == s
    currents = np.abs(np.asarray(cells, float).ravel()) * 1e-9
    assert (p.decode_currents(p.encode_currents(currents)) == currents).all()


def test_decoder_is_fast_enough_for_full_vmm_frames():
    ticks = np.random.default_rng(0).integers(0, 257, (255, 16))
    wire = p.request(1, C.VMM, p.encode_vmm_request(ticks))
    payload = len(p.encode_vmm_request(ticks))
    assert payload / len(wire) >= 0.99  # framing efficiency of a full VMM batch frame
    d = p.FrameDecoder()
    t0 = time.perf_counter()
    for _ in range(50):
        (frame,) = d.feed(wire)
    assert (time.perf_counter() - t0) / 50 < 0.01
    assert (p.decode_vmm_request(frame.payload) == ticks).all()


def test_hello_carries_the_arm_timeout_and_later_fields_are_ignored():
    import dataclasses

    info = dataclasses.replace(HELLO_INFO, arm_timeout_s=1.0)
    payload = p.encode_hello_reply(info)
    assert payload[-4:] == bytes.fromhex("e8030000")  # 1000 ms, u32 little-endian
    assert p.decode_hello_reply(payload) == info
    assert p.decode_hello_reply(payload + b"\x07\x08\x09") == info  # a later revision's extra field
    assert p.decode_hello_reply(payload[:-4]).arm_timeout_s is None  # an older board: not announced
    with pytest.raises(p.PayloadError):
        p.decode_hello_reply(payload[:-8])


def test_the_spec_worked_examples():
    """The byte examples of docs/board-protocol.md, section 3."""
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert p.cobs_encode(bytes.fromhex("11220033")) == bytes.fromhex("0311220233")
    assert p.request(1, C.HELLO).hex(" ") == "03 01 01 02 01 01 01 05 0a 60 fb 48 00"
    program = p.request(0x1234, C.PROGRAM, p.encode_program_request([[3, 4]], 5.0, 1e-6))
    assert program.hex(" ") == ("05 01 34 12 20 02 14 02 01 03 03 04 01 01 01 01 01 0f 14 40 "
                                "8d ed b5 a0 f7 c6 b0 3e e0 cc 74 8f 00")
    assert p.reply(0x1234, C.PROGRAM, p.encode_applied(1, 42)).hex(" ") == \
        "05 01 34 12 a0 02 06 02 01 02 2a 01 01 05 df 70 b3 58 00"
