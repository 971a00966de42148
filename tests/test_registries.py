"""Each choice list lives once in fgkd (next to what implements it); the config schema, a YAML file, repeats the
lists as enums, and these tests fail as soon as the two sides differ. Also: the one config-to-flags conversion
round-trips through `fgkd train`'s own option parser."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from fgkd.config import TrainConfig, cli_flags

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
TRAIN_OPTIONS = SCHEMA["$defs"]["train_options"]["properties"]


def test_cli_flags_parse_back_into_the_same_config(tmp_path):
    """Every field changed from its default (a boolean turned off, a path with a space): `fgkd train` reads the
    flags back into an equal TrainConfig."""
    from fgkd.cli import main

    config = TrainConfig(backbone="vgg16_bn", pretrained=str(tmp_path / "my weights.pth"), head="gap", head_hidden=7,
                         epochs=3, batch_size=5, lr=0.25, backbone_lr=1e-5, orth="at", orth_weight=0.0,
                         sync_batchnorm=False, compile="on", device="cpu")
    flags = cli_flags(dataclasses.asdict(config))
    assert "--no-sync-batchnorm" in flags and "--sync-batchnorm" not in flags
    context = main.commands["train"].make_context(
        "train", ["--stage", "teacher", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *flags])
    parsed = TrainConfig(**{f.name: context.params[f.name] for f in dataclasses.fields(TrainConfig)})
    assert parsed == config


def test_schema_lists_every_train_option():
    assert set(TRAIN_OPTIONS) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_schema_backbones_are_the_model_registrys():
    """One list (a YAML anchor) for `train.backbone`, `backbones` and `backbone_train`, equal to fgkd's registry."""
    from fgkd.models import BACKBONES

    lists = [TRAIN_OPTIONS["backbone"]["enum"], SCHEMA["properties"]["backbones"]["items"]["enum"],
             SCHEMA["properties"]["backbone_train"]["propertyNames"]["enum"]]
    assert all(sorted(names) == sorted(BACKBONES) for names in lists)


def test_schema_preprocessing_and_heads_are_fgkds():
    from fgkd.data.recipes import PREPROCESSING
    from fgkd.models import HEADS

    assert TRAIN_OPTIONS["preprocessing"]["enum"] == list(PREPROCESSING)
    assert TRAIN_OPTIONS["head"]["enum"] == list(HEADS)


def test_schema_combine_rules_are_the_metrics_registrys():
    from fgkd.metrics import COMBINES

    assert SCHEMA["properties"]["ensemble"]["properties"]["combine"]["enum"] == list(COMBINES)


def test_schema_formats_are_the_adapters():
    from fgkd.data.sources import LOADERS

    dataset = SCHEMA["properties"]["datasets"]["additionalProperties"]
    assert dataset["properties"]["format"]["enum"] == list(LOADERS)


def test_the_cli_offers_the_registries_choices():
    """`fgkd prepare`, `ensemble`, `classify`, `report` and `part-occlusion` take their choices from the registries."""
    from fgkd.cli import main
    from fgkd.data.sources import LOADERS
    from fgkd.metrics import COMBINES

    def choices(command, name):
        return next(p.type.choices for p in main.commands[command].params if p.name == name)

    assert list(choices("prepare", "dataset")) == list(LOADERS)
    for command in ("ensemble", "classify", "report", "part-occlusion"):
        assert list(choices(command, "combine")) == list(COMBINES)


def test_schema_orthogonal_losses_are_the_methods():
    from fgkd.methods.orthogonal import ORTHOGONAL_LOSSES

    assert TRAIN_OPTIONS["orth"]["enum"] == list(ORTHOGONAL_LOSSES)


def test_every_train_stage_has_its_method():
    from fgkd.cli import main
    from fgkd.methods import METHODS
    from fgkd.stages import METHOD_STAGES

    assert list(METHODS) == list(METHOD_STAGES)
    assert list(next(p for p in main.commands["train"].params if p.name == "stage").type.choices) == list(METHODS)


def test_schema_stage_names_are_the_runs_networks():
    """`stages:` takes the shared networks, the variant's aux-KD student and student_k by name."""
    from fgkd.stages import SHARED_STAGES

    pattern = SCHEMA["properties"]["stages"]["propertyNames"]["pattern"]
    assert pattern.startswith("^(") and pattern.endswith(")$")
    assert set(pattern[2:-2].split("|")) == {*SHARED_STAGES, "auxkd", "student_[1-9][0-9]*"}
