"""Who holds the run store's write lock: the process behind a "database is locked".

SQLite in WAL mode (the unix VFS) takes its write lock as a POSIX ``fcntl`` lock on one
byte of the ``-shm`` file (offset :data:`WAL_WRITE_LOCK_BYTE`). ``F_GETLK`` on that byte
names the process that holds it (Linux ``struct flock`` layout; elsewhere the holder is
reported as unknown). A lock held by this process itself is not reported by
``F_GETLK``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

WAL_WRITE_LOCK_BYTE = 120  # WALINDEX_LOCK_OFFSET + WAL_WRITE_LOCK in SQLite's wal.c
_FLOCK = "hhqqi"  # Linux: l_type, l_whence, l_start, l_len, l_pid


@dataclass(frozen=True)
class LockHolder:
    """A process holding the write lock: ``pid``, its command line and state."""

    pid: int
    command: str
    stopped: bool

    def describe(self) -> str:
        state = ", stopped (Ctrl-Z or SIGSTOP: resume it with fg or kill -CONT)" if self.stopped else ""
        return f"pid {self.pid} ({self.command or 'command unknown'}{state})"


def _proc_text(pid: int, name: str) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/{name}").read_bytes()[:4096].decode("utf-8", "replace")
    return ""


def write_lock_holder(db_path: str | os.PathLike) -> LockHolder | None:
    """The other process holding the WAL write lock of the store at ``db_path``, or None
    (no holder, a holder in this process, or a platform where it cannot be asked)."""
    if not sys.platform.startswith("linux"):
        return None
    import fcntl

    try:
        fd = os.open(f"{os.fspath(db_path)}-shm", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, WAL_WRITE_LOCK_BYTE, 1, 0)
        l_type, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:
        return None
    finally:
        os.close(fd)
    if l_type == fcntl.F_UNLCK or pid <= 0:
        return None
    command = " ".join(_proc_text(pid, "cmdline").replace("\0", " ").split())  # one line
    if len(command) > 120:
        command = command[:117] + "..."
    stat = _proc_text(pid, "stat")
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return LockHolder(pid, command, state in (["T"], ["t"]))
