"""A model.pt or a start-weights file that is not what it claims to be is one line naming the file and what is wrong,
in every command that reads one (predict, classify, export, init_from), and never becomes a silently different
network."""

import pickle
import re

import pytest
import torch
from click.testing import CliRunner

from fgkd.cli import main
from fgkd.train import TrainConfig
from artifacts import one_line_error, save_model
from conftest import TINY
from fixtures import cli_train_args
from test_start_weights import weights_file


def resave(path, change):
    saved = torch.load(path, weights_only=True)
    change(saved)
    torch.save(saved, path)


def misshaped(saved):
    saved["state_dict"]["head.classifier.4.weight"] = torch.zeros(4, 16)


def missing_weight(saved):
    del saved["state_dict"]["trunk.layer1.0.conv1.weight"]


def unexpected_weight(saved):
    saved["state_dict"]["head.extra.weight"] = torch.zeros(3)


def integer_weight(saved):
    saved["state_dict"]["head.classifier.4.bias"] = torch.zeros(4, dtype=torch.int64)


def missing_key(saved):
    del saved["metadata"]["crop"]


def wrong_type(saved):
    saved["metadata"]["num_classes"] = "4"


def sparse_weight(saved):
    saved["state_dict"]["trunk.conv1.weight"] = saved["state_dict"]["trunk.conv1.weight"].to_sparse()


def meaning(key, value):
    """A metadata value of the right type and the wrong meaning (each was used as it was: a crop of 100 px, classes
    named after the letters of a string)."""
    def change(saved):
        saved["metadata"][key] = value
    # A test id of word characters only: ids with quotes, brackets or backslashes are not found again when given back
    # to pytest by node id in the same process (as scripts/mutate's mutmut does).
    change.__name__ = re.sub(r"\W+", "_", f"{key}_{value!r}").strip("_")
    return change


def nan_weight(saved):
    saved["state_dict"]["trunk.conv1.weight"][0, 0, 0, 0] = float("nan")


DAMAGES = [
    (misshaped, "wrong shape: head.classifier.4.weight (4, 16) (expected (4, 32))"),
    (missing_weight, "missing: trunk.layer1.0.conv1.weight"),
    (unexpected_weight, "unexpected: head.extra.weight"),
    (integer_weight, "wrong type: head.classifier.4.bias torch.int64 (expected torch.float32)"),
    (missing_key, "no metadata key 'crop'"),
    (wrong_type, "metadata num_classes is '4', not of type int"),
    (nan_weight, "non-finite weights (trunk.conv1.weight)"),
    (meaning("crop", 100), "metadata crop 100 exceeds resize 36"),
    (meaning("class_names", "abcd"), "metadata class_names is not a list of 4 names"),
    (meaning("class_names", ["a", "b", "c", "d", "e"]), "metadata class_names is not a list of 4 names"),
    (meaning("preprocessing", "bogus"), "metadata preprocessing is 'bogus', not one of imagenet, official"),
    (meaning("best_epoch", -3), "metadata best_epoch -3 is outside the run's epochs 1..1"),
    (meaning("config", "not json"), "metadata config is not the JSON of the run's options"),
    (meaning("best_val_acc", 2.0), "metadata best_val_acc is 2.0, not a share between 0 and 1"),
    (meaning("aux_heads", -1), "metadata aux_heads is -1, below 0"),
    (meaning("epochs", True), "metadata epochs is True, not of type int"),
    (sparse_weight, "its state_dict is not a set of named dense tensors"),
    (meaning("start", {"source": "file", "file": "w.pt", "sha256": b"\x00"}),
     "metadata holds values other than text, numbers, lists and text-keyed tables"),
]


class Payload:
    """Any Python object: torch.save pickles it, and unpickling it could run code."""


def jpeg(path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(path, format="JPEG")


def object_pickle(path):
    torch.save({"format": 1, "payload": Payload()}, path)


def plain_pickle(path):
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))


def truncated(path):
    save_model(path, 4)
    path.write_bytes(path.read_bytes()[:5000])


def other_torch_file(path):
    torch.save({"state_dict": {}}, path)


NOT_MODELS = [
    (jpeg, "a JPEG image, not a model.pt written by `fgkd train`"),
    (object_pickle, "a PyTorch file holding Python objects other than tensors"),
    (plain_pickle, "a Python pickle, not a model.pt"),
    (truncated, "a damaged or truncated PyTorch file"),
    (other_torch_file, "a PyTorch file of another kind (no fgkd model format 1)"),
]


def commands(model, data, out):
    """Each command that reads a model.pt, with the arguments that make it read ``model``."""
    return {
        "predict": ["predict", "--model", model, "--data", data, "--out", out / "logits.parquet"],
        "classify": ["classify", "--model", model, next((data / "images").rglob("*.jpg"))],
        "export": ["export", "--model", model, "--format", "torchscript", "--out", out / "net.pt"],
        "init_from": cli_train_args(TrainConfig(**{**TINY.__dict__, "epochs": 1, "init_from": str(model)}),
                                    out / "run", data)[3:],
    }


@pytest.mark.parametrize("damage,culprit", DAMAGES, ids=[d.__name__ for d, _ in DAMAGES])
def test_a_damaged_model_is_one_line_in_every_command_that_reads_one(tiny_data, tmp_path, damage, culprit):
    model = save_model(tmp_path / "teacher" / "model.pt", 4)[0]
    resave(model, damage)
    for name, args in commands(model, tiny_data, tmp_path / "out").items():
        result = CliRunner().invoke(main, [str(a) for a in args])
        line = one_line_error(result, str(model), culprit)
        if damage is not nan_weight:
            assert "retrain that stage" in line, (name, line)
        assert not (tmp_path / "out").exists() or not any(
            p.is_file() for p in (tmp_path / "out").rglob("*")), name


@pytest.mark.parametrize("make,culprit", NOT_MODELS, ids=[m.__name__ for m, _ in NOT_MODELS])
def test_a_file_that_is_not_a_model_is_named_for_what_it_is(tiny_data, tmp_path, make, culprit):
    """Before: torch's hint about unsafe loading and "delete it and retrain", also for a photo given as the model."""
    model = tmp_path / "given" / "model.pt"
    model.parent.mkdir()
    make(model)
    for name, args in commands(model, tiny_data, tmp_path / "out").items():
        result = CliRunner().invoke(main, [str(a) for a in args])
        line = one_line_error(result, str(model), culprit)
        assert "weights_only" not in line.replace("weights_only=True", ""), line
        if make is not truncated:
            assert "retrain that stage" not in line, (name, line)


def test_a_damaged_model_that_is_a_link_names_where_it_points(tiny_data, tmp_path):
    """A results file restored by Snakemake's cache is a link to the entry: deleting the link alone would restore the
    same entry again."""
    entry = save_model(tmp_path / "cache" / "entry" / "model.pt", 4)[0]
    resave(entry, missing_key)
    link = tmp_path / "results" / "teacher" / "model.pt"
    link.parent.mkdir(parents=True)
    link.symlink_to(entry)
    result = CliRunner().invoke(main, ["export", "--model", str(link), "--format", "onnx", "--out",
                                       str(tmp_path / "x.onnx")])
    one_line_error(result, str(link), f"it is a link to {entry}", "delete that entry too")


def nan_tensor(state):
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")


def integer_tensor(state):
    state["layer1.0.bn1.weight"] = state["layer1.0.bn1.weight"].round().long()


@pytest.mark.parametrize("damage,culprit", [(nan_tensor, "NaN or infinite values: layer1.0.conv1.weight"),
                                            (integer_tensor, "wrong type: layer1.0.bn1.weight torch.int64")],
                         ids=["nan_tensor", "integer_tensor"])
def test_start_weights_with_nan_or_integer_tensors_are_refused(tiny_data, tmp_path, damage, culprit):
    """Before: NaN weights trained to "training diverged, lower the learning rates"; integer tensors were copied into
    the float weights, truncated (0.7 became 0)."""
    path, state = weights_file(tmp_path / "weights.pth")
    damage(state)
    torch.save(state, path)
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "pretrained": str(path)})
    result = CliRunner().invoke(main, cli_train_args(config, tmp_path / "run", tiny_data)[3:])
    one_line_error(result, f"pretrained: {path} does not fit resnet10", culprit)
    assert not (tmp_path / "run" / "model.pt").exists()
