"""The backend seam: the ArrayBackend contract, the one safety choke point, the registry.

- :mod:`~labkit.backend.contract`: the ArrayBackend protocol, its value types and the
  optional capability protocols (SI units throughout).
- :mod:`~labkit.backend.safety`: :class:`SafeArray`, which checks every primitive, and
  :mod:`~labkit.backend.guards`, which check every capability, against the envelope.
- :mod:`~labkit.backend.registry`: opening backends by URI through entry points.
"""

from labkit.backend.contract import (
    ArrayBackend,
    Datasheet,
    GateSweep,
    Geometry,
    Identity,
    SafetyEnvelope,
    TemperatureControl,
    VirtualClock,
    VmmSettings,
    WaveformCapture,
)
from labkit.backend.registry import chip_uris, open_backend, open_chips, parse_uri, register_scheme, schemes
from labkit.backend.safety import SafeArray
from labkit.errors import BackendError, SafetyError

__all__ = [
    "ArrayBackend", "BackendError", "Datasheet", "GateSweep", "Geometry", "Identity", "SafeArray",
    "SafetyEnvelope", "SafetyError", "TemperatureControl", "VirtualClock", "VmmSettings", "WaveformCapture",
    "chip_uris", "open_backend", "open_chips", "parse_uri", "register_scheme", "schemes",
]
