"""Run one CLI case in a forked child and classify what happened.

The child records every call that reaches a raw backend (reads, pulses, erases, VMMs,
configuration, capabilities) by wrapping each backend as SafeArray opens it, so a
refusal that came after the chip was touched is seen. The parent enforces a timeout
(a hang) and reads the exit code and stderr.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from dataclasses import dataclass, field

TOUCHING = ("configure", "read_currents", "program_pulses", "erase_rows", "vmm",
            "set_temperature_k", "advance_time_s", "id_vg", "capture_bitline")


@dataclass
class Case:
    """``labkit ARGV`` must end with one of ``codes`` and a one-line error; ``touch``:
    whether the chip may be accessed before the refusal (a result error after work)."""

    name: str
    argv: list[str]
    codes: tuple[int, ...] = (2,)
    touch: bool = False
    kind: str = ""  # the command or file format the case attacks


@dataclass
class Outcome:
    case: Case
    code: int | None
    stderr: str
    touched: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        if self.code is None:
            return "hang"
        if "Traceback" in self.stderr:
            return "traceback"
        if self.code == 0:
            return "wrong acceptance"
        if self.code not in self.case.codes:
            return f"exit {self.code}"
        lines = self.stderr.strip().splitlines()  # progress lines may come first
        errors = [k for k, line in enumerate(lines) if ": error: " in line]
        if len(errors) != 1 or errors[0] != len(lines) - 1:
            return "multi-line"
        if self.touched and not self.case.touch:
            return "touched first"
        return "ok"


def _child(case: Case, wfd: int) -> None:
    import io

    try:
        from labkit.backend import safety
    except ImportError:  # the layout before the Seams issue (for before/after figures)
        from labkit import backend as safety

    touched: list[str] = []
    original = safety.SafeArray.__init__

    def recording_init(self, inner):
        for name in TOUCHING:
            method = getattr(inner, name, None)
            if callable(method):
                def wrapped(*a, _m=method, _n=name, **k):
                    touched.append(_n)
                    return _m(*a, **k)
                try:
                    setattr(inner, name, wrapped)
                except AttributeError:
                    pass
        original(self, inner)

    safety.SafeArray.__init__ = recording_init
    err = io.StringIO()
    sys.stderr = err
    sys.stdout = io.StringIO()
    code = 1
    try:
        from labkit.cli import main

        code = main(case.argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc(file=err)
        code = 1
    os.write(wfd, json.dumps({"code": code, "stderr": err.getvalue()[-4000:],
                              "touched": sorted(set(touched))}).encode())
    os.close(wfd)
    os._exit(0)


def run_case(case: Case, timeout_s: float = 60.0, cwd: str | None = None) -> Outcome:
    """Run ``case`` in a forked child (labkit already imported in the parent)."""
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        if cwd:
            os.chdir(cwd)
        try:
            _child(case, w)
        finally:
            os._exit(1)
    os.close(w)
    data = b""
    deadline = t0 + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return Outcome(case, None, "", seconds=timeout_s)
        ready, _, _ = select.select([r], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    took = time.monotonic() - t0
    if not data:
        return Outcome(case, 1, "Traceback: the child died without a report", seconds=took)
    rep = json.loads(data)
    return Outcome(case, rep["code"], rep["stderr"], rep["touched"], took)
