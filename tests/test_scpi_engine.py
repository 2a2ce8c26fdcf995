"""The SCPI engine and socket server behind the emulated instruments: syntax rules of
the real instruments, the IEEE 488.2 status model, bounds answered with SCPI errors,
linear-time parsing, and many clients at once over real loopback sockets."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

from simulator.emulated import open_sim
from simulator.instruments import InfiniiVisionEmulator, Keithley2400Emulator, LakeShore336Emulator, Wiring
from simulator.scpi_device import Call
from simulator.scpi_server import ScpiServer


@pytest.fixture(scope="module")
def array():
    return open_sim("sim://", {"seed": "3", "noise": "0"})


@pytest.fixture
def smu(array):
    return Keithley2400Emulator(array, Wiring(smu_cell=(1, 2)))


def errors(device) -> list[tuple[int, str]]:
    out = list(device.errors)
    device.errors.clear()
    return out


# ----------------------------------------------------------------- syntax


def test_common_commands_take_a_leading_colon_and_chain(smu):
    smu.handle(":SOUR:VOLT 1.5")
    assert smu.handle(":*RST;:*IDN?") == smu.idn
    assert smu.level_v == 0.0 and errors(smu) == []
    assert smu.handle("*idn?; *OPC?") == smu.idn + ";1"


def test_compound_headers_are_relative_to_the_previous_path(smu):
    smu.handle(":SOUR:FUNC CURR;:SOUR:CURR 1e-6;VOLT 0.5")  # VOLT is under :SOUR
    assert smu.src["CURR"]["level"] == 1e-6 and smu.src["VOLT"]["level"] == 0.5
    smu.handle(":SENS:CURR:PROT 2e-6;NPLC 0.1")  # NPLC under :SENS:CURR
    assert smu.compliance_a == 2e-6 and smu.nplc == 0.1
    assert smu.handle(":TRIG:COUN 4;:TRIG:COUN?;*OPC?;COUN?") == "4;1;4"
    assert errors(smu) == []


def test_quoted_strings_min_max_def_and_suffixes(smu):
    smu.handle("SENS:FUNC:CONC OFF;:SENS:FUNC 'VOLT'")
    assert smu.functions == {"VOLT"}
    smu.handle(':SENS:FUNC "CURR:DC"')
    assert smu.handle(":SENS:FUNC?") == '"CURR:DC"'
    smu.handle(":SENS:CURR:NPLC MAX")
    assert smu.nplc == 10.0
    smu.handle(":SENS:CURR:NPLC MIN;:SOUR:DEL DEF")
    assert smu.nplc == 0.01 and smu.delay_s == 0.0
    assert float(smu.handle(":SENS:CURR:NPLC? MAX")) == 10.0 and smu.nplc == 0.01
    smu.handle(":SENS:CURR:PROT 150nA;:SOUR:VOLT 250mV")
    assert smu.compliance_a == pytest.approx(150e-9) and smu.level_v == pytest.approx(0.25)
    assert errors(smu) == []
    smu.handle(":SOUR:VOLT 1 A")  # the wrong unit
    smu.handle(":SENS:FUNC 'CURR")  # an unterminated string
    smu.handle(':SENS:FUNC "a;b"')  # ';' inside a string does not split
    assert [c for c, _ in errors(smu)] == [-131, -150, -224]
    assert scope_label_round_trip(open_sim("sim://", {"seed": "1"})) == '"A ""B"""'


def scope_label_round_trip(array) -> str:
    scope = InfiniiVisionEmulator(array, Wiring())
    scope.handle(':CHAN1:LAB "a ""b"""')
    assert not scope.errors
    return scope.handle(":CHAN1:LAB?")


def test_unknown_headers_and_bad_values_queue_the_right_errors(smu):
    smu.handle(":BOGus 1;:SOUR:VOLT abc;:SOUR:VOLT 1e9;:TRIG:COUN 0;*IDN;:SOUR:VOLT:MODE NONSENSE")
    assert errors(smu) == [(-113, "Undefined header"), (-104, "Data type error"), (-222, "Data out of range"),
                           (-222, "Data out of range"), (-113, "Undefined header"),
                           (-224, "Illegal parameter value")]
    smu.handle("\u00e9t\u00e9?;:sour:volt@ 1")
    assert [c for c, _ in errors(smu)] == [-101, -102]


def test_status_byte_event_registers_and_error_queue_queries(smu):
    smu.handle("*CLS")
    assert smu.handle("*STB?") == "0" and smu.handle(":SYST:ERR:COUN?") == "0"
    smu.handle("*ESE 60;*SRE 32")  # summarize command/execution/device/query errors
    smu.handle(":NOPE;:SOUR:VOLT 1e9")
    stb = int(smu.handle("*STB?"))
    assert stb & 4 and stb & 32 and stb & 64  # EAV, ESB, MSS
    assert smu.handle(":SYST:ERR:COUN?") == "2"
    assert smu.handle(":SYST:ERR:ALL?") == '-113,"Undefined header",-222,"Data out of range"'
    assert int(smu.handle("*ESR?")) == (1 << 5) | (1 << 4)
    assert smu.handle("*ESR?") == "0" and int(smu.handle("*STB?")) == 0
    assert smu.handle("*ESE?;*SRE?") == "60;32"
    smu.handle("*OPC")
    assert smu.handle("*ESR?") == "1"
    assert smu.handle("*TST?") == "0" and smu.handle(":SYST:ERR?") == '0,"No error"'


def test_lake_shore_replies_end_in_cr_lf_and_errors_set_esr_bits(array):
    ls = LakeShore336Emulator(array, time_constant_s=0.0)
    with ScpiServer(ls) as server, socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
        s.sendall(b"*ESR?\r\n")  # the power-on bit
        assert _recv_line(s) == b"128\r\n"
        s.sendall(b"KRDG? A;CRDG? A\r\n")
        assert _recv_line(s) == b"+300.000;+26.850\r\n"
        s.sendall(b"NOPE\r\nSETP 1,9999\r\nKRDG? Q\r\n*ESR?\r\n")
        assert _recv_line(s) == b"48\r\n"  # command error (32) + execution error (16)


def _recv_line(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# ----------------------------------------------------------------- bounds and time


def test_an_8000_value_list_is_refused_at_once_with_too_much_data(smu):
    line = ":SOUR:LIST:VOLT " + ",".join(["1.25"] * 8000)
    t0 = time.perf_counter()
    smu.handle(line)
    assert time.perf_counter() - t0 < 0.05
    assert errors(smu) == [(-223, "Too much data")]
    smu.handle(":SOUR:LIST:VOLT " + ",".join(["1.25"] * 100))  # the 2400's 100 points are fine
    assert errors(smu) == [] and len(smu.src["VOLT"]["list"]) == 100
    smu.handle(":SOUR:VOLT " + ",".join(["1"] * 5000))  # over the engine's argument bound
    smu.handle(";".join(["*OPC"] * 300))  # over the unit bound
    assert [c for c, _ in errors(smu)] == [-223, -223]


def test_parsing_time_grows_linearly_with_the_line(smu):
    def parse_time(n: int) -> float:
        line = ",".join(f'"{i}"' if i % 7 == 0 else "1.5" for i in range(n))
        line = ":SOUR:VOLT " + line + ";*OPC;:SOUR:LIST:VOLT " + line
        best = float("inf")
        for _ in range(7):
            t0 = time.thread_time()  # CPU time of this thread: a busy machine does not skew it
            units = smu.parse(line)
            assert [u.error for u in units] == [(-223, "Too much data"), None, (-223, "Too much data")]
            Call(":SOUR:LIST:VOLT", False, line, ()).args  # the argument split of the whole line
            best = min(best, time.thread_time() - t0)
        return best

    small, large = parse_time(3000), parse_time(30000)
    assert large < 30 * small + 2e-3  # 10x the data: ~10x the time, never ~100x


# ----------------------------------------------------------------- sockets


def _client(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def test_one_clients_long_commands_never_stall_another_for_100_ms(array):
    smu = Keithley2400Emulator(array, Wiring(smu_cell=(1, 2)))
    with ScpiServer(smu) as server:
        stop = threading.Event()
        sent = [0]

        def flood():
            with _client(server.port) as s:
                long_list = (":SOUR:LIST:VOLT " + ",".join(["0.5"] * 2400) + "\n").encode()
                huge = b":SOUR:VOLT " + b"1" * (server.max_line - 100) + b"\n"
                while not stop.is_set():
                    s.sendall(long_list + huge)
                    sent[0] += 1

        def worst_round_trip() -> float:
            worst = 0.0
            with _client(server.port) as s:
                for _ in range(60):
                    t0 = time.perf_counter()
                    s.sendall(b"*OPC?\n")
                    assert _recv_line(s) == b"1\n"
                    worst = max(worst, time.perf_counter() - t0)
            return worst

        quiet = worst_round_trip()  # what this (possibly busy) machine gives without the flood
        threads = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        worst = worst_round_trip()
        stop.set()
        for t in threads:
            t.join(timeout=5)
        assert sent[0] > 2 and worst < 0.1 + quiet, (sent[0], worst, quiet)


def test_server_survives_garbage_unterminated_megabytes_resets_and_50_clients(array):
    smu = Keithley2400Emulator(array, Wiring(smu_cell=(1, 2)))
    rng = np.random.default_rng(0)
    with ScpiServer(smu) as server:
        # random bytes, with and without terminators
        with _client(server.port) as s:
            for _ in range(300):
                s.sendall(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes())
            s.sendall(b"\n*CLS\n*OPC?\n")
            s.settimeout(5)
            assert _recv_line(s).endswith(b"1\n")
        # 1 MB without a terminator: answered by -223, then the connection works on
        with _client(server.port) as s:
            s.sendall(b"X" * (1 << 20))
            s.sendall(b"\n:SYST:ERR?\n")
            assert _recv_line(s) == b'-223,"Too much data"\n'
        # abrupt resets mid-command
        for _ in range(20):
            s = _client(server.port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.sendall(b":SOUR:LIST:VOLT 1,2,3")
            s.close()
        # 50 clients at once, each with its own answers
        results = []

        def one(i: int):
            with _client(server.port) as c:
                for _ in range(5):
                    c.sendall(b"*IDN?;*OPC?\n")
                    results.append(_recv_line(c) == smu.idn.encode() + b";1\n")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert len(results) == 250 and all(results)
        deadline = time.monotonic() + 2
        while server.clients and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.clients == 0  # every connection thread ended


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_server_memory_stays_bounded_under_unterminated_input(array):
    smu = Keithley2400Emulator(array, Wiring())
    with ScpiServer(smu) as server, _client(server.port) as s:
        before = _rss_kib()
        chunk = b"A" * (1 << 20)
        for _ in range(32):  # 32 MB, no terminator
            s.sendall(chunk)
        s.sendall(b"\n*OPC?\n")
        assert _recv_line(s) == b"1\n"
        assert _rss_kib() - before < 16 * 1024  # the server kept at most one bounded line


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_every_implemented_header_with_odd_arguments_queues_errors_never_faults(monkeypatch, array):
    import random
    import re

    import simulator.scpi_device as engine

    monkeypatch.setattr(engine, "_STRICT", True)  # a handler fault raises instead of queuing -300
    rnd = random.Random(5)
    values = ["1", "0", "-1", "1e9", "INF", "nan", "MIN", "MAX", "DEF", "ON", "OFF", "'CURR'", '"x', "A", "B", "3",
              "2,3", "1,2,3,4,5,6,7,8,9", "", "1.5mV", "abc", "0,1,300,0", "1,1,1,0", "CHAN1", "EXT", "1,A", "UP"]
    for device in (Keithley2400Emulator(array, Wiring(smu_cell=(1, 1))), InfiniiVisionEmulator(array, Wiring()),
                   LakeShore336Emulator(array, time_constant_s=0.0)):
        for _ in range(3000):
            header = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1) if rnd.random() < 0.5 else "",
                            rnd.choice(device.patterns))
            header = header.replace("#", str(rnd.choice([1, 2, 5, ""])))
            reply = device.handle(header + rnd.choice(["", "?"]) + " " + rnd.choice(values))
            assert reply is None or isinstance(reply, (str, bytes))
            if rnd.random() < 0.02:
                device.handle("*RST")
        assert engine.DEVICE_ERROR not in device.errors
