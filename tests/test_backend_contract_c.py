"""The backend contract suite over the C reference firmware: ``station:`` backends whose
board is the C protocol core on a pty, its hardware layer bridged to the emulated chip
(``firmware/host/hal_bridge.c`` <-> :mod:`simulator.hal_bridge`)."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import yaml

import labkit
from simulator.emulated import EmulatedArray, chip_from_options
from simulator.hal_bridge import serve
from tests import helpers_firmware as hf
from tests.test_backend_contract import *  # noqa: F401,F403  (the contract tests, run here over array_factory below)

_n = itertools.count()


@pytest.fixture(scope="module")
def bridge_exe(tmp_path_factory):
    return hf.built(tmp_path_factory, "labkit-fw-bridge")


@pytest.fixture
def array_factory(bridge_exe, tmp_path):
    """``open(seed, **switches)``: station backend over the bridged C firmware."""
    stack = contextlib.ExitStack()

    def open_array(seed: int = 0, **switches):
        array = EmulatedArray(chip_from_options({"seed": str(seed), "preset": "model", **{k: str(int(bool(v))) for k, v in switches.items()}}))
        pty = stack.enter_context(serve(array, bridge_exe))
        station = tmp_path / f"station{next(_n)}.yaml"
        station.write_text(yaml.safe_dump({"name": "c-reference-firmware", "board": {"url": pty}, "instruments": {}}))
        backend = stack.enter_context(labkit.open_backend(f"station:{station}"))
        backend.hidden_chip = array.chip
        return backend

    open_array.kind = "c-firmware"
    with stack:
        yield open_array


def test_the_board_is_the_c_firmware(array_factory):
    b = array_factory(seed=1)
    assert b.identity.firmware.startswith("labkit-ref-fw") and b.identity.chip_id == "EMU-0001"
