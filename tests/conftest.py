"""Shared fixtures: the backend contract suite runs over every backend kind.

``array_factory(**switches)`` opens a fresh backend whose emulated chip has the given
non-idealities switched (for ``sim://`` through the URI query, for the virtual bench
through its chip options). ``--station PATH`` adds a real bench (hardware tests).
"""

from __future__ import annotations

import contextlib
import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# the tests hold the compiled kernels to the torch path: run them wherever they build
# (without this, a race at first use may pick the torch path on a slow kernel's CPU;
# tests/test_native_choice.py tests that choice)
os.environ.setdefault("LABKIT_NATIVE", "1")


def pytest_addoption(parser):
    parser.addoption("--station", default=None, metavar="PATH",
                     help="station file of a real bench: runs the tests marked 'hardware'")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--station"):
        return
    skip = pytest.mark.skip(reason="needs a real bench: pass --station PATH")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


def sim_uri(seed: int = 0, **switches) -> str:
    """A sim:// chip in the model's own form (``preset=model``) with ``switches`` changed."""
    query = "&".join([f"seed={seed}", "preset=model"] + [f"{k}={int(bool(v))}" for k, v in switches.items()])
    return f"sim://?{query}"


def _station_factory():
    """Opens backends on a virtual bench (a real loopback TCP + VISA stack)."""
    from tests.fixtures_bench import virtual_bench_backend  # written with the bench

    return virtual_bench_backend


BACKEND_KINDS = ["sim"]
if os.path.exists(os.path.join(os.path.dirname(__file__), "fixtures_bench.py")):
    BACKEND_KINDS.append("station")


@pytest.fixture(params=BACKEND_KINDS)
def array_factory(request):
    """``open(seed=0, **switches)`` -> SafeArray context; every one is closed after the test."""
    import labkit

    stack = contextlib.ExitStack()
    kind = request.param

    def open_array(seed: int = 0, **switches):
        if kind == "sim":
            return stack.enter_context(labkit.open_backend(sim_uri(seed, **switches)))
        return stack.enter_context(_station_factory()(seed=seed, **switches))

    open_array.kind = kind
    with stack:
        yield open_array


def chip_of(backend):
    """The hidden VirtualChip behind a backend (tests only)."""
    hidden = getattr(backend, "hidden_chip", None)  # set by the virtual-bench fixture
    return hidden if hidden is not None else backend.inner.chip
