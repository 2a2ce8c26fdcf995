"""Which documented calls of the field's drivers work against the emulated instruments,
and the robustness run of the SCPI servers.

For each driver (PyMeasure and QCoDeS Keithley 2400 and Lake Shore 336, PyMeasure's
InfiniiVision DSOX1102G) every documented call is enumerated from the driver itself
(properties and public methods of the driver and its channels; QCoDeS parameters and
methods), then exercised over pyvisa-py against the virtual bench's instruments: a
property is read and, where settable, written back with the value read; a method is
called with the arguments a lab script would give. A call works when it returns without
an exception AND leaves nothing in the instrument's error queue (``*ESR?`` bits on the
Lake Shore). Calls the emulator does not do are listed with the reason.

Then the robustness run: thousands of random byte strings, 1 MB lines without a
terminator, 50 concurrent connections and abrupt resets against each server, counting
crashes (exceptions in server threads), hangs (a probe query unanswered within 2 s) and
the process's memory growth.

    python benchmarks/instrument_coverage.py [--quick]
"""

from __future__ import annotations

import argparse
import inspect
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.bench import BenchArray, wire_instruments  # noqa: E402
from simulator.emulated import open_sim  # noqa: E402
from simulator.instruments import Wiring  # noqa: E402
from simulator.scpi_server import ScpiServer  # noqa: E402

warnings.simplefilter("ignore")

# ------------------------------------------------------------------ the bench


def make_bench():
    array = open_sim("sim://", {"seed": "7", "noise": "0", "program_noise": "0"})
    wiring = Wiring(smu_cell=(3, 5), scope_columns={1: 4, 2: 9})
    chip = BenchArray(array, wiring)
    emus = wire_instruments(chip, wiring, thermal_time_constant_s=0.02)
    servers = {k: ScpiServer(d) for k, d in emus.items()}
    return chip, emus, servers


def drain(device) -> list:
    """Errors the instrument holds now (and clear them)."""
    with device.lock:
        errs = list(device.errors) if device.has_error_queue else []
        bits = device.esr & 0b0011_1100
        device.errors.clear()
        device.esr = 0
    if bits and not errs:
        errs = [f"ESR {bits}"]
    return errs


# ------------------------------------------------------------------ enumeration

NOT_EMULATED = {
    # PyMeasure Keithley 2400
    "pm-k2400": {
    },
    # PyMeasure Lake Shore 3xx: channels the 336 does not have
    "pm-ls": {
        "input_C1": "no 3468 option card on a 336 (PyMeasure's 3xx covers other models)",
        "input_C2": "no 3468 option card", "input_C3": "no 3468 option card", "input_C4": "no 3468 option card",
        "input_D1": "no 3468/3062 option card", "input_D2": "no option card", "input_D3": "no option card",
        "input_D4": "no option card", "input_D5": "no option card",
        "next_error": "the 336 has no SCPI error queue (SYST:ERR? is not a 336 command)",
        "check_errors": "the 336 has no SCPI error queue", "options": "the 336 has no *OPT?",
        "output_3.output": "HTR? takes outputs 1-2 only on the 336 (AOUT? for 3-4)",
        "output_4.output": "HTR? takes outputs 1-2 only on the 336 (AOUT? for 3-4)",
    },
    "qc-ls": {
        "output_3.output": "QCoDeS reads HTR? 3; the 336 answers HTR? for outputs 1-2 only (AOUT? for 3-4)",
        "output_4.output": "QCoDeS reads HTR? 4; the 336 answers HTR? for outputs 1-2 only (AOUT? for 3-4)",
        "output_*.output_type": "QCoDeS parses HTRSET? as the Model 335's five fields; the 336 replies four",
        "output_*.output_heater_resistance": "same HTRSET? field layout (Model 335's)",
        "output_*.output_max_current": "same HTRSET? field layout (Model 335's)",
        "output_*.output_max_user_current": "same HTRSET? field layout (Model 335's)",
        "output_*.output_display": "same HTRSET? field layout (Model 335's)",
        "output_3.setpoint_ramp_*": "works", "blocking_t": "blocks until reached: exercised through setpoint",
    },
    "pm-dso": {
        "download_image": ":DISPlay:DATA? (screen image) is not emulated",
        "system_setup": ":SYSTem:SETup (binary setup blob) is not emulated",
        "ch2.probe_attenuation": "works",
    },
    "qc-k2400": {},
}


def _reason(driver: str, name: str) -> str | None:
    table = NOT_EMULATED.get(driver, {})
    if name in table and table[name] != "works":
        return table[name]
    for key, why in table.items():
        if key.endswith("*") and name.startswith(key[:-1]) and why != "works":
            return why
        if "*" in key and not key.endswith("*"):
            head, tail = key.split("*", 1)
            if name.startswith(head) and name.endswith(tail) and why != "works":
                return why
    return None


def pymeasure_members(obj, stop_classes) -> list[tuple[str, str]]:
    """(name, kind) of the documented properties and methods of a PyMeasure object."""
    seen, out = set(), []
    for klass in type(obj).__mro__:
        if klass in stop_classes or klass is object:
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(attr, property):
                out.append((name, "property"))
            elif inspect.isfunction(attr):
                out.append((name, "method"))
    return sorted(out)


class Tally:
    def __init__(self, name: str, device, sync=None):
        self.name, self.device, self.sync = name, device, sync or (lambda: None)
        self.works: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.not_emulated: list[tuple[str, str]] = []

    def run(self, name: str, fn) -> None:
        why = _reason(self.name, name)
        if why is not None:
            self.not_emulated.append((name, why))
            return
        self.sync()
        drain(self.device)
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - counted
            self.failed.append((name, f"{type(exc).__name__}: {str(exc)[:90]}"))
            self.sync()
            drain(self.device)
            return
        self.sync()  # a round trip: every write of the call has been handled
        errs = drain(self.device)
        if errs:
            self.failed.append((name, f"instrument queued {errs[:2]}"))
        else:
            self.works.append(name)


def exercise_pymeasure(t: Tally, obj, prefix: str, stop, calls: dict, skip: set) -> None:
    for name, kind in pymeasure_members(obj, stop):
        full = prefix + name
        if full in skip or name in skip:
            continue
        if full in calls:
            t.run(full, calls[full])
        elif kind == "property":
            def rw(name=name):
                value = getattr(obj, name)
                prop = getattr(type(obj), name)
                if prop.fset is not None and not isinstance(value, (list, np.ndarray, dict)):
                    try:
                        setattr(obj, name, value)
                    except LookupError as exc:  # PyMeasure's read-only measurement
                        if "can not be set" not in str(exc):
                            raise
            t.run(full, rw)
        else:
            fn = getattr(obj, name)
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD]
            if params:
                t.not_emulated.append((full, "needs arguments: not in this script's call list"))
                continue
            t.run(full, fn)


# ------------------------------------------------------------------ per driver


def cover_pymeasure_k2400(addr, emu, chip) -> Tally:
    from pymeasure.instruments import Instrument
    from pymeasure.instruments.keithley import Keithley2400

    k = Keithley2400(addr, visa_library="@py", read_termination="\n", write_termination="\n")
    t = Tally("pm-k2400", emu, lambda: k.ask("*OPC?"))
    k.reset()
    k.apply_voltage(compliance_current=5e-6)
    k.enable_source()
    k.source_voltage = 1.5
    calls = {
        "apply_current": lambda: (k.apply_current(compliance_voltage=2.5), k.apply_voltage(compliance_current=5e-6)),
        "apply_voltage": lambda: k.apply_voltage(compliance_current=5e-6),
        "ramp_to_current": lambda: (k.apply_current(compliance_voltage=2.5), k.enable_source(),
                                    k.ramp_to_current(1e-8, steps=3, pause=0), k.apply_voltage(compliance_current=5e-6),
                                    k.enable_source()),
        "ramp_to_voltage": lambda: k.ramp_to_voltage(1.5, steps=3, pause=0),
        "measure_current": lambda: k.measure_current(),
        "measure_voltage": lambda: (k.measure_voltage(), k.measure_current()),
        "measure_resistance": lambda: (k.measure_resistance(), k.measure_current()),
        "config_buffer": lambda: k.config_buffer(points=5),
        "start_buffer": lambda: (k.config_buffer(points=5), k.start_buffer()),
        "wait_for_buffer": lambda: (k.config_buffer(points=5), k.start_buffer(), k.wait_for_buffer(timeout=2)),
        "beep": lambda: k.beep(440, 0.05),
        "triad": lambda: k.triad(440, 0.05),
        "set_trigger_counts": lambda: k.set_trigger_counts(1, 1),
        "set_timed_arm": lambda: (k.set_timed_arm(0.01), k.trigger_immediately()),
        "output_trigger_on_external": lambda: k.output_trigger_on_external(line=2),
        "trigger_on_external": lambda: (k.trigger_on_external(line=1), k.trigger_immediately()),
        "shutdown": lambda: (k.shutdown(), k.enable_source()),
        "sample_continuously": lambda: (k.sample_continuously(), k.trigger_immediately()),
        "buffer_data": lambda: (k.config_buffer(points=3), k.start_buffer(), k.buffer_data),
        "means": lambda: (k.config_buffer(points=3), k.start_buffer(), k.means),
        "maximums": lambda: k.maximums, "minimums": lambda: k.minimums, "standard_devs": lambda: k.standard_devs,
        "error": lambda: k.error,
        # deprecated alias whose getter reads the 2400's 0/1 but whose setter wants ON/OFF
        "filter_state": lambda: (k.filter_state, setattr(k, "filter_state", "OFF")),
    }
    for stat in ("mean", "max", "min", "std"):
        for q in ("voltage", "current", "resistance"):
            calls[f"{stat}_{q}"] = (lambda stat=stat, q=q: getattr(k, f"{stat}_{q}"))
    exercise_pymeasure(t, k, "", {Instrument, *Instrument.__mro__}, calls, {"adapter", "name", "shutdown_"})
    k.shutdown()
    k.adapter.close()
    return t


def cover_qcodes_k2400(addr, emu, chip) -> Tally:
    from qcodes.instrument_drivers.Keithley import Keithley2400

    k = Keithley2400("cov_smu", addr, visalib="@py", terminator="\n")
    t = Tally("qc-k2400", emu, lambda: k.ask("*OPC?"))
    t.run("reset", k.reset)
    k.compliancei(5e-6)
    k.output(True)
    for name, p in k.parameters.items():
        if name == "IDN":
            t.run("IDN", p.get)
            continue

        def rw(p=p, name=name):
            if name == "sense":  # QCoDeS quotes what it reads back a second time: set a name
                p.get(), p.set("CURR")
                return
            if name == "mode":
                p.set("CURR"), k.compliancev(2.5), k.curr(1e-8), p.set("VOLT"), k.volt(1.5)
                return
            value = p.get()
            if p.settable:
                p.set(value)
        t.run(name, rw)
    k.output(False)
    k.close()
    return t


def cover_pymeasure_ls(addr, emu, chip) -> Tally:
    from pymeasure.instruments import Channel, Instrument
    from pymeasure.instruments.lakeshore import LakeShore3xx

    ls = LakeShore3xx(addr, visa_library="@py")
    t = Tally("pm-ls", emu, lambda: ls.ask("*OPC?"))
    ls.output_1.setpoint = 300.0
    ls.output_2.setpoint = 300.0
    stop = {Instrument, Channel, *Instrument.__mro__, *Channel.__mro__}
    skip = {f"input_{c}" for c in ("A", "B", "C", "D")} | {f"output_{n}" for n in (1, 2, 3, 4)}
    def reset():  # *RST puts the set points to 0 K, which the chip stage refuses: set them again
        ls.reset()
        ls.output_1.setpoint = ls.output_2.setpoint = 300.0
    exercise_pymeasure(t, ls, "", stop, {"reset": reset, "options": lambda: ls.options, "next_error": lambda: ls.next_error,
                                         "check_errors": ls.check_errors}, skip)
    for c in ("A", "B", "C", "D"):
        ch = getattr(ls, f"input_{c}")
        calls = {f"input_{c}.wait_for_temperature": (lambda ch=ch: (
            ls.output_1.__setattr__("setpoint", 305), ls.output_1.__setattr__("range", "low"),
            ch.wait_for_temperature(305, accuracy=0.05, interval=0.02, timeout=5),
            ls.output_1.__setattr__("range", "off"))) if c == "A" else (lambda: None),
            f"input_{c}.celcius": (lambda ch=ch: ch.celsius)}
        exercise_pymeasure(t, ch, f"input_{c}.", stop, calls, set())
    for n in (1, 2, 3, 4):
        exercise_pymeasure(t, getattr(ls, f"output_{n}"), f"output_{n}.", stop, {}, set())
    for name in ("C1", "C2", "C3", "C4", "D1", "D2", "D3", "D4", "D5"):
        t.run(f"input_{name}", lambda: None)
    ls.adapter.close()
    return t


def cover_qcodes_ls(addr, emu, chip) -> Tally:
    from qcodes.instrument_drivers.Lakeshore import LakeshoreModel336

    ls = LakeshoreModel336("cov_ls", addr, visalib="@py")
    t = Tally("qc-ls", emu, lambda: ls.ask("*OPC?"))
    ls.output_1.setpoint(300.0)
    ls.output_2.setpoint(300.0)

    def walk(module, prefix):
        for name, p in module.parameters.items():
            full = prefix + name

            def rw(p=p, name=name):
                if name in ("blocking_t",):
                    return
                if name == "range_limits":
                    p.set([250.0, 350.0, 400.0])
                    return
                value = p.get()
                if name == "range" and isinstance(value, str):  # QCoDeS leaves INTYPE's range a str
                    value = int(value)
                if p.settable and value is not None:
                    try:
                        p.set(value)
                    except RuntimeError as exc:  # a read-only group (CRVHDR?)
                        if "no `set_cmd`" not in str(exc):
                            raise
            t.run(full, rw)
        for sub_name, sub in module.submodules.items():
            if sub_name == "channels":
                continue
            walk(sub, prefix + sub_name + ".")

    walk(ls, "")
    h = ls.output_1

    def loop():
        h.mode("closed_loop"), h.input_channel("A"), h.output_range("low"), h.setpoint(304.0)
        h.wait_cycle_time(0.02), h.wait_tolerance(0.001), h.wait_equilibration_time(0.1)
        h.wait_until_set_point_reached()
    t.run("output_1.wait_until_set_point_reached", loop)
    t.run("output_1.set_range_from_temperature", lambda: h.set_range_from_temperature(305.0))
    t.run("output_1.set_setpoint_and_range", lambda: h.set_setpoint_and_range(305.0))
    h.output_range("off")
    ls.close()
    return t


def cover_pymeasure_dso(addr, emu, chip) -> Tally:
    from pymeasure.instruments import Instrument
    from pymeasure.instruments.keysight import KeysightDSOX1102G
    from pymeasure.instruments.keysight.keysightDSOX1102G import Channel as DsoChannel

    s = KeysightDSOX1102G(addr, visa_library="@py", read_termination="\n", write_termination="\n")
    t = Tally("pm-dso", emu, lambda: s.ask("*OPC?"))
    T = chip.settings.integration_time_s

    def acquire():
        s.write(":TRIG:SWE NORM;:TRIG:EDGE:SOUR EXT")
        s.single()
        s.ask("*OPC?")
        chip.vmm(np.full((1, 16), T / 2))

    calls = {
        "digitize": lambda: (s.digitize("channel1"), s.ask("*OPC?"), chip.vmm(np.full((1, 16), T / 2))),
        "download_data": lambda: (acquire(), s.download_data("channel1", points=1000)),
        "waveform_data": lambda: (acquire(), s.waveform_data),
        "waveform_preamble": lambda: s.waveform_preamble,
        "timebase_setup": lambda: s.timebase_setup(mode="main", offset=0.0, horizontal_range=2e-6),
        "ch": lambda: s.ch(1),
        "download_image": lambda: s.download_image(),
        "system_setup": lambda: s.system_setup,
    }
    stop = {Instrument, *Instrument.__mro__}
    exercise_pymeasure(t, s, "", stop, calls, {"ch1", "ch2"})
    for n in (1, 2):
        ch = getattr(s, f"ch{n}")
        chcalls = {f"ch{n}.setup": (lambda ch=ch: ch.setup(coupling="dc", display=True, offset=0.4, scale=0.1,
                                                           label="bl")),
                   f"ch{n}.ask": (lambda ch=ch: ch.ask("SCALe?")), f"ch{n}.values": (lambda ch=ch: ch.values("OFFSet?")),
                   f"ch{n}.write": (lambda ch=ch: ch.write("BWLimit 0"))}
        exercise_pymeasure(t, ch, f"ch{n}.", {DsoChannel.__mro__[-1]}, chcalls, {"instrument", "number"})
    s.adapter.close()
    return t


# ------------------------------------------------------------------ robustness


def _probe(port: int, query: bytes, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"\n" + query + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    return False
                data += chunk
            return True
    except OSError:
        return False


def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def robustness(servers: dict, emus: dict, n_random: int, n_mb: int) -> dict:
    crashes = []
    previous = threading.excepthook
    threading.excepthook = lambda args: crashes.append(repr(args.exc_value))
    rng = np.random.default_rng(1)
    hangs = 0
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    try:
        for role, server in servers.items():
            port = server.port
            probe = b"*IDN?"
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for _ in range(n_random):
                    s.sendall(rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes())
            hangs += not _probe(port, probe)
            for _ in range(n_mb):  # 1 MB lines without a terminator
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(rng.integers(32, 127, 1 << 20, dtype=np.uint8).tobytes())
                    hangs += not _probe(port, probe)
            done = []

            def client(i):
                ok = True
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    for _ in range(4):
                        c.sendall(probe + b"\n")
                        data = b""
                        while not data.endswith(b"\n"):
                            chunk = c.recv(4096)
                            if not chunk:
                                ok = False
                                break
                            data += chunk
                done.append(ok)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=10)
            hangs += 50 - sum(done)
            for _ in range(50):  # abrupt resets in the middle of a command
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.sendall(b":SOUR:LIST:VOLT 1,2,")
                s.close()
            hangs += not _probe(port, probe)
            with emus[role].lock:
                emus[role].errors.clear()
    finally:
        threading.excepthook = previous
    time.sleep(0.2)
    return {"crashes": len(crashes), "hangs": hangs, "rss_growth_mib": _rss_mib() - rss0,
            "random_strings": n_random * len(servers), "mb_lines": n_mb * len(servers),
            "concurrent": 50, "resets": 50 * len(servers), "seconds": time.perf_counter() - t0,
            "clients_left": sum(s.clients for s in servers.values())}


# ------------------------------------------------------------------ main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller robustness run")
    args = ap.parse_args(argv)
    chip, emus, servers = make_bench()
    results = {}
    try:
        for key, fn, role in (("PyMeasure Keithley2400", cover_pymeasure_k2400, "smu"),
                              ("QCoDeS Keithley2400", cover_qcodes_k2400, "smu"),
                              ("PyMeasure LakeShore3xx (336)", cover_pymeasure_ls, "tempctl"),
                              ("QCoDeS LakeshoreModel336", cover_qcodes_ls, "tempctl"),
                              ("PyMeasure KeysightDSOX1102G", cover_pymeasure_dso, "scope")):
            emus[role].reset()
            results[key] = fn(servers[role].resource, emus[role], chip)
        print(f"{'driver':32s} {'calls':>5s} {'work':>5s} {'fail':>5s} {'not emulated':>12s}")
        for key, t in results.items():
            total = len(t.works) + len(t.failed) + len(t.not_emulated)
            print(f"{key:32s} {total:5d} {len(t.works):5d} {len(t.failed):5d} {len(t.not_emulated):12d}")
        for key, t in results.items():
            for name, why in t.failed:
                print(f"  FAIL {key}: {name}: {why}")
            for name, why in t.not_emulated:
                print(f"  not emulated {key}: {name}: {why}")
        rob = robustness(servers, emus, 300 if args.quick else 2000, 1 if args.quick else 3)
        print("robustness: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in rob.items()))
    finally:
        for s in servers.values():
            s.stop()
        try:
            from qcodes.instrument import Instrument

            Instrument.close_all()
        except Exception:
            pass
    return {"drivers": {k: (len(t.works), len(t.failed), len(t.not_emulated)) for k, t in results.items()},
            "robustness": rob}


if __name__ == "__main__":
    main()
