"""Backbones from timm (`backbone: timm-<model name>`): the trunk of any model of a family listed in FAMILIES, as a
network that returns the feature map the heads pool, laid out B x C x H x W whatever the family's own layout.

The attention map of a family (docs/reference/method.md#attention-maps):
- CNNs (ResNet, ConvNeXt, EfficientNet): the feature map at the configured output stride; at the last stride, the
  map the heads pool (after ConvNeXt's head norm and EfficientNet's last 1x1 convolution);
- ViT: the patch tokens after the final norm, without class or register tokens, laid back on their grid;
- Swin: a stage's grid, the last stage's after the final norm.

Weights never download: `pretrained` is none, a local file (safetensors or a torch state dict, timm's key names),
or imagenet, which reads timm's default weights from the Hugging Face cache only.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from .errors import FgkdError, brief

TIMM_PREFIX = "timm-"  # not "timm/": the backbone names a folder of results/ and a field of `--run d/b/s`

# The timm model classes fgkd knows how to lay out, by the layout of the features before their classifier.
FAMILIES = {"VisionTransformer": "tokens", "SwinTransformer": "nhwc", "ConvNeXt": "nchw", "EfficientNet": "nchw",
            "ResNet": "nchw"}


def is_timm(backbone: str) -> bool:
    return backbone.startswith(TIMM_PREFIX)


def timm_name(backbone: str) -> str:
    """The timm model name of a fgkd backbone name: timm-vit_base_patch16_224 -> vit_base_patch16_224."""
    import timm

    name = backbone.removeprefix(TIMM_PREFIX)
    if "." in name:
        raise FgkdError(f"backbone {backbone!r}: give the architecture without a .tag of its weights "
                        f"({TIMM_PREFIX}{name.split('.')[0]}); the weights are pretrained's (a file, or imagenet: "
                        "timm's default ones)")
    if not timm.is_model(name):
        raise FgkdError(f"backbone {backbone!r}: timm has no model {name!r}; give timm-<name> with a name of "
                        "timm.list_models() (an architecture, without a .tag of its weights)")
    return name


def _create(backbone: str, image_size: int | None) -> nn.Module:
    """timm's model without its classifier and pooling; a model of a fixed input size (ViT, Swin) sized for
    ``image_size`` (its position embeddings then have that grid)."""
    import timm

    name = timm_name(backbone)
    sized = {"img_size": image_size} if timm.get_pretrained_cfg(name).fixed_input_size and image_size else {}
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **sized)
    except Exception as err:  # timm's own checks of an architecture it cannot build without its classifier
        raise FgkdError(f"backbone {backbone!r}: timm cannot build it without its classifier ({type(err).__name__}: "
                        f"{brief(err)}); choose another model") from None
    family = FAMILIES.get(type(model).__name__)
    if family is None:
        raise FgkdError(f"backbone {backbone!r} is a timm {type(model).__name__}; fgkd knows where these families "
                        f"attend: {', '.join(FAMILIES)} (docs/guides/extending.md#a-backbone)")
    if family == "tokens":
        # A ViT keeps its own pooling's layers, so that timm's weights fit it (an average-pooled one norms after
        # pooling: fc_norm); a MAP-pooled one's attention pool reads the tokens for timm's classifier, which fgkd's
        # heads replace (its keys are left out of a weights file like the classifier's).
        model.attn_pool = None
    else:
        model.reset_classifier(0, global_pool="")  # no pooling: the pre-logits are the map
    return model


class TimmTrunk(nn.Module):
    """image -> (the feature map the heads pool, the attention feature map), both B x C x H x W."""

    def __init__(self, backbone: str, attention_stride: int, image_size: int | None = None):
        super().__init__()
        self.model = _create(backbone, image_size)
        self.layout = FAMILIES[type(self.model).__name__]
        self.channels = getattr(self.model, "head_hidden_size", None) or self.model.num_features
        reductions = [info["reduction"] for info in self.model.feature_info]
        if self.layout == "tokens" and image_size:
            patch = reductions[-1]  # pixels per patch token (a hybrid ViT's CNN stem included)
            if image_size % patch or image_size < 2 * patch:
                raise FgkdError(f"crop {image_size} does not cut into {backbone}'s patches of {patch} px; give a "
                                f"multiple of {patch} of at least {2 * patch}")
        offered = sorted(r for r in set(reductions) if r >= 4)
        if attention_stride not in offered:
            raise FgkdError(f"attention_stride {attention_stride} is not available for {backbone}; choose one of "
                            f"{offered}")
        # The last stride is the map the heads pool; an earlier one is the output of the last block of that stride.
        last = max(i for i, r in enumerate(reductions) if r == attention_stride)
        self.attention_index = None if attention_stride == reductions[-1] else last

    def _pooled_map(self, features: torch.Tensor) -> torch.Tensor:
        """The features before timm's classifier (its pre-logits), B x C x H x W."""
        features = self.model.forward_head(features, pre_logits=True)
        return features.permute(0, 3, 1, 2) if self.layout == "nhwc" else features

    def _patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """A ViT's patch tokens after its final norm (and its per-token fc_norm, which an average-pooled ViT applies
        after pooling), without class or register tokens, on their grid: timm's own reshaping (hybrid stems too)."""
        (tokens,) = self.model.forward_intermediates(images, indices=[len(self.model.blocks) - 1], norm=True,
                                                     output_fmt="NCHW", intermediates_only=True)
        return self.model.fc_norm(tokens.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layout == "tokens":
            pooled = self._patch_tokens(images)
            return pooled, pooled
        if self.attention_index is None:
            pooled = self._pooled_map(self.model.forward_features(images))
            return pooled, pooled
        features, (attention,) = self.model.forward_intermediates(images, indices=[self.attention_index])
        return self._pooled_map(features), attention

    def attention_only(self, images: torch.Tensor) -> torch.Tensor:
        """The attention map without the layers after it (the frozen earlier networks of a student)."""
        if self.attention_index is None:
            return self.forward(images)[1]
        return self.model.forward_intermediates(images, indices=[self.attention_index], stop_early=True,
                                                intermediates_only=True)[0]


def check_trunk(backbone: str, attention_stride: int, image_size: int) -> None:
    """The trunk built on the meta device (no memory, no weights: a second at most): its name, family, attention
    stride and crop checked, for the workflow while it plans."""
    with torch.device("meta"):
        TimmTrunk(backbone, attention_stride, image_size)


def cached_imagenet_file(backbone: str) -> Path:
    """timm's default pretrained weights of the model, from the Hugging Face cache (HF_HOME): never downloaded."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    name = timm_name(backbone)
    hub_id = timm.get_pretrained_cfg(name).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename) if hub_id else None
        if isinstance(found, str):
            return Path(found)
    raise FgkdError(f"pretrained: imagenet: timm's weights of {name} ({hub_id}) are not in the Hugging Face cache; "
                    f"on a machine with internet run: python -c \"import timm; timm.create_model('{name}', "
                    "pretrained=True)\" and copy its HF_HOME cache here, or give pretrained the path of the "
                    "model.safetensors file")


def read_weights(path: str | Path) -> object:
    """A weights file as it was saved: safetensors by its suffix, otherwise torch.load of tensors only."""
    if Path(path).suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise FgkdError(f"pretrained: {path}: not a readable safetensors file ({err}); give a whole weights "
                            "file (safetensors.torch.save_file's, or torch.save's without the .safetensors suffix)"
                            ) from None
    return torch.load(path, map_location="cpu", weights_only=True)


def timm_checkpoint_filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What timm does to a file's weights before it loads them into this model: the family's own conversion of
    original checkpoints, and resizing of position embeddings (ViT) or relative-position tables (Swin) to this
    model's input size. The same function timm's pretrained loading runs; families without one load as they are."""
    convert = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    return convert(state, model) if convert is not None else state


def classifier_prefixes(backbone: str) -> tuple[str, ...]:
    """The key prefixes of the model's own classifier, which fgkd's heads replace: a file may leave them out."""
    import timm

    classifier = timm.get_pretrained_cfg(timm_name(backbone)).classifier
    names = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    return (*(f"{name}." for name in names), "attn_pool.")  # a MAP-pooled ViT's pool belongs to its classifier
