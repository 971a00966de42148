"""The options of one training stage: a plain dataclass without torch, so that the workflow can check every
stage's options while it plans, and `fgkd --help` starts fast."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import FgkdError

# What `device` takes (cuda:N: the GPU of index N); torch parses it, so the list is for people.
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DEVICE_HELP = "auto (a GPU when there is one), cpu, cuda, or cuda:N for GPU N"

CONFIG_HELP = {
    "backbone": "torchvision backbone (resnet10: a small ResNet without pretrained weights), or timm-<name> for a "
                "model of timm (ViT, Swin, ConvNeXt, EfficientNet, ResNet families)",
    "pretrained": "the trunk's start weights: none (random), imagenet (torchvision's IMAGENET1K_V1 weights, as "
                  "the official code's pretrained=True, cached in TORCH_HOME; for timm, its default weights from the "
                  "Hugging Face cache), or the path of a local weights file: a torchvision state dict of the "
                  "backbone's classifier, or timm's model.safetensors (for clusters without internet; the "
                  "classifier head is dropped)",
    "init_from": "none, or a fgkd model.pt to start from (transfer): its trunk, and its main head when the classes "
                 "and head fit",
    "head": "official (max-pool, BN, Linear(head_hidden), BN, ELU, Linear) or gap (avg-pool, Linear)",
    "head_hidden": "width of the official head's hidden layer (the official code: 512 for ResNet-50, 4096 for VGG-16)",
    "epochs": "passes over the training split",
    "batch_size": "images per optimizer step (per process under torchrun)",
    "lr": "learning rate of the new layers (the heads)",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay, on every parameter (as the official code)",
    "backbone_lr": "learning rate of the trunk; the paper's 0.001 assumes pretrained weights",
    "preprocessing": "imagenet: fgkd's short-side resize to resize, random crop + flip (test: centre crop), ImageNet "
                     "mean/std of torchvision's weights; official: PRIS-CV's train.py/test.py, square resize x resize, "
                     "random crop with 8 px zero padding + flip (test: centre crop), mean = std = 0.5",
    "resize": "short side (imagenet) or square side (official) before cropping",
    "crop": "square crop fed to the network",
    "val_fraction": "share of train held out to pick the best epoch; 0 keeps the last epoch",
    "seed": "each stage derives its own seed from it and its stage",
    "workers": "DataLoader worker processes",
    "orth": "orthogonal loss of the students (or: the official one, at: attention transfer)",
    "orth_weight": "p of the adaptive OR weight (OR term = p x CE), or the fixed lambda of AT; 0 = plain CE",
    "attention_stride": "output stride of the attention feature map: 32 is the last, 16/8/4 earlier and larger",
    "kd_temperature": "temperature T of the aux-KD losses",
    "kd_alpha": "weight of the distillation loss against CE on each auxiliary head",
    "kd_loss": "distillation loss of each auxiliary head (kd: Hinton's KD, dkd: decoupled KD, Zhao et al. 2022)",
    "dkd_alpha": "kd_loss dkd: weight of TCKD, the target class against the rest",
    "dkd_beta": "kd_loss dkd: weight of NCKD, the teacher's distribution over the non-target classes",
    "amp": "auto (bf16 autocast on CUDA), bf16, off",
    "channels_last": "auto (on CUDA), on, off",
    "device": f"{DEVICE_HELP} (under torchrun, auto = each process its own GPU)",
    "sync_batchnorm": "under torchrun: batch-norm statistics over all processes' images (N processes then train "
                      "like one with N x batch_size)",
    "compile": "torch.compile the trained network: off, on",
}


# (`backbone` is one of fgkd.models.BACKBONES or timm-<a model of timm>: checked by fgkd.models.check_backbone.)
# The options whose value is one of a fixed set, each with the registry that implements it (module, attribute: a dict
# whose keys or a tuple whose items are the names). Read when asked, as most of them import torch: `fgkd train` offers
# them as choices, TrainConfig.check enforces them, and the schema's enums are tested against them.
CHOICES = {
    "head": ("fgkd.models", "HEADS"),
    "preprocessing": ("fgkd.data.recipes", "PREPROCESSING"),
    "orth": ("fgkd.methods.orthogonal", "ORTHOGONAL_LOSSES"),
    "kd_loss": ("fgkd.losses", "DISTILLATION_LOSSES"),
    "attention_stride": ("fgkd.models", "ATTENTION_STRIDES"),
    "amp": ("fgkd.train", "AMP_MODES"),
    "channels_last": ("fgkd.train", "CHANNELS_LAST_MODES"),
    "compile": ("fgkd.train", "COMPILE_MODES"),
}


def registry_names(module: str, attribute: str) -> tuple:
    """The names a registry offers, read from it now."""
    return tuple(getattr(importlib.import_module(module), attribute))


def option_flag(name: str) -> str:
    """The command-line spelling of an option: --batch-size for batch_size."""
    return "--" + name.replace("_", "-")


def cli_flags(options: dict[str, object]) -> list[str]:
    """The arguments that give these options to `fgkd train` (or `fgkd synth`), sorted by name, booleans as --key /
    --no-key, a list as the key and its values (`fgkd synth --scale 0.8 0.95`): the one conversion the workflow, the
    tests and the benchmarks run (the workflow's commands are part of its rerun triggers, so their spelling must not
    drift)."""
    flags = []
    for key, value in sorted(options.items()):
        if isinstance(value, bool):
            flags.append(option_flag(key) if value else "--no-" + option_flag(key)[2:])
        elif isinstance(value, (list, tuple)):
            flags += [option_flag(key), *map(str, value)]
        else:
            flags += [option_flag(key), str(value)]
    return flags


# The values of the start-weights options that name no file; any other value is a file's path.
WEIGHT_KEYWORDS = {"pretrained": ("none", "imagenet"), "init_from": ("none",)}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one stage; the CLI exposes each field as --field-name (help in CONFIG_HELP)."""

    backbone: str = "resnet18"
    pretrained: str = "none"
    init_from: str = "none"
    head: str = "official"
    head_hidden: int = 512
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    backbone_lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    preprocessing: str = "imagenet"
    resize: int = 600
    crop: int = 448
    val_fraction: float = 0.1
    seed: int = 0
    workers: int = 0
    orth: str = "or"
    orth_weight: float = 0.1
    attention_stride: int = 32
    kd_temperature: float = 4.0
    kd_alpha: float = 0.5
    kd_loss: str = "kd"
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    amp: str = "auto"
    channels_last: str = "auto"
    device: str = "auto"
    sync_batchnorm: bool = True
    compile: str = "off"

    def check(self) -> None:
        """Every option finite and in range, then the choices (their registries import torch: see check_values)."""
        from .models import check_backbone

        self.check_values()
        self.check_files()
        check_backbone(self.backbone)
        for key, registry in CHOICES.items():
            allowed = registry_names(*registry)
            if getattr(self, key) not in allowed:
                raise FgkdError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(map(str, allowed))}")

    def check_values(self) -> None:
        """The checks that need no torch: the workflow runs them on every stage's options before any job."""
        for field in dataclasses.fields(self):
            if field.type == "float" and not math.isfinite(getattr(self, field.name)):
                raise FgkdError(f"{field.name} must be a finite number (got {getattr(self, field.name)})")
        positive = ("head_hidden", "epochs", "batch_size", "resize", "crop", "kd_temperature")
        for key in positive:
            if not getattr(self, key) > 0:
                raise FgkdError(f"{key} must be > 0 (got {getattr(self, key)})")
        for key in ("lr", "backbone_lr", "momentum", "weight_decay", "orth_weight", "workers", "dkd_alpha",
                    "dkd_beta"):
            if getattr(self, key) < 0:
                raise FgkdError(f"{key} must be >= 0 (got {getattr(self, key)})")
        if not 0 <= self.val_fraction < 1:
            raise FgkdError(f"val_fraction must be in [0, 1) (got {self.val_fraction})")
        if not 0 <= self.kd_alpha <= 1:
            raise FgkdError(f"kd_alpha must be in [0, 1] (got {self.kd_alpha})")
        if self.crop > self.resize:
            raise FgkdError(f"crop ({self.crop}) must not exceed resize ({self.resize})")
        for key in WEIGHT_KEYWORDS:
            if not getattr(self, key):
                raise FgkdError(f"{key} is empty; give {', '.join(WEIGHT_KEYWORDS[key])} or a file's path")
        if self.pretrained != "none" and self.init_from != "none":
            raise FgkdError(f"pretrained ({self.pretrained}) and init_from ({self.init_from}) are both set: init_from "
                            "replaces the trunk's weights, so the pretrained ones would be lost; set pretrained: none")

    def weight_files(self) -> dict[str, str]:
        """The start-weights options that name a file: inputs of the run, part of its identity."""
        return {key: getattr(self, key) for key, words in WEIGHT_KEYWORDS.items() if getattr(self, key) not in words}

    def check_files(self, made_later: tuple[str, ...] = ()) -> None:
        """Every start-weights file exists (except ``made_later``: files an earlier job of the workflow writes)."""
        for key, path in self.weight_files().items():
            if path not in made_later and not Path(path).is_file():
                raise FgkdError(f"{key}: {path}: no such file; give {' or '.join(WEIGHT_KEYWORDS[key])}, or the path "
                                "of an existing file")


# Options that change how fast a run goes, not what it computes: not part of its identity.
NOT_IDENTITY = ("workers", "device", "compile")
# Options added after runs were made, each with its default then: at that value an option stays out of a run's
# identity, so that every model and checkpoint made before it keeps its hash.
ADDED_LATER = {"kd_loss": "kd", "dkd_alpha": 1.0, "dkd_beta": 8.0}
TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def config_hash(config: TrainConfig, name: str, earlier: list[str], processes: int = 1) -> str:
    """Identity of a run: its options (each of its declared type: a config's `orth_weight: 1` and the command line's
    1.0 are one run), its name, its number of processes (batch_size is per process) and the config hashes of the
    frozen networks it learns from; an option of ADDED_LATER only away from its earlier value. Torch-free: the
    workflow computes the hash each job's model.pt must have."""
    values = {f.name: TYPES[f.type](getattr(config, f.name)) for f in dataclasses.fields(config)}
    fields = {key: value for key, value in values.items()
              if key not in NOT_IDENTITY and (key not in ADDED_LATER or value != ADDED_LATER[key])}
    payload = json.dumps({"config": fields, "stage": name, "processes": processes, "earlier": list(earlier)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
