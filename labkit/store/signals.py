"""Signal handling around the run store: SIGTERM as Ctrl-C, and signals held back while
a commit or a run's end is written (so an interrupt never splits a transaction)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

__all__ = ["signals_deferred", "sigterm_as_keyboard_interrupt"]


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the block (main thread only); they take effect after it.

    Blocking the signal mask is not enough: a process-directed signal may land on another
    thread, and Python then runs its handler in the main thread at once. So within the
    block the Python-level handlers only record the signal; on leaving, the old handlers
    are back and a recorded signal is delivered to them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):
            handler = old[s]
            if callable(handler):
                handler(s, None)  # e.g. default_int_handler: KeyboardInterrupt, here
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), s)


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
