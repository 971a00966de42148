#!/usr/bin/env python3
"""Draw docs/reference/attention-grids.png: the cells of each backbone family's attention map over one 448 px crop,
as fgkd builds the maps (each network run on the crop; its map's shape gives the cells). The smallest model of each
family stands in for its large ones: the strides are the family's, not the size's.
Usage: .venv/bin/python scripts/attention_grids.py"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fgkd.data.dataset import decode_rgb  # noqa: E402
from fgkd.data.synth import generate  # noqa: E402
from fgkd.models import FGVCNet  # noqa: E402

CROP = 448
PANELS = [  # (title, backbone, attention_stride)
    ("ResNet (torchvision, timm), stride 32", "resnet10", 32),
    ("ResNet, stride 16", "resnet10", 16),
    ("ViT /16: patch tokens", "timm-test_vit", 16),
    ("Swin: last stage", "timm-swin_tiny_patch4_window7_224", 32),
    ("ConvNeXt, EfficientNet, stride 32", "timm-test_convnext", 32),
]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "raw", classes=2, images_per_class=2, size=CROP, seed=3)
        picture = decode_rgb(next((root / "images").rglob("*.jpg"))).permute(1, 2, 0).numpy()
    figure, axes = plt.subplots(1, len(PANELS), figsize=(3.4 * len(PANELS), 3.9))
    for axis, (title, backbone, stride) in zip(axes, PANELS):
        network = FGVCNet(backbone, 2, "gap", 8, stride, image_size=CROP).eval()
        with torch.no_grad():
            height, width = network.attention_only(torch.zeros(1, 3, CROP, CROP)).shape[-2:]
        axis.imshow(picture)
        for row in np.linspace(0, CROP, height + 1):
            axis.axhline(row - 0.5, color="white", linewidth=0.6)
        for column in np.linspace(0, CROP, width + 1):
            axis.axvline(column - 0.5, color="white", linewidth=0.6)
        axis.set_title(f"{title}\n{height} x {width} positions", fontsize=9)
        axis.set_axis_off()
    figure.tight_layout()
    target = REPO / "docs" / "reference" / "attention-grids.png"
    figure.savefig(target, dpi=80)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
