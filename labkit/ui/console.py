"""Terminal output of a command: progress bars with ETA and tables, drawn by ``rich``.

Progress always goes to stderr (so ``--json`` output on stdout stays one object). On a
terminal it is a live bar with the elapsed time and ETA; elsewhere (a log file, CI)
each task prints one final line with its count and duration.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

import rich.box
import rich.console
import rich.progress
import rich.table
import rich.text


_HEADER_RULE = rich.box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)  # dashes under the header


class Progress:
    """A progress bar: ``with out.progress("programming", total=256) as bar: bar.advance(n)``."""

    def __init__(self, label: str, total: int, console: rich.console.Console, interactive: bool):
        self.label, self.total = label, max(int(total), 1)
        self.done, self.status = 0, ""
        self._console, self._t0 = console, time.monotonic()
        self._bar = rich.progress.Progress(
            rich.progress.TextColumn("{task.description:<22}"), rich.progress.BarColumn(),
            rich.progress.MofNCompleteColumn(), rich.progress.TimeElapsedColumn(),
            rich.progress.TextColumn("eta"), rich.progress.TimeRemainingColumn(),
            rich.progress.TextColumn("{task.fields[status]}"),
            console=console, transient=False) if interactive else None
        self._task = None

    def advance(self, n: int = 1, status: str = "") -> None:
        """Count ``n`` more items done; ``status`` replaces the text after the bar."""
        self.done = min(self.done + n, self.total)
        self.status = status or self.status
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, status=self.status)

    def __enter__(self) -> "Progress":
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, status="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            took = time.monotonic() - self._t0
            self._console.print(f"{self.label}: {self.done}/{self.total} in {took:.1f} s {self.status}".rstrip(),
                                highlight=False, markup=False)


class Console:
    """Human-facing output of a command; ``quiet`` under ``--json``."""

    def __init__(self, quiet: bool = False, stdout=None, stderr=None):
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.interactive = bool(getattr(self.stderr, "isatty", lambda: False)())
        self._err = rich.console.Console(file=self.stderr, highlight=False, soft_wrap=True)
        self._out = rich.console.Console(file=self.stdout, highlight=False, width=1000)

    def print(self, *parts) -> None:
        """A line on stdout (suppressed under --json)."""
        if not self.quiet:
            print(*parts, file=self.stdout)

    def info(self, message: str) -> None:
        """A status line on stderr (shown under --json too, never on stdout)."""
        print(message, file=self.stderr)

    def progress(self, label: str, total: int) -> Progress:
        """A progress bar on stderr for ``total`` items."""
        return Progress(label, total, self._err, interactive=self.interactive)

    def table(self, rows: Sequence[Sequence[object]], header: Sequence[str] | None = None) -> None:
        """An aligned text table on stdout."""
        if self.quiet or not rows and not header:
            return
        t = rich.table.Table(box=_HEADER_RULE, show_header=bool(header), show_edge=False,
                             pad_edge=False, header_style="", safe_box=True)
        for k in range(len(header) if header else len(rows[0])):
            t.add_column(rich.text.Text(str(header[k])) if header else "", no_wrap=True)
        for r in rows:
            t.add_row(*(rich.text.Text(str(c)) for c in r))
        with self._out.capture() as cap:
            self._out.print(t)
        print("\n".join(line.rstrip() for line in cap.get().splitlines()), file=self.stdout)
