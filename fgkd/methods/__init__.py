"""Training methods: each wraps the network being trained (and any frozen ones) and returns named losses.

The engine minimises the sum of ``StepOutput.losses``; ``extras`` are logged only.
"""

from .auxkd import AuxKD
from .base import FrozenNetworks, StepOutput
from .orthogonal import OrthogonalStudent
from .teacher import CrossEntropy

# The methods by `fgkd train --stage` (fgkd.stages.METHOD_STAGES, tested); each builds itself from the network, the
# frozen earlier networks and the stage's TrainConfig.
METHODS = {"teacher": CrossEntropy, "student": OrthogonalStudent, "auxkd": AuxKD}

__all__ = ["METHODS", "AuxKD", "CrossEntropy", "FrozenNetworks", "OrthogonalStudent", "StepOutput"]
