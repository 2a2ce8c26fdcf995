"""A host process that programs a board until it is killed (tests of the board's safety).

``python -m tests.helpers_board_host station PATH``: opens ``station:PATH`` through
``labkit.open_backend`` (so SiliconBackend's signal handlers are in place), prints
``ready`` and programs one cell after another. ``python -m tests.helpers_board_host
board URL``: opens a TestBoard, arms it, prints ``armed`` and keeps sending PROGRAM
frames without ever disarming.
"""

from __future__ import annotations

import sys


def main(mode: str, where: str) -> None:
    if mode == "station":
        import labkit

        with labkit.open_backend(f"station:{where}") as chip:
            print("ready", flush=True)
            while True:
                chip.program_pulses([[0, 0]], 4.0, 1e-6)
    else:
        from drivers.board import TestBoard

        board = TestBoard(where)
        board.arm(True)
        print("armed", flush=True)
        while True:
            board.program_pulses([[1, 1]], 4.0, 1e-6)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
