"""``labkitemu://`` for ``serial.serial_for_url``: see :mod:`simulator.serial_handler`."""

from simulator.serial_handler import Serial

__all__ = ["Serial"]
