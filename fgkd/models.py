"""Backbones from torchvision and timm (fgkd.timm_trunk), the FGVC classification heads, and the aux-KD student.

A network returns its logits and keeps the feature map used for attention (chosen by output
stride: 32 is the last feature map, 16/8/4 are earlier, larger ones), captured by a forward hook
so that torchvision's code stays untouched (timm's trunks return it beside their last map).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from .errors import FgkdError, brief, some
from .timm_trunk import (TIMM_PREFIX, TimmTrunk, cached_imagenet_file, classifier_prefixes, is_timm, read_weights,
                         timm_checkpoint_filter, timm_name)


@dataclass(frozen=True)
class Backbone:
    """How to cut a torchvision classifier into a trunk and where each output stride ends."""

    family: str
    channels: int  # of the final feature map
    stride_modules: dict[int, str]  # output stride -> name of the trunk module whose output it is


def _resnet_strides() -> dict[int, str]:
    return {4: "layer1", 8: "layer2", 16: "layer3", 32: "layer4"}


def _vgg_bn_strides() -> dict[int, str]:
    return {4: "13", 8: "23", 16: "33", 32: "43"}  # the max-pools ending blocks 2..5 of vgg*_bn


def _densenet_strides() -> dict[int, str]:
    return {4: "denseblock1", 8: "denseblock2", 16: "denseblock3", 32: "norm5"}


BACKBONES = {
    "resnet10": Backbone("resnet", 512, _resnet_strides()),  # a small CPU-friendly ResNet, no weights
    "resnet18": Backbone("resnet", 512, _resnet_strides()),
    "resnet34": Backbone("resnet", 512, _resnet_strides()),
    "resnet50": Backbone("resnet", 2048, _resnet_strides()),
    "resnet101": Backbone("resnet", 2048, _resnet_strides()),
    "vgg16_bn": Backbone("vgg", 512, _vgg_bn_strides()),
    "vgg16": Backbone("vgg", 512, {4: "9", 8: "16", 16: "23", 32: "30"}),
    "densenet121": Backbone("densenet", 1024, _densenet_strides()),
    "densenet161": Backbone("densenet", 2208, _densenet_strides()),
}
HEADS = ("official", "gap")
# The attention strides every backbone offers (TrainConfig.attention_stride).
ATTENTION_STRIDES = tuple(sorted(set.intersection(*(set(spec.stride_modules) for spec in BACKBONES.values()))))


def _check_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        hint = f" (write {TIMM_PREFIX}{name[5:]}: the name is a folder of results/)" if name.startswith("timm/") else ""
        raise FgkdError(f"unknown backbone {name!r}{hint}; choose one of {', '.join(BACKBONES)}, or "
                        f"{TIMM_PREFIX}<name> for a model of timm")
    return BACKBONES[name]


def check_backbone(name: str) -> None:
    """A backbone fgkd can build: one of BACKBONES, or timm-<name> of a model timm has."""
    if is_timm(name):
        timm_name(name)
    else:
        _check_backbone(name)


IMAGENET_WEIGHTS = "IMAGENET1K_V1"  # what the official code's pretrained=True loads (resnet50's DEFAULT is V2)


def imagenet_weights_file(name: str) -> Path:
    """Where torchvision keeps the backbone's ImageNet weights (TORCH_HOME's cache), or timm its default weights
    (the Hugging Face cache, HF_HOME)."""
    if is_timm(name):
        return cached_imagenet_file(name)
    weights = torchvision.models.get_model_weights(name)[IMAGENET_WEIGHTS]
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _pretrained_weights(name: str):
    """The torchvision weights enum entry, from TORCH_HOME's cache or downloaded; a clear error if neither."""
    cached = imagenet_weights_file(name)
    weights = torchvision.models.get_model_weights(name)[IMAGENET_WEIGHTS]
    if not cached.is_file():
        try:
            torch.hub.load_state_dict_from_url(weights.url, progress=False)
        except Exception as err:  # URLError, socket errors, HTTP errors: all mean "not downloadable here"
            raise FgkdError(
                f"pretrained weights for {name} are not in the cache ({cached}) and cannot be downloaded ({err}); "
                f"on a machine with internet run: python -c \"import torchvision; torchvision.models.get_model("
                f"'{name}', weights='{IMAGENET_WEIGHTS}')\" and copy {cached.name} to {cached.parent} (or set TORCH_HOME), "
                "or give pretrained the path of a local weights file, or set pretrained: none"
            ) from None
    return weights


# The keys of each family's own classifier, which fgkd replaces by its heads: a weights file may leave them out.
CLASSIFIER_KEYS = {"resnet": "fc.", "vgg": "classifier.", "densenet": "classifier."}


# What timm's conversion of a weights file may resize to the model's input size: position embeddings and tables.
RESIZED_TO_THE_INPUT = ("pos_embed", "relative_position_bias_table")


def load_weights_file(model: nn.Module, name: str, path: str | Path) -> None:
    """Load a local weights file into ``model``, torchvision's classifier or timm's model of backbone ``name`` (for
    clusters without internet): a state dict (safetensors for timm, or torch.save's) plain, wrapped as
    {"state_dict": ...}, or with DDP's "module." prefix. Its classifier keys may be absent or of any shape; every
    other key must fit, and num_batches_tracked (absent from old files) may be missing. A timm file first goes
    through timm's own conversion for the model (position embeddings resized to its input size)."""
    if is_timm(name):
        heads = classifier_prefixes(name)
        fix = (f"give timm's weights of {timm_name(name)} (model.safetensors, or a state dict with timm's key names; "
               f"its {'/'.join(h + '*' for h in heads)} keys may be left out), or set backbone to the one the file "
               "was made for")
    else:
        heads = (CLASSIFIER_KEYS[_check_backbone(name).family],)
        fix = (f"give the state dict of torchvision's {name} as torch.save(model.state_dict(), path) writes it (its "
               f"{heads[0]}* keys may be left out), or set backbone to the one the file was made for")
    try:
        state = read_weights(path)
    except FgkdError:
        raise
    except Exception:  # unpickling errors of many kinds; torch's first line (on weights_only) misleads
        raise FgkdError(f"pretrained: {path}: torch.load(weights_only=True) cannot read it (not a PyTorch file, "
                        f"damaged, or holding more than tensors); {fix}") from None
    if isinstance(state, dict) and {"format", "metadata"} <= state.keys():
        raise FgkdError(f"pretrained: {path} is a fgkd model.pt, not {'timm' if is_timm(name) else 'torchvision'} "
                        "weights; give it as init_from (with pretrained: none)")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in state.items())):
        raise FgkdError(f"pretrained: {path}: not a state dict (tensors by name); {fix}")
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    given = {k: v for k, v in state.items() if not k.startswith(heads)}
    if is_timm(name):
        before = {k: tuple(v.shape) for k, v in given.items()}
        try:
            given = timm_checkpoint_filter(model, given)
        except Exception as err:  # timm's conversion of a file it cannot make sense of: shapes, missing keys
            raise FgkdError(f"pretrained: {path} does not fit {name} (timm's conversion failed: "
                            f"{type(err).__name__}: {brief(err)}); {fix}") from None
        # timm resizes position tables to the input size, as it should, but also resamples a patch embedding of
        # another patch size: that is another network's weights, not this one's.
        resampled = [f"{k} {before[k]} (expected {tuple(v.shape)})" for k, v in given.items()
                     if k in before and before[k] != tuple(v.shape) and not k.endswith(RESIZED_TO_THE_INPUT)]
        if resampled:
            raise FgkdError(f"pretrained: {path} does not fit {name} (wrong shape: {some(resampled)}); {fix}")
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(heads)}
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in expected if k in given and given[k].shape != expected[k].shape]
    # load_state_dict would copy integers into float weights (0.7 stored as an integer is 0) and NaN as it is.
    types = [f"{k} {given[k].dtype} (expected floating point)"
             for k in expected if k in given and expected[k].is_floating_point() and not given[k].is_floating_point()]
    non_finite = [k for k in expected if k in given and given[k].is_floating_point() and not given[k].isfinite().all()]
    problems = [f"{what}: {some(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes), ("wrong type", types),
                 ("NaN or infinite values", non_finite)) if keys]
    if problems:
        raise FgkdError(f"pretrained: {path} does not fit {name} ({'; '.join(problems)}); {fix}")
    model.load_state_dict(given, strict=False)  # left out: the classifier (replaced by fgkd's) and num_batches_tracked


def build_trunk(name: str, pretrained: str = "none", attention_stride: int = 32,
                image_size: int | None = None) -> nn.Module:
    """The convolutional part of a torchvision classifier: image -> final feature map, or a TimmTrunk. ``pretrained``:
    none, imagenet (torchvision's or timm's cached weights) or the path of a weights file (see load_weights_file)."""
    if is_timm(name):
        trunk = TimmTrunk(name, attention_stride, image_size)
        if pretrained != "none":
            load_weights_file(trunk.model, name, imagenet_weights_file(name) if pretrained == "imagenet" else pretrained)
        return trunk
    spec = _check_backbone(name)
    if name == "resnet10":
        if pretrained == "imagenet":
            raise FgkdError("backbone 'resnet10' has no ImageNet weights; set pretrained: none or a weights file's "
                            "path, or pick a torchvision backbone")
        model = ResNet(BasicBlock, [1, 1, 1, 1])
    else:
        weights = _pretrained_weights(name) if pretrained == "imagenet" else None
        model = torchvision.models.get_model(name, weights=weights)
    if pretrained not in ("none", "imagenet"):
        load_weights_file(model, name, pretrained)
    if spec.family == "resnet":
        return nn.Sequential(OrderedDict(list(model.named_children())[:-2]))
    if spec.family == "densenet":
        return nn.Sequential(OrderedDict([("features", model.features), ("relu", nn.ReLU())]))
    return model.features


def _modules_up_to(sequence: nn.Sequential, target: nn.Module) -> list[nn.Module]:
    """The modules that, applied in turn, take the input of ``sequence`` to the output of ``target``."""
    path = []
    for child in sequence.children():
        if child is target:
            return [*path, child]
        if isinstance(child, nn.Sequential) and any(m is target for m in child.modules()):
            return [*path, *_modules_up_to(child, target)]
        path.append(child)
    raise ValueError(f"{type(target).__name__} is not reached by running {type(sequence).__name__} in order")


def _trunk_module(trunk: nn.Module, backbone: str, stride: int) -> nn.Module:
    spec = _check_backbone(backbone)
    if stride not in spec.stride_modules:
        raise FgkdError(f"attention_stride {stride} is not available; choose one of {sorted(spec.stride_modules)}")
    name = spec.stride_modules[stride]
    prefix = "features." if spec.family == "densenet" else ""
    return trunk.get_submodule(prefix + name)


class OfficialHead(nn.Module):
    """Global max-pool -> BN -> Linear(hidden) -> BN -> ELU -> Linear, as the method's official code."""

    def __init__(self, channels: int, hidden: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Sequential(
            nn.BatchNorm1d(channels), nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ELU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.amax(features, dim=(2, 3)))


class GapHead(nn.Module):
    """Global average pool -> Linear: the plain torchvision head."""

    def __init__(self, channels: int, hidden: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean(dim=(2, 3)))


def build_head(kind: str, channels: int, hidden: int, num_classes: int) -> nn.Module:
    if kind not in HEADS:
        raise FgkdError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
    return (OfficialHead if kind == "official" else GapHead)(channels, hidden, num_classes)


class FGVCNet(nn.Module):
    """A trunk, a main head and ``aux_heads`` auxiliary heads, all on the final feature map.

    ``forward`` returns the main logits, or (main, [aux...]) when there are auxiliary heads; the
    attention feature map of the last call is in ``self.attention_features``.
    """

    def __init__(self, backbone: str, num_classes: int, head: str = "official", head_hidden: int = 512,
                 attention_stride: int = 32, aux_heads: int = 0, pretrained: str = "none",
                 image_size: int | None = None):
        """``image_size``: the crop, for the timm models whose input size is fixed (ViT, Swin); others ignore it."""
        super().__init__()
        self.trunk = build_trunk(backbone, pretrained, attention_stride, image_size)
        channels = self.trunk.channels if is_timm(backbone) else _check_backbone(backbone).channels
        self.head = build_head(head, channels, head_hidden, num_classes)
        self.aux = nn.ModuleList(build_head(head, channels, head_hidden, num_classes) for _ in range(aux_heads))
        self.attention_features: torch.Tensor | None = None
        self._up_to_attention = None
        if not is_timm(backbone):
            attention_module = _trunk_module(self.trunk, backbone, attention_stride)
            attention_module.register_forward_hook(self._capture)
            self._up_to_attention = _modules_up_to(self.trunk, attention_module)  # a plain list: no second registration

    def _capture(self, module, inputs, output):
        self.attention_features = output

    def new_parameters(self) -> list[nn.Parameter]:
        """The heads: trained with the larger learning rate of new layers."""
        return [*self.head.parameters(), *self.aux.parameters()]

    def forward(self, images: torch.Tensor):
        if self._up_to_attention is None:  # timm: the trunk returns the attention map beside the one it pools
            features, self.attention_features = self.trunk(images)
        else:
            features = self.trunk(images)
        # The heads run in float32 even under bf16 autocast: bf16 logits (8 bits of mantissa) tie near classes, and
        # a tie counts against the prediction. They are a sliver of the compute; on float32 this changes nothing.
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            logits = self.head(features)
            if len(self.aux) == 0:
                return logits
            return logits, [aux(features) for aux in self.aux]

    def attention_only(self, images: torch.Tensor) -> torch.Tensor:
        """The attention feature map without the layers after it: all that a frozen earlier network gives
        an orthogonal student (at output stride 8 that skips half of a ResNet's trunk and the head)."""
        if self._up_to_attention is None:
            return self.trunk.attention_only(images)
        for module in self._up_to_attention:
            images = module(images)
        return images
