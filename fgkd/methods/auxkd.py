from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..losses import kd_loss
from .base import FrozenNetworks, StepOutput


class AuxKD(nn.Module):
    """Multi-teacher KD through auxiliary heads: head i imitates teacher i.

    total = CE(main) + sum_i [alpha * KD(aux_i, teacher_i; T) + (1 - alpha) * CE(aux_i)].
    With one teacher this is single-teacher KD through one auxiliary head.
    """

    def __init__(self, model: nn.Module, teachers: FrozenNetworks, temperature: float, alpha: float):
        super().__init__()
        self.model, self.teachers, self.temperature, self.alpha = model, teachers, temperature, alpha

    @classmethod
    def from_config(cls, model: nn.Module, teachers: FrozenNetworks, config) -> AuxKD:
        return cls(model, teachers, config.kd_temperature, config.kd_alpha)

    def forward(self, images, labels) -> StepOutput:
        teacher_logits = self.teachers.map(images, lambda net, x: net(x))
        logits, aux_logits = self.model(images)
        kd = sum(kd_loss(a, t, self.temperature) for a, t in zip(aux_logits, teacher_logits))
        aux_ce = sum(F.cross_entropy(a, labels) for a in aux_logits)
        return StepOutput(logits, {"ce": F.cross_entropy(logits, labels), "kd": self.alpha * kd,
                                   "aux_ce": (1 - self.alpha) * aux_ce})
