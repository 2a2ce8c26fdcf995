"""Signal handling around the run store: SIGTERM as Ctrl-C, and signals held back while
a commit or a run's end is written (so an interrupt never splits a transaction)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["signals_deferred", "sigterm_as_keyboard_interrupt"]


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back (main thread only) for the block; they arrive after it."""
    block = {signal.SIGINT, signal.SIGTERM}
    can = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    if can:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, block)
    try:
        yield
    finally:
        if can:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt('SIGTERM')`` in the main
    thread, so a ``with store.run(...)`` block marks the run ``aborted`` on ``kill``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def block_in_this_thread() -> None:
    """Keep SIGINT/SIGTERM away from the calling (background) thread: they belong to main."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
