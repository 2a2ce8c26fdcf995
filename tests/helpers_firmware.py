"""The C reference firmware for tests: build it (any variant) and run its host build on a pty."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
STRICT = "-std=c99 -Wall -Wextra -Werror -pedantic"


def have_cc() -> bool:
    return shutil.which(os.environ.get("CC", "cc")) is not None and shutil.which("make") is not None


def build(out_dir: Path, variant: str = "", target: str = "all") -> subprocess.CompletedProcess:
    """``make`` the firmware into ``out_dir`` (warnings are errors); returns the run."""
    return subprocess.run(["make", "-C", str(FIRMWARE), f"BUILD={out_dir}", f"VARIANT={variant}", target],
                          capture_output=True, text=True, timeout=180)


@contextlib.contextmanager
def running(exe: Path, arm_timeout_ms: int = 300):
    """The host build serving its pty; yields the device path. Stopped on exit."""
    proc = subprocess.Popen([str(exe), "--arm-timeout-ms", str(arm_timeout_ms), "--stdin-ends"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        path = proc.stdout.readline().strip()
        if not path.startswith("/dev/"):
            raise RuntimeError(f"firmware host build did not start: {path!r}")
        yield path
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
