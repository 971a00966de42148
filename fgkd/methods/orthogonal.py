from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FgkdError
from ..losses import at_loss_from_energies, attention_energy, or_loss_from_maps, or_reference_maps
from .base import FrozenNetworks, StepOutput


@dataclass(frozen=True)
class OrthogonalLoss:
    """One way of pushing student k's attention away from where the earlier networks attend."""

    # An earlier network's attention features -> what the penalty compares against (run once per step, frozen).
    reference: Callable[[torch.Tensor], torch.Tensor]
    # (the student's attention features, the earlier networks' references) -> the unweighted loss.
    penalty: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]
    # True: re-weighted every step to weight x CE (the official adaptive p); False: the fixed lambda = weight.
    adaptive: bool


# The students' orthogonal losses by name (TrainConfig.orth); the schema's orth enum is tested against it.
ORTHOGONAL_LOSSES = {
    "or": OrthogonalLoss(or_reference_maps, or_loss_from_maps, adaptive=True),  # the official OR loss
    "at": OrthogonalLoss(attention_energy, at_loss_from_energies, adaptive=False),  # attention transfer
}


class OrthogonalStudent(nn.Module):
    """Student k: cross-entropy plus a penalty for attending where the frozen earlier networks attend
    (``variant``: a name in ORTHOGONAL_LOSSES, weighted by ``weight``)."""

    def __init__(self, model: nn.Module, earlier: FrozenNetworks, variant: str, weight: float):
        super().__init__()
        self.model, self.earlier, self.variant, self.weight = model, earlier, variant, weight

    @classmethod
    def from_config(cls, model: nn.Module, earlier: FrozenNetworks, config) -> OrthogonalStudent:
        return cls(model, earlier, config.orth, config.orth_weight)

    def forward(self, images, labels) -> StepOutput:
        if self.weight == 0 or len(self.earlier) == 0:
            logits = self.model(images)
            return StepOutput(logits, {"ce": F.cross_entropy(logits, labels)})
        loss = ORTHOGONAL_LOSSES[self.variant]
        earlier = self.earlier.map(images, lambda net, x: loss.reference(net.attention_only(x)))
        logits = self.model(images)
        _check_map_sizes(self.variant, images, self.model.attention_features, earlier)
        ce = F.cross_entropy(logits, labels)
        raw = loss.penalty(self.model.attention_features, earlier)
        if loss.adaptive:
            weighted = self.weight * ce.detach() / raw.detach().clamp_min(1e-12) * raw
        else:
            weighted = self.weight * raw
        return StepOutput(logits, {"ce": ce, "orth": weighted}, {"orth_raw": raw.detach()})


def _check_map_sizes(variant: str, images: torch.Tensor, student: torch.Tensor, earlier: list[torch.Tensor]) -> None:
    """A 1 x 1 attention map has no "where": the OR loss's standardisation divides by a zero-sample std (NaN) and
    AT's normalised map is the constant 1 (no gradient, so the student silently trains with CE alone)."""
    named = [("the student's", student), *((f"--earlier model {k}'s", m) for k, m in enumerate(earlier, 1))]
    small = [f"{name} ({m.shape[-2]} x {m.shape[-1]})" for name, m in named if m.shape[-2] * m.shape[-1] < 2]
    if small:
        retrain = "; retrain the earlier models named the same way" if any("earlier" in s for s in small) else ""
        raise FgkdError(f"orth {variant}: attention maps of one position at {images.shape[-2]} x {images.shape[-1]} "
                        f"inputs: {', '.join(small)}; a penalty on where a network attends needs at least 2 positions: "
                        f"raise the crop or lower attention_stride{retrain}")
