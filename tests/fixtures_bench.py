"""The virtual bench for tests: real loopback TCP, the board protocol, pyvisa-py.

``virtual_bench_backend(seed, **switches)`` starts a :class:`simulator.bench.VirtualBench`
whose chip has the given non-idealities switched, writes its station file, opens
``station:FILE`` through ``labkit.open_backend`` and yields that SafeArray; everything
is stopped on exit. ``backend.hidden_chip`` (also ``backend.inner.emulated_chip``) and
``backend.bench`` give tests the hidden truth (never used by labkit).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest

import labkit
from simulator.bench import VirtualBench

#: The temperature controller's loop time constant in tests (s): the default is a
#: realistic 20 s, which would make every temperature step of a test take minutes.
FAST_THERMAL_S = 0.05


@contextlib.contextmanager
def virtual_bench_backend(seed: int = 0, *, faults=None, limits=None, instruments=("smu", "scope", "tempctl"),
                          board_timeout_s=None, thermal_time_constant_s=FAST_THERMAL_S, **switches):
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        station = Path(tmp) / "station.yaml"
        with VirtualBench(seed=seed, chip_options={"preset": "model", **switches}, faults=faults, limits=limits,
                          instruments=instruments, station_out=station,
                          board_timeout_s=board_timeout_s,
                          thermal_time_constant_s=thermal_time_constant_s) as bench:
            with labkit.open_backend(f"station:{station}") as backend:
                backend.hidden_chip = bench.chip  # what tests.conftest.chip_of looks for
                backend.inner.emulated_chip = bench.chip
                backend.bench = bench
                yield backend


@pytest.fixture
def virtual_bench(tmp_path):
    """A running virtual bench (quiet chip, seed 11) with its station file in tmp_path."""
    with VirtualBench(seed=11, chip_options={"noise": False, "program_noise": False},
                      station_out=tmp_path / "station.yaml", thermal_time_constant_s=FAST_THERMAL_S) as bench:
        yield bench
