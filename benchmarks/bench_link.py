"""Test-board link: framing efficiency, full-stack VMM throughput, paced-link utilisation.

Figures:
- framing efficiency of a full VMM batch frame (payload bytes / wire bytes), target >= 0.9;
- VMM throughput through the whole stack (TestBoard -> pyserial -> link -> firmware
  emulator -> emulated chip and back), vectors/s, over loopback TCP with the board in
  its own process, and over the in-process ``labkitemu://`` port; peer: the emulated chip
  alone (the upper bound the link can approach);
- with the link paced like a 921600-baud 8N1 UART, achieved VMM throughput as a share of
  what the baud rate allows (payload bytes only: 10 bits per byte, 32 bytes per vector in
  the busier direction), target >= 90 %;
- round-trip time of an empty PING over loopback TCP;
- the C reference firmware's host build on a pseudo-terminal: VMM throughput, PING
  round trip, and the conformance suite's verdict and run time against it and against
  the Python emulator.

Run: ``python benchmarks/bench_link.py``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import numpy as np

import simulator.serial_handler  # noqa: F401  (registers labkitemu://)
from drivers import protocol as p
from drivers.board import TestBoard
from simulator.emulated import chip_from_options
from simulator.process import serving

from run_all import print_table  # noqa: E402 (benchmarks/ is on sys.path when a bench runs)

BAUD = 921600
SEED = 0


@contextlib.contextmanager
def board_process(baud: float | None = None):
    """A board server in its own process (like a real board with its own CPU)."""
    cmd = [sys.executable, "-m", "simulator.board_server", "--seed", str(SEED)]
    if baud:
        cmd += ["--baud", str(baud)]
    with serving(cmd, "socket://", "board server") as url:
        yield url


@contextlib.contextmanager
def c_firmware_process():
    """The C reference firmware (host build, made here) serving a pty; yields its path."""
    from pathlib import Path

    fw = Path(__file__).resolve().parent.parent / "firmware"
    subprocess.run(["make", "-s", "-C", str(fw)], check=True)
    with serving([fw / "build" / "labkit-fw-host", "--stdin-ends"], "/dev/", "C firmware") as path:
        yield path


def widths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 257, (n, 16)) / 256
    x[rng.random(x.shape) < 0.4] = 0
    return x * 1e-6


def vmm_rate(url: str, n: int, repeat: int = 2, **kwargs) -> float:
    with TestBoard(url, **kwargs) as board:
        board.vmm(widths(600, 1))  # warm up (and fill caches)
        w = widths(n)
        best = 0.0
        for _ in range(repeat):  # best of `repeat`: the machine may be shared
            t0 = time.perf_counter()
            out = board.vmm(w)
            best = max(best, n / (time.perf_counter() - t0))
            assert out.shape == (n, 16)
        return best


def framing_efficiency() -> tuple[float, float, int]:
    per = p.vmm_batch_limit(8192, 16, 16)
    rng = np.random.default_rng(0)
    req = p.encode_vmm_request(rng.integers(0, 257, (per, 16)))
    rep = p.encode_vmm_reply(rng.integers(0, 1024, (per, 16)))
    eff_req = len(req) / len(p.request(1, p.Command.VMM, req))
    eff_rep = len(rep) / len(p.reply(1, p.Command.VMM, rep))
    return eff_req, eff_rep, per


def main(n_fast: int = 6000, n_paced: int = 12000) -> list[dict]:
    rows: list[dict] = []
    eff_req, eff_rep, per = framing_efficiency()
    rows.append(dict(name=f"framing efficiency, full VMM request frame ({per} vectors)", value=eff_req,
                     unit="ratio", target=">= 0.9", peer="-"))
    rows.append(dict(name=f"framing efficiency, full VMM reply frame ({per} vectors)", value=eff_rep,
                     unit="ratio", target=">= 0.9", peer="-"))

    chip = chip_from_options({"seed": str(SEED)})
    chip.vmm(widths(600, 1))
    w = widths(n_fast)
    chip_rate = 0.0
    for _ in range(3):  # the emulated chip alone, in batches of one full frame
        t0 = time.perf_counter()
        for k in range(0, n_fast, per):
            chip.vmm(w[k : k + per])
        chip_rate = max(chip_rate, n_fast / (time.perf_counter() - t0))

    with board_process() as url:
        tcp_rate = vmm_rate(url, n_fast)
        with TestBoard(url) as board:
            board.ping()
            t0 = time.perf_counter()
            for _ in range(200):
                board.ping()
            rtt = (time.perf_counter() - t0) / 200
    inproc_rate = vmm_rate(f"labkitemu://?seed={SEED}", n_fast)
    peer = f"chip alone {chip_rate:.0f}/s"
    rows.append(dict(name="VMM throughput, full stack, loopback TCP (board process)", value=tcp_rate,
                     unit="vec/s", target="-", peer=peer))
    rows.append(dict(name="VMM throughput, full stack, in-process labkitemu://", value=inproc_rate,
                     unit="vec/s", target="-", peer=peer))
    rows.append(dict(name="PING round trip, loopback TCP", value=rtt * 1e6, unit="us", target="-", peer="-"))

    allowed = BAUD / 10 / (2 * 16)  # 32 payload bytes per vector each way, 10 bits per byte
    with board_process(baud=BAUD) as url:
        paced_tcp = vmm_rate(url, n_paced, repeat=1, baudrate=BAUD)
    paced_inproc = vmm_rate(f"labkitemu://?seed={SEED}&baud={BAUD}", n_paced, repeat=1, baudrate=BAUD)
    rows.append(dict(name=f"paced {BAUD} Bd, TCP board process: achieved / allowed", value=paced_tcp / allowed,
                     unit="ratio", target=">= 0.9", peer=f"{paced_tcp:.0f} of {allowed:.0f} vec/s"))
    rows.append(dict(name=f"paced {BAUD} Bd, in-process: achieved / allowed", value=paced_inproc / allowed,
                     unit="ratio", target=">= 0.9", peer=f"{paced_inproc:.0f} of {allowed:.0f} vec/s"))

    from drivers.conformance import run_conformance

    with c_firmware_process() as pty:
        c_rate = vmm_rate(pty, n_fast)
        with TestBoard(pty) as board:
            t0 = time.perf_counter()
            for _ in range(200):
                board.ping()
            c_rtt = (time.perf_counter() - t0) / 200
        t0 = time.perf_counter()
        c_report = run_conformance(pty)
        c_conf_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    emu_report = run_conformance(f"labkitemu://?seed={SEED}")
    emu_conf_s = time.perf_counter() - t0
    rows.append(dict(name="VMM throughput, C reference firmware on a pty (1 kB frames)", value=c_rate,
                     unit="vec/s", target="-", peer=f"emulator over TCP {tcp_rate:.0f}/s"))
    rows.append(dict(name="PING round trip, C reference firmware on a pty", value=c_rtt * 1e6, unit="us",
                     target="-", peer=f"emulator over TCP {rtt * 1e6:.0f} us"))
    for who, rep, secs in (("C reference firmware", c_report, c_conf_s), ("Python emulator", emu_report, emu_conf_s)):
        ok = sum(c.ok is True for c in rep.checks)
        rows.append(dict(name=f"conformance suite, {who}: checks passed", value=ok, unit=f"of {len(rep.checks)}",
                         target="all", peer=f"{secs:.1f} s, failed: {', '.join(rep.failed) or 'none'}"))

    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
