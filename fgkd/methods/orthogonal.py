from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..losses import (attention_energy, normalise_attention, or_loss_from_maps, or_reference_maps, orthogonal_loss,
                      spatial_attention)
from .base import FrozenNetworks, StepOutput

VARIANTS = ("or", "at")


class OrthogonalStudent(nn.Module):
    """Student k: cross-entropy plus a penalty for attending where the frozen earlier networks attend.

    ``or`` (default): the official OR loss, re-weighted every step to ``weight`` x CE (adaptive p).
    ``at``: the AT-orthogonal loss with the fixed weight lambda = ``weight``.
    """

    def __init__(self, model: nn.Module, earlier: FrozenNetworks, variant: str = "or", weight: float = 0.1):
        super().__init__()
        self.model, self.earlier, self.variant, self.weight = model, earlier, variant, weight

    def forward(self, images, labels) -> StepOutput:
        if self.weight == 0 or len(self.earlier) == 0:
            logits = self.model(images)
            return StepOutput(logits, {"ce": F.cross_entropy(logits, labels)})
        reference = or_reference_maps if self.variant == "or" else attention_energy
        earlier = self.earlier.map(images, lambda net, x: reference(net.attention_only(x)))
        logits = self.model(images)
        ce = F.cross_entropy(logits, labels)
        features = self.model.attention_features
        if self.variant == "or":
            raw = or_loss_from_maps(features, earlier)
            weighted = self.weight * ce.detach() / raw.detach().clamp_min(1e-12) * raw
        else:
            size = features.shape[-2:]
            raw = orthogonal_loss(spatial_attention(features, size), [normalise_attention(e, size) for e in earlier])
            weighted = self.weight * raw
        return StepOutput(logits, {"ce": ce, "orth": weighted}, {"orth_raw": raw.detach()})
