"""The input recipes: how a decoded image becomes a network's input (torch-free: `fgkd verify` and the workflow read a
model.pt's recipe without loading torchvision)."""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes the network's input; ``mean`` and ``std`` also undo it for display."""

    square: bool  # resize to resize x resize (the aspect is lost), else the short side to resize (aspect kept)
    padding: int  # zero pixels added around the image before the random training crop
    on_pil: bool  # resample as torchvision's transforms do on a PIL image (PIL's bilinear), else on the uint8 tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


PREPROCESSING = {
    # fgkd's own recipe (the default): short side to `resize`, with the ImageNet statistics of torchvision's weights.
    "imagenet": Preprocessing(square=False, padding=0, on_pil=False, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # PRIS-CV/knowledge-transfer-based-FGVC, train.py and test.py: Resize((600, 600)), RandomCrop(448, padding=8) +
    # RandomHorizontalFlip / CenterCrop(448), ToTensor, Normalize((0.5,) * 3, (0.5,) * 3), on PIL images.
    "official": Preprocessing(square=True, padding=8, on_pil=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


@dataclass(frozen=True)
class ImageSizes:
    """The network's input: ``preprocessing`` (a key of PREPROCESSING) resizes to ``resize``, then crops ``crop`` x
    ``crop`` (paper: 600 / 448). A model.pt records all three, and every use of the model reads them from there."""

    resize: int
    crop: int
    preprocessing: str = "imagenet"
