"""Each choice list lives once in fgkd (next to what implements it); the config schema, a YAML file, repeats the
lists as enums, and these tests fail as soon as the two sides differ. The command line reads its choices from the
same registries. Also: the one config-to-flags conversion round-trips through `fgkd train`'s own option parser."""

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from fgkd.config import CHOICES, CONFIG_HELP, DEVICES, WEIGHT_KEYWORDS, TrainConfig, cli_flags

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


def test_the_distillation_loss_and_its_options_go_through_the_flags_and_train_help(tmp_path):
    """kd_loss and DKD's weights: `fgkd train` offers them and reads cli_flags' spelling back into the same config."""
    from click.testing import CliRunner

    from fgkd.cli import main

    config = TrainConfig(kd_loss="dkd", dkd_alpha=0.5, dkd_beta=2.0)
    flags = cli_flags({"kd_loss": "dkd", "dkd_alpha": 0.5, "dkd_beta": 2.0})
    assert flags == ["--dkd-alpha", "0.5", "--dkd-beta", "2.0", "--kd-loss", "dkd"]
    context = main.commands["train"].make_context(
        "train", ["--stage", "auxkd", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *flags])
    assert TrainConfig(**{f.name: context.params[f.name] for f in dataclasses.fields(TrainConfig)}) == config
    text = " ".join(CliRunner().invoke(main, ["train", "--help"], terminal_width=200).output.split())
    assert "--kd-loss [kd|dkd]" in text and "--dkd-alpha FLOAT" in text and "--dkd-beta FLOAT" in text


def test_every_option_a_distillation_loss_declares_is_a_checked_train_option():
    """A loss's own options are declared with its registry entry: each must be a number of TrainConfig with help, in
    the schema with its lower bound, a keyword of the loss, and refused in one line when negative."""
    import inspect

    from fgkd.errors import FgkdError
    from fgkd.losses import DISTILLATION_LOSSES

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    checked = set()
    for name, loss in DISTILLATION_LOSSES.items():
        for option, keyword in loss.options.items():
            assert fields[option].type == "float" and CONFIG_HELP[option], (name, option)
            assert TRAIN_OPTIONS[option]["type"] == "number" and TRAIN_OPTIONS[option]["minimum"] == 0, (name, option)
            assert keyword in inspect.signature(loss.function).parameters, (name, option)
            with pytest.raises(FgkdError, match=rf"^{option} must be >= 0 \(got -1\)$"):
                TrainConfig(**{option: -1}).check_values()
            checked.add(option)
    assert {"dkd_alpha", "dkd_beta"} <= checked


def test_schema_lists_every_train_option():
    assert set(TRAIN_OPTIONS) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_schema_backbones_are_the_model_registrys():
    """One definition for `train.backbone`, `backbones` and `backbone_train`: fgkd's registry, or timm-<name> (the
    prefix fgkd.timm_trunk reads)."""
    from fgkd.models import BACKBONES
    from fgkd.timm_trunk import TIMM_PREFIX

    uses = [TRAIN_OPTIONS["backbone"], SCHEMA["properties"]["backbones"]["items"],
            SCHEMA["properties"]["backbone_train"]["propertyNames"]]
    assert all(use == {"$ref": "#/$defs/backbone"} for use in uses)
    names, timm = SCHEMA["$defs"]["backbone"]["anyOf"]
    assert sorted(names["enum"]) == sorted(BACKBONES)
    assert timm["pattern"] == f"^{TIMM_PREFIX}[A-Za-z0-9_]+$"


def test_a_backbone_outside_the_registry_and_timm_fails_the_check():
    from fgkd.errors import FgkdError

    with pytest.raises(FgkdError, match="^unknown backbone 'nonesuch'; choose one of resnet10, .*, or timm-<name>"):
        TrainConfig(backbone="nonesuch").check()
    with pytest.raises(FgkdError, match="^backbone 'timm-nonesuch': timm has no model 'nonesuch'"):
        TrainConfig(backbone="timm-nonesuch").check()


def registry(module, attribute):
    return getattr(importlib.import_module(module), attribute)


def test_every_schema_enum_of_train_is_a_registry():
    """An option of `train` that the schema limits to a list is one of TrainConfig's choices, and the lists agree."""
    assert {key for key, node in TRAIN_OPTIONS.items() if "enum" in node} == set(CHOICES)
    for key, (module, attribute) in CHOICES.items():
        assert sorted(TRAIN_OPTIONS[key]["enum"]) == sorted(registry(module, attribute)), key


def test_a_value_outside_a_registry_fails_the_check():
    from fgkd.errors import FgkdError

    for key, (module, attribute) in CHOICES.items():
        assert getattr(TrainConfig(), key) in registry(module, attribute)
        with pytest.raises(FgkdError, match=f"^{key}: 'nonesuch' is not one of "):
            TrainConfig(**{key: "nonesuch"}).check()


def test_schema_combine_rules_are_the_metrics_registrys():
    from fgkd.metrics import COMBINES

    assert SCHEMA["properties"]["ensemble"]["properties"]["combine"]["enum"] == list(COMBINES)


def test_schema_formats_are_the_adapters():
    from fgkd.data.sources import LOADERS

    dataset = SCHEMA["properties"]["datasets"]["additionalProperties"]
    assert dataset["properties"]["format"]["enum"] == list(LOADERS)


# Every parameter of the command line whose value comes from a fixed set: (command, parameter) -> its registry.
CLI_CHOICES = {
    ("prepare", "dataset"): ("fgkd.data.sources", "LOADERS"),
    ("train", "stage"): ("fgkd.stages", "METHOD_STAGES"),
    ("train", "backbone"): ("fgkd.models", "BACKBONES"),
    ("train", "head"): ("fgkd.models", "HEADS"),
    ("train", "attention_stride"): ("fgkd.models", "ATTENTION_STRIDES"),
    ("train", "preprocessing"): ("fgkd.data.recipes", "PREPROCESSING"),
    ("train", "orth"): ("fgkd.methods.orthogonal", "ORTHOGONAL_LOSSES"),
    ("train", "kd_loss"): ("fgkd.losses", "DISTILLATION_LOSSES"),
    ("train", "amp"): ("fgkd.train", "AMP_MODES"),
    ("train", "channels_last"): ("fgkd.train", "CHANNELS_LAST_MODES"),
    ("train", "compile"): ("fgkd.train", "COMPILE_MODES"),
    ("predict", "which"): ("fgkd.modelfile", "WEIGHTS"),
    ("ensemble", "combine"): ("fgkd.metrics", "COMBINES"),
    ("classify", "combine"): ("fgkd.metrics", "COMBINES"),
    ("classify", "output_format"): ("fgkd.classify", "FORMATTERS"),
    ("export", "export_format"): ("fgkd.export", "WRITERS"),
    ("report", "combine"): ("fgkd.metrics", "COMBINES"),
    ("part-occlusion", "combine"): ("fgkd.metrics", "COMBINES"),
}


def cli_parameter(command, name):
    from fgkd.cli import main

    return next(p for p in main.commands[command].params if p.name == name)


def test_the_cli_choices_are_exactly_these():
    """A new choice is added to CLI_CHOICES (and so tested below); none of these became free text."""
    from fgkd.cli import main

    found = {(name, p.name) for name, command in main.commands.items() for p in command.params
             if isinstance(p.type, click.Choice)}
    assert found == set(CLI_CHOICES)


@pytest.mark.parametrize("command, name", CLI_CHOICES)
def test_the_cli_reads_its_choices_from_the_registry(command, name, monkeypatch):
    """The choices are the registry's, and follow it when it grows: not a copy of it."""
    module, attribute = CLI_CHOICES[command, name]
    names = registry(module, attribute)
    choice = cli_parameter(command, name).type
    assert list(choice.choices) == list(names)
    grown = {**names, "added": None} if isinstance(names, dict) else (*names, "added")
    monkeypatch.setattr(importlib.import_module(module), attribute, grown)
    assert list(choice.choices) == list(grown)


def test_the_cli_lists_the_words_of_open_options():
    """--pretrained and --init-from also take a file, --device also cuda:N: their help lists the fixed words."""
    from fgkd.cli import main

    context = click.Context(main)
    for key, words in WEIGHT_KEYWORDS.items():
        assert cli_parameter("train", key).make_metavar(context) == "[" + "|".join(words) + "|FILE]"
    for command in ("train", "predict", "classify", "attention"):
        assert cli_parameter(command, "device").make_metavar(context) == "[" + "|".join(DEVICES) + "]"


def test_every_cli_option_has_help_and_shows_its_default():
    from fgkd.cli import main

    for name, command in main.commands.items():
        context = click.Context(command)
        for option in command.params:
            if isinstance(option, click.Option):
                assert option.help, (name, option.name)
                default = option.get_default(context)  # None, False (a flag) or click's "unset": nothing to show
                given = isinstance(default, (int, float, str)) and default is not False
                assert option.show_default or not given, (name, option.name)


def test_fgkd_help_names_the_workflow_and_the_documentation():
    from click.testing import CliRunner

    from fgkd.cli import main

    text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    for words in ("snakemake --cores all all", "snakemake --profile slurm all", "one step of its pipeline",
                  "README.md", "docs/", "mkdocs serve", "mkdocs build"):
        assert words in text, words


def test_a_bad_choice_is_clicks_one_line_error(tmp_path):
    from click.testing import CliRunner

    from artifacts import one_line_error
    from fgkd.cli import main

    result = CliRunner().invoke(main, ["train", "--stage", "teacher", "--data", str(tmp_path), "--out",
                                       str(tmp_path / "out"), "--backbone", "resnet9"])
    one_line_error(result, "'--backbone'", "'resnet9' is not one of 'resnet10', ", exit_code=2)


def test_the_help_of_the_torch_free_commands_does_not_import_torch():
    """The registries of the networks import torch (seconds): they are read only by the commands that use them."""
    script = ("import sys\nfrom fgkd.cli import main\nfor args in (['--help'], ['prepare', '--help'], "
              "['ensemble', '--help']):\n    main(args, standalone_mode=False)\nassert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)


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
