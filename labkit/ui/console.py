"""Terminal output for long bench work: progress bars and tables on stderr/stdout.

Progress always goes to stderr (so ``--json`` output on stdout stays one object) and is
silent when stderr is not a terminal, except for a final line per task.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")


class Progress:
    """A progress bar: ``with out.progress("programming", total=256) as bar: bar.advance(n)``."""

    def __init__(self, label: str, total: int, stream, enabled: bool):
        self.label, self.total, self.stream, self.enabled = label, max(int(total), 1), stream, enabled
        self.done = 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self.status = ""

    def advance(self, n: int = 1, status: str = "") -> None:
        self.done = min(self.done + n, self.total)
        self.status = status or self.status
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        frac = self.done / self.total
        width = 28
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = time.monotonic() - self.t0
        eta = elapsed / frac - elapsed if 0 < frac < 1 else 0.0
        tail = f"{elapsed:5.1f}s" if final else f"eta {eta:5.1f}s"
        line = f"\r{self.label:<22} [{bar}] {self.done}/{self.total} {tail} {self.status}"
        self.stream.write(line[:120] + ("\n" if final else ""))
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._draw(final=True)


class Console:
    """Human-facing output of a command; ``quiet`` under ``--json``."""

    def __init__(self, quiet: bool = False, stdout=None, stderr=None):
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.interactive = bool(getattr(self.stderr, "isatty", lambda: False)())

    def print(self, *parts) -> None:
        if not self.quiet:
            print(*parts, file=self.stdout)

    def info(self, message: str) -> None:
        """A status line on stderr (shown under --json too, never on stdout)."""
        print(message, file=self.stderr)

    def progress(self, label: str, total: int) -> Progress:
        return Progress(label, total, self.stderr, enabled=self.interactive)

    def track(self, items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
        items = list(items) if total is None else items
        with self.progress(label, total if total is not None else len(items)) as bar:
            for item in items:
                yield item
                bar.advance()

    def table(self, rows: Sequence[Sequence[object]], header: Sequence[str] | None = None) -> None:
        """A plain aligned text table on stdout."""
        if self.quiet:
            return
        cells = [[str(c) for c in r] for r in ([header] if header else []) + list(rows)]
        widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
        for k, r in enumerate(cells):
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=self.stdout)
            if header and k == 0:
                print("  ".join("-" * w for w in widths), file=self.stdout)
