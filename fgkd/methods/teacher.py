from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import StepOutput


class CrossEntropy(nn.Module):
    """The teacher (and any plain baseline): cross-entropy only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, labels) -> StepOutput:
        logits = self.model(images)
        return StepOutput(logits, {"ce": F.cross_entropy(logits, labels)})
