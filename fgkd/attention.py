"""A network's attention over an image: the heat map and its colours, shared by the attention figure of the reports
and the overlays of `fgkd classify`, so that both show the same thing; and the same map as shares of the attention,
which `fgkd part-occlusion` sums over each part."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps

OVERLAY_ALPHA = 0.45  # share of the heat map's colour in each pixel
OVERLAY_COLOURS = "jet"


def _upsample(energy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x h x w attention energy (see fgkd.losses.attention_energy) resized bilinearly to B x ``size``."""
    return F.interpolate(energy[:, None].float(), size=size, mode="bilinear")[:, 0]


def attention_heat(energy: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """One image's attention energy (h x w) resized to ``size`` and scaled to [0, 1]: only where the network looks
    matters here, not how strongly."""
    heat = _upsample(energy[None], size)[0]
    return ((heat - heat.min()) / (heat.max() - heat.min() + 1e-12)).cpu().numpy()


def attention_distribution(energy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x h x w attention energy resized to ``size`` as the heat map is, and scaled to sum 1 per image: the share of
    the network's attention on each pixel (NaN where a map is zero everywhere: no attention to share)."""
    maps = _upsample(energy, size)
    return maps / maps.sum(dim=(1, 2), keepdim=True)


def blend(picture: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """An H x W x 3 picture in [0, 1] with an H x W heat map in [0, 1] on top, in colour."""
    colours = colormaps[OVERLAY_COLOURS](heat)[..., :3]
    return (1 - OVERLAY_ALPHA) * picture + OVERLAY_ALPHA * colours
