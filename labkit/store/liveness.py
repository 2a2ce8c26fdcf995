"""Is a stored run still going? Heartbeats, the runs open in this process, and the
background flusher that commits due writes and refreshes heartbeats.

A run whose process died without finishing keeps ``running`` in the file; readers
*show* it as ``interrupted`` when its process is gone (same host) or its heartbeat is
older than :data:`STALE_AFTER_S` (other hosts). Units: seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
import time
import weakref

from labkit.store.signals import block_in_this_thread

STALE_AFTER_S = 120.0  # a 'running' run whose heartbeat is older is shown 'interrupted'
HEARTBEAT_S = 10.0  # how often an idle open run refreshes its heartbeat

# Runs open in this process: (resolved store path, run id). A 'running' run of this pid
# that is not in here was left behind (its Run object was never finished).
OPEN_RUNS: set[tuple[str, int]] = set()
STORES: "weakref.WeakSet" = weakref.WeakSet()  # open RunStores, flushed at exit


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def shown_status(status: str, host: str, pid: int, heartbeat: float | None, key: tuple[str, int]) -> str:
    """The status a reader shows for a stored one: ``interrupted`` for a dead ``running``
    run. ``key`` is (resolved store path, run id)."""
    if status != "running":
        return status
    if host == socket.gethostname():
        if pid == os.getpid():
            return "running" if key in OPEN_RUNS else "interrupted"
        return "running" if pid_alive(pid) else "interrupted"
    if heartbeat is not None and time.time() - heartbeat > STALE_AFTER_S:
        return "interrupted"
    return "running"


@atexit.register
def flush_all_at_exit() -> None:
    """Commit what every store of this process still holds (not in a forked child)."""
    for store in list(STORES):
        if store.owner_pid == os.getpid():  # in a forked child the connection is the parent's
            with contextlib.suppress(Exception):
                store.flush()


def start_flusher(store) -> threading.Thread:
    """A daemon thread calling ``store.tick()`` every ``min(commit_interval / 4, 0.25)`` s
    until ``store.stop_event`` is set or the store is garbage."""
    thread = threading.Thread(target=_flusher_loop, args=(weakref.ref(store),),
                              name=f"labkit-store-flusher:{store.path.name}", daemon=True)
    thread.start()
    return thread


def _flusher_loop(ref) -> None:
    block_in_this_thread()
    while True:
        store = ref()
        if store is None or store.stop_event.is_set():
            return
        period = min(store.commit_interval / 4, 0.25)
        stop = store.stop_event
        store.tick()
        del store
        if stop.wait(period):
            return
