from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import FrozenNetworks, StepOutput


class CrossEntropy(nn.Module):
    """The teacher (and any plain baseline): cross-entropy only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @classmethod
    def from_config(cls, model: nn.Module, frozen: FrozenNetworks, config) -> CrossEntropy:
        return cls(model)

    def forward(self, images, labels) -> StepOutput:
        logits = self.model(images)
        return StepOutput(logits, {"ce": F.cross_entropy(logits, labels)})
