"""The CLI maps each kind of error to its exit code and one line (labkit.errors)."""

from __future__ import annotations

import pytest

from labkit import errors
from labkit.cli import main


@pytest.fixture
def failing_command(monkeypatch):
    """Make ``labkit info`` raise the given exception (the command's own code is not the point)."""
    from labkit.cli.commands import info

    def use(exc):
        def run(args, out):
            raise exc
        monkeypatch.setattr(info, "run", run)
    return use


@pytest.mark.parametrize("exc, code", [
    (errors.UsageError("--seed -1; expected an integer >= 0"), 2),
    (errors.SafetyError("program voltage_v=9 V is outside the allowed [0, 6.5] V"), 2),
    (ValueError("a plain value error from argument checks"), 2),
    (FileNotFoundError("no such file: w.npz"), 2),
    (errors.ResultError("12 of 256 cells failed"), 3),
    (errors.FitDivergedError("the model fit diverged"), 3),
    (errors.LinkError("no reply from socket://127.0.0.1:9\nafter 3 tries"), 4),
    (errors.InstrumentError("smu: -222 Data out of range"), 4),
])
def test_each_error_kind_has_its_exit_code_and_one_line(failing_command, capsys, exc, code):
    failing_command(exc)
    assert main(["info"]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("labkit info: error: ")


def test_a_bug_is_not_disguised_as_a_user_mistake(failing_command):
    failing_command(KeyError("a bug"))
    with pytest.raises(KeyError):
        main(["info"])


def test_sim_serve_comes_from_the_simulator_through_an_entry_point():
    from labkit.cli import command_modules

    mods = command_modules()
    assert mods["sim"].__name__ == "simulator.cli"
    assert all(m.__name__.startswith("labkit.cli.commands.") for n, m in mods.items() if n != "sim" and n != "board")
