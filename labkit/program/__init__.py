"""Program-and-verify: weights -> targets -> pulses on any ArrayBackend, and the chip-state record.

Modules by job: :mod:`~labkit.program.config` (the recipe, its checks, u-space),
:mod:`~labkit.program.planners` (what voltage each pulse gets),
:mod:`~labkit.program.job` (one array's program-and-verify loop, write-ahead record),
:mod:`~labkit.program.results` (ProgramResult), :mod:`~labkit.program.pipeline` (the one
weights -> targets -> program pipeline, and refresh), :mod:`~labkit.program.mapping`
(weights onto dual-branch currents), :mod:`~labkit.program.chipstate` and
:mod:`~labkit.program.statefile` (the chip-state file and its strict reader),
:mod:`~labkit.program.weightsfile` (the bounded weights-npz reader).
"""

from labkit.program.chipstate import ChipMismatchError, ChipState
from labkit.program.config import (MAX_PULSES, PRECISION_FLOOR, ProgramConfig, check_recipe, check_targets, from_u,
                                   to_u)
from labkit.program.job import ProgramJob
from labkit.program.mapping import (SCHEMES, WeightRangeError, WeightWindow, check_weights, map_weights, precision,
                                    unmap_currents)
from labkit.program.pipeline import (WeightPlan, check_state_path, plan_weights, program_array, program_weights,
                                     read_conditions, refresh, weight_errors)
from labkit.program.planners import PLANNERS, AdaptivePlanner, IsppPlanner, Planner, make_planner
from labkit.program.results import FailedCellsError, ProgramResult
from labkit.program.weightsfile import load_weights

__all__ = ["MAX_PULSES", "AdaptivePlanner", "ChipMismatchError", "ChipState", "FailedCellsError", "IsppPlanner", "PLANNERS",
           "PRECISION_FLOOR", "Planner", "ProgramConfig", "ProgramJob", "ProgramResult", "SCHEMES", "WeightPlan",
           "WeightRangeError", "WeightWindow", "check_recipe", "check_state_path", "check_targets", "check_weights",
           "from_u", "load_weights", "make_planner", "map_weights", "plan_weights", "precision", "program_array",
           "program_weights", "read_conditions", "refresh", "to_u", "unmap_currents", "weight_errors"]
