"""A device process that prints its address on its first line and stops when its stdin
closes: the board server, the C firmware's host builds."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Iterator, Sequence


@contextlib.contextmanager
def serving(cmd: Sequence[str], prefix: str, what: str, **popen) -> Iterator[str]:
    """Start ``cmd``, yield the first line it prints (which must start with ``prefix``),
    and stop it on exit (stdin closed, killed after 5 s)."""
    proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen)
    try:
        line = proc.stdout.readline().strip()
        if not line.startswith(prefix):
            raise RuntimeError(f"{what} did not start: {line!r}")
        yield line
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
