from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..losses import DISTILLATION_LOSSES
from .base import FrozenNetworks, StepOutput


class AuxKD(nn.Module):
    """Multi-teacher KD through auxiliary heads: head i imitates teacher i.

    total = CE(main) + sum_i [alpha * D(aux_i, teacher_i; T) + (1 - alpha) * CE(aux_i)], D the distillation loss
    named ``distillation`` in DISTILLATION_LOSSES (Hinton's KD by default), given its own ``options``.
    With one teacher this is single-teacher KD through one auxiliary head.
    """

    def __init__(self, model: nn.Module, teachers: FrozenNetworks, temperature: float, alpha: float,
                 distillation: str = "kd", options: dict[str, float] | None = None):
        super().__init__()
        self.model, self.teachers, self.temperature, self.alpha = model, teachers, temperature, alpha
        self.distillation, self.options = distillation, options or {}

    @classmethod
    def from_config(cls, model: nn.Module, teachers: FrozenNetworks, config) -> AuxKD:
        declared = DISTILLATION_LOSSES[config.kd_loss].options
        return cls(model, teachers, config.kd_temperature, config.kd_alpha, config.kd_loss,
                   {keyword: getattr(config, option) for option, keyword in declared.items()})

    def forward(self, images, labels) -> StepOutput:
        teacher_logits = self.teachers.map(images, lambda net, x: net(x))
        logits, aux_logits = self.model(images)
        distill = DISTILLATION_LOSSES[self.distillation].function
        kd = sum(distill(a, t, labels, self.temperature, **self.options) for a, t in zip(aux_logits, teacher_logits))
        aux_ce = sum(F.cross_entropy(a, labels) for a in aux_logits)
        return StepOutput(logits, {"ce": F.cross_entropy(logits, labels), "kd": self.alpha * kd,
                                   "aux_ce": (1 - self.alpha) * aux_ce})
