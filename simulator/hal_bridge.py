"""The emulated chip as the hardware layer of the C reference firmware.

``firmware/build/labkit-fw-bridge`` is the reference firmware's protocol core (the same
object that runs on an MCU) with a hardware layer (``firmware/host/hal_bridge.c``) that
sends every hardware call as one text line over a socket. :class:`HalBridge` answers
those lines with an :class:`~simulator.emulated.EmulatedArray`, so the chip behind the C
board is the emulated chip, and the backend contract suite can run over the C firmware.

``with serve(array, exe) as pty:`` starts the firmware process on a pseudo-terminal
bridged to ``array`` and yields the device path (a serial port for ``TestBoard``).
"""

from __future__ import annotations

import contextlib
import math
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np

from labkit.backend import ArrayBackend, VmmSettings

from .process import serving

FIRMWARE_VERSION = "labkit-ref-fw 1.0.0 (bridge)"


class HalBridge:
    """Answers the bridge HAL's requests with ``array`` (SI units on the line)."""

    def __init__(self, array: ArrayBackend):
        self.array = array
        self.calls = 0
        self.smu_cell: tuple[int, int] | None = None

    def describe(self) -> str:
        a, g, d, e = self.array, self.array.geometry, self.array.datasheet, self.array.envelope
        s = a.settings
        nums = [g.rows, g.cols, len(g.pairs), *[c for pair in g.pairs for c in pair],
                d.precharge_v, d.threshold_v, d.bitline_capacitance_f, d.reference_current_a,
                *d.cell_current_range_a, d.erased_current_a,
                e.max_program_voltage_v, e.max_erase_voltage_v, *e.program_width_range_s, *e.erase_width_range_s,
                *e.read_voltage_range_v, *e.integration_time_range_s, e.max_compliance_a,
                s.integration_time_s, s.read_voltage_v, s.input_bits, s.tdc_bits, s.tdc_lsb_s,
                int(a.temperature_k() is not None), 1]
        serial = f"BRIDGE-{a.identity.chip_id}"
        return " ".join(repr(float(v)) for v in nums) + f"\n{FIRMWARE_VERSION}\n{serial}\n{a.identity.chip_id}\n"

    def answer(self, line: str) -> str:
        self.calls += 1
        op, *args = line.split()
        a = self.array
        try:
            if op == "C":
                return self.describe()
            if op == "K":
                t, v, ib, tb, lsb = (float(x) for x in args)
                a.configure(VmmSettings(integration_time_s=t, read_voltage_v=v, input_bits=int(ib),
                                        tdc_bits=int(tb), tdc_lsb_s=lsb))
                return "0\n"
            if op == "R":
                r, c = (int(x) for x in args)
                return f"{float(a.read_currents(np.array([[r, c]]))[0])!r}\n"
            if op == "P":
                r, c, v, w = int(args[0]), int(args[1]), float(args[2]), float(args[3])
                a.program_pulses(np.array([[r, c]]), np.array([v]), np.array([w]))
                return "0\n"
            if op == "E":
                a.erase_rows(np.array([int(args[0])]), float(args[1]), float(args[2]))
                return "0\n"
            if op == "V":
                tick_s, ticks = float(args[0]), np.array([int(x) for x in args[1:]], float)
                s = a.settings
                times = np.asarray(a.vmm((ticks * tick_s)[None, :]), float)[0]
                counts = np.clip(np.rint(np.nan_to_num(times / s.tdc_lsb_s, nan=0xFFFF)), 0, 0xFFFF)
                return " ".join(str(int(c)) for c in counts) + "\n"
            if op == "S":
                r, c = (int(x) for x in args)
                self.smu_cell = None if r < 0 else (r, c)
                return "0\n"
            if op == "T":
                k = a.temperature_k()
                return f"{math.nan if k is None else float(k)!r}\n"
        except Exception:  # the chip refused: a hardware fault on the board
            return "1\n"
        return "1\n"

    def serve(self, sock: socket.socket) -> None:
        with sock, sock.makefile("rw", encoding="ascii", newline="\n") as f:
            for line in f:
                f.write(self.answer(line))
                f.flush()


@contextlib.contextmanager
def serve(array: ArrayBackend, exe: str | Path, arm_timeout_ms: int = 1000):
    """The bridged C firmware serving a pty over ``array``; yields the device path."""
    ours, theirs = socket.socketpair()
    bridge = HalBridge(array)
    thread = threading.Thread(target=bridge.serve, args=(ours,), name="hal-bridge", daemon=True)
    thread.start()
    try:
        with serving([exe, "--bridge-fd", theirs.fileno(), "--arm-timeout-ms", arm_timeout_ms, "--stdin-ends"],
                     "/dev/", "bridged firmware", pass_fds=(theirs.fileno(),)) as path:
            theirs.close()
            yield path
    finally:
        thread.join(2)
