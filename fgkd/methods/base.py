from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class StepOutput:
    logits: torch.Tensor
    losses: dict[str, torch.Tensor]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class FrozenNetworks(nn.Module):
    """Earlier networks: eval mode, no gradients, not seen by the optimizer, run under inference_mode."""

    def __init__(self, networks: list[nn.Module]):
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)

    def map(self, images: torch.Tensor, run: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """``run(network, images)`` for each network; results cloned out of inference mode so that they
        can enter the student's autograd graph.

        Call it before the student's forward pass: run between the student's forward and backward
        passes, the frozen networks evict the student's activations from the caches and cost 12-16%
        more per step (measured by scripts/benchmark)."""
        with torch.inference_mode():
            results = [run(net, images) for net in self.networks]
        return [r.clone() for r in results]

    def __len__(self) -> int:
        return len(self.networks)
