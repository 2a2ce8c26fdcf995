"""labkit: hardware-in-the-loop toolkit for time-domain analog floating-gate VMM chips."""

from labkit.backend import (
    chip_uris,
    open_chips,
    ArrayBackend,
    BackendError,
    Datasheet,
    Geometry,
    Identity,
    SafeArray,
    SafetyEnvelope,
    SafetyError,
    VmmSettings,
    open_backend,
    register_scheme,
)
from labkit.units import Q_, ureg

__version__ = "0.1.0"

__all__ = [
    "ArrayBackend", "BackendError", "Datasheet", "Geometry", "Identity", "SafeArray",
    "SafetyEnvelope", "SafetyError", "VmmSettings", "open_backend", "open_chips", "chip_uris", "register_scheme",
    "Q_", "ureg", "__version__",
]
