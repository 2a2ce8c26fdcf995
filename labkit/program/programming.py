"""Former home of program-and-verify, kept so that deployment's import keeps working
until it moves to ``from labkit.program import ...`` (the package's public API)."""

from labkit.program.config import ProgramConfig
from labkit.program.pipeline import program_array, program_weights, refresh

__all__ = ["ProgramConfig", "program_array", "program_weights", "refresh"]
