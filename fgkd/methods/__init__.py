"""Training methods: each wraps the network being trained (and any frozen ones) and returns named losses.

The engine minimises the sum of ``StepOutput.losses``; ``extras`` are logged only.
"""

from .auxkd import AuxKD
from .base import FrozenNetworks, StepOutput
from .orthogonal import OrthogonalStudent
from .teacher import CrossEntropy

__all__ = ["AuxKD", "CrossEntropy", "FrozenNetworks", "OrthogonalStudent", "StepOutput"]
