"""labkit's instrument drivers against scripted replies in the real instruments' forms.

No emulator: a loopback socket expects the exact bytes each driver sends and answers
with bytes as the real Keithley 2400, InfiniiVision 3000 X and Lake Shore 336 send them
(signs, padding, exponents, CR LF, ``#8`` blocks), so a driver that only ever met the
emulator's formatting would fail here."""

from __future__ import annotations

import socket
import struct
import threading

import numpy as np
import pytest

from drivers.scope import KeysightInfiniiVision, Preamble
from drivers.smu import Keithley2400
from drivers.tempctl import LakeShore336


class Scripted:
    """A one-connection server: for each ``(expected, reply)`` it reads one line, records
    whether it was ``expected`` (bytes, terminator included) and sends ``reply``."""

    def __init__(self, script: list[tuple[bytes, bytes | None]]):
        self.script = list(script)
        self.mismatches: list[tuple[bytes, bytes]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def resource(self) -> str:
        return f"TCPIP::127.0.0.1::{self.sock.getsockname()[1]}::SOCKET"

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(5)
        buf = b""
        with conn:
            for expected, reply in self.script:
                while b"\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                line += b"\n"
                if line != expected:
                    self.mismatches.append((expected, line))
                if reply is not None:
                    conn.sendall(reply)

    def done(self) -> None:
        self.thread.join(timeout=5)
        self.sock.close()
        assert not self.thread.is_alive(), "the driver did not send the whole script"
        assert self.mismatches == []


def test_keithley_readings_in_the_2400s_own_format():
    srv = Scripted([
        (b"*IDN?\n", b"KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C30   Mar 17 2006 09:29:29/A02  /K/J\n"),
        (b":SENS:CURR:PROT 5e-06\n", None),
        (b":SYST:ERR?\n", b'0,"No error"\n'),
        (b":SOUR:VOLT:LEV 1.8\n", None),
        (b":SYST:ERR?\n", b'+0,"No error"\n'),  # some firmware signs the zero
        (b":READ?\n", b"-1.234567E-09\n"),
        (b":SENS:CURR:PROT:TRIP?\n", b"0\n"),
        (b":SENS:FUNC?\n", b'"CURR:DC"\n'),
        (b":SOUR:VOLT:LEV 1.8\n", None),
        (b":SYST:ERR?\n", b'-222,"Data out of range"\n'),
        (b":SYST:ERR?\n", b'+802,"OUTPUT blocked by Over Temp"\n'),
        (b":SYST:ERR?\n", b'0,"No error"\n'),
    ])
    smu = Keithley2400(srv.resource, max_compliance_a=1e-5, timeout_s=2)
    try:
        assert smu.idn.startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2400")
        smu.compliance_a = 5e-6
        assert smu.measure_current(1.8) == pytest.approx(-1.234567e-9)
        assert smu.tripped is False
        assert smu.sense_function == "CURR:DC"
        with pytest.raises(Exception) as info:
            smu.source_v = 1.8
        assert info.value.errors == [(-222, "Data out of range"), (802, "OUTPUT blocked by Over Temp")]
    finally:
        smu.close()
    srv.done()


def test_keithley_list_sweep_reads_comma_separated_signed_exponents():
    readings = b"+1.000000E-08,+2.500000E-08,+9.910000E+37\n"
    srv = Scripted([(b":READ?\n", readings)])
    smu = Keithley2400(srv.resource, timeout_s=2)
    try:
        np.testing.assert_allclose(smu.readings, [1e-8, 2.5e-8, 9.91e37])
    finally:
        smu.close()
    srv.done()


def test_lake_shore_replies_with_cr_lf_padding_and_esr_errors():
    srv = Scripted([
        (b"KRDG? A\n", b"+293.150\r\n"),
        (b"SETP? 1\n", b"+310.000\r\n"),
        (b"HTR? 1\n", b"+027.50\r\n"),
        (b"RAMP? 1\n", b"1,+2.5\r\n"),
        (b"RDGST? A\n", b"000\r\n"),
        (b"RANGE 1,2\n", None),
        (b"*ESR?\n", b"016\r\n"),  # execution error, zero-padded as the 336 sends it
        (b"*ESR?\n", b"0\r\n"),
    ])
    t = LakeShore336(srv.resource, timeout_s=2)
    try:
        assert t.temperature_k == pytest.approx(293.15)
        assert t.setpoint_k == pytest.approx(310.0)
        assert t.heater_percent == pytest.approx(27.5)
        assert t.ramp == (True, 2.5)
        assert t.reading_status == 0
        with pytest.raises(Exception, match="Execution error"):
            t.heater_range = 2
        assert t.errors() == []
    finally:
        t.close()
    srv.done()


def test_infiniivision_preamble_and_8_digit_word_block():
    codes = np.array([32768, 40000, 65535, 0, 12345], dtype=np.uint16)
    block = b"#8" + f"{codes.size * 2:08d}".encode() + struct.pack(f"<{codes.size}H", *codes)
    pre = b"+1,+0,+5,+1,+2.00000000E-09,-1.00000000E-06,+0,+1.83105469E-05,+5.00000000E-01,+32768\n"
    srv = Scripted([
        (b":WAV:SOUR CHAN2\n", None),
        (b":WAV:FORM WORD\n", None),
        (b":WAV:BYT LSBF\n", None),
        (b":WAV:UNS 1\n", None),
        (b":WAV:POIN 5\n", None),
        (b":WAV:PRE?\n", pre),
        (b":WAV:DATA?\n", block + b"\n"),
        (b":SYST:ERR?\n", b'+0,"No error"\n'),
    ])
    scope = KeysightInfiniiVision(srv.resource, timeout_s=2)
    scope.waveform_source = "CHAN2"
    scope.waveform_format = "WORD"
    scope.waveform_byteorder = "LSBF"
    scope.waveform_unsigned = 1
    scope.write(":WAV:POIN 5")  # below the driver's own bound of 100: the raw write
    p = Preamble.parse(scope.query(":WAV:PRE?"))
    got = np.asarray(scope.query_block(":WAV:DATA?", datatype="H"))
    scope.check_errors()
    scope.close()
    srv.done()
    np.testing.assert_array_equal(got, codes)
    np.testing.assert_allclose(p.volts(got)[:2], [0.5, 0.5 + (40000 - 32768) * 1.83105469e-05])
    np.testing.assert_allclose(p.times(2), [-1e-6, -1e-6 + 2e-9])
