"""The run store: every bench run in one SQLite file (see :mod:`labkit.store.runstore`
for crash safety and the locking model).

Modules: :mod:`~labkit.store.runstore` (RunStore), :mod:`~labkit.store.run` (Run, the
writer), :mod:`~labkit.store.loaded` (LoadedRun, the reader), :mod:`~labkit.store.schema`,
:mod:`~labkit.store.encoding` (arrays and JSON), :mod:`~labkit.store.connection`
(opening, the write lock, errors), :mod:`~labkit.store.locking` (who holds the lock),
:mod:`~labkit.store.signals`, :mod:`~labkit.store.liveness` (heartbeats, the flusher),
:mod:`~labkit.store.hdf5` (export).
"""

from labkit.store.connection import LOCK_WAIT_S, StoreError, StoreLockedError
from labkit.store.liveness import HEARTBEAT_S, STALE_AFTER_S
from labkit.store.loaded import LoadedRun
from labkit.store.locking import LockHolder, write_lock_holder
from labkit.store.run import Run
from labkit.store.runstore import DEFAULT_FILENAME, ENV_VAR, RunStore, default_store_path
from labkit.store.schema import SCHEMA_VERSION
from labkit.store.signals import sigterm_as_keyboard_interrupt

__all__ = ["RunStore", "Run", "LoadedRun", "StoreError", "StoreLockedError", "default_store_path",
           "sigterm_as_keyboard_interrupt", "LOCK_WAIT_S", "HEARTBEAT_S", "STALE_AFTER_S",
           "SCHEMA_VERSION", "DEFAULT_FILENAME", "ENV_VAR", "LockHolder", "write_lock_holder"]
