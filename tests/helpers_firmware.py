"""The C reference firmware for tests: build it (any variant) and run its host build on a pty."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from simulator.process import serving

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
    with serving([exe, "--arm-timeout-ms", arm_timeout_ms, "--stdin-ends"], "/dev/", "firmware host build") as path:
        yield path


def built(tmp_path_factory, exe: str) -> Path:
    """The host build ``exe`` (labkit-fw-host or labkit-fw-bridge) made in a fresh
    folder with warnings as errors; the test skips without a C compiler."""
    import pytest

    if not have_cc():
        pytest.skip("needs a C compiler and make")
    out = tmp_path_factory.mktemp("fw") / "build"
    run = build(out)
    assert run.returncode == 0, run.stderr
    return out / exe
