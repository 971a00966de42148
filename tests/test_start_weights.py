"""Start weights: `pretrained` as a local torchvision weights file (clusters without internet), `init_from` a fgkd
model.pt (transfer), and a checkpoint's identity that includes them. Every weights file is made here."""

import hashlib
import subprocess

import pytest
import torch
import torchvision
from click.testing import CliRunner
from torchvision.models.resnet import BasicBlock, ResNet

from fgkd.cli import main
from fgkd.data.prepare import prepare
from fgkd.data.synth import generate
from fgkd.models import FGVCNet
from fgkd.modelfile import load_model
from fgkd.train import TrainConfig, train
from artifacts import one_line_error
from conftest import TINY
from fixtures import cli_train_args
from test_faults import kill_after_first_checkpoint, same_weights

FROZEN = {**TINY.__dict__, "epochs": 1, "lr": 0.0, "backbone_lr": 0.0}  # the weights stay where they started


def torchvision_classifier(backbone: str, seed: int, num_classes: int = 1000) -> torch.nn.Module:
    """The classifier whose state dict a weights file holds (resnet10: torchvision's ResNet class, no enum)."""
    torch.manual_seed(seed)
    if backbone == "resnet10":
        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    return torchvision.models.get_model(backbone, num_classes=num_classes)


def weights_file(path, backbone="resnet10", seed=1, form="plain"):
    """A torchvision-format weights file, as users save them: plain, wrapped, from DDP, without the classifier or
    with a classifier of another class count (fgkd replaces it either way). Returns (path, its state dict)."""
    state = torchvision_classifier(backbone, seed, 10 if form == "other classifier" else 1000).state_dict()
    saved = {"plain": state, "other classifier": state, "wrapped": {"state_dict": state, "epoch": 90},
             "ddp": {f"module.{k}": v for k, v in state.items()},
             "no classifier": {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}}[form]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
    return path, state


def trunk_parameters(state: dict) -> dict:
    return {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.") and "running_" not in k
            and not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("backbone,form", [
    ("resnet10", "plain"), ("resnet10", "wrapped"), ("resnet10", "ddp"), ("resnet10", "no classifier"),
    ("resnet10", "other classifier"), ("resnet18", "plain"), ("densenet121", "no classifier"),
])
def test_a_weights_file_becomes_the_trunk(tmp_path, backbone, form):
    path, state = weights_file(tmp_path / "weights.pth", backbone, seed=1, form=form)
    torch.manual_seed(0)
    model = FGVCNet(backbone, 5, pretrained=str(path))
    trunk = model.trunk.state_dict()
    assert trunk.keys() <= state.keys()  # the trunk keeps torchvision's names
    for key, value in trunk.items():
        assert torch.equal(value, state[key]), key
    torch.manual_seed(0)
    fresh = FGVCNet(backbone, 5).trunk.state_dict()
    assert not torch.equal(fresh[next(iter(fresh))], trunk[next(iter(trunk))])  # the test can tell them apart


def test_a_training_run_starts_from_the_file_and_records_it(tiny_data, tmp_path):
    """Learning rates 0: the trained trunk's parameters are the file's tensors, as at step 0."""
    path, state = weights_file(tmp_path / "weights" / "resnet10.pth")
    config = TrainConfig(**{**FROZEN, "pretrained": str(path)})
    result = subprocess.run(cli_train_args(config, tmp_path / "run", tiny_data), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert f"teacher starts from pretrained weights {path} (sha256 {digest})" in result.stderr
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert saved["metadata"]["start"] == {"source": "pretrained", "file": str(path), "sha256": digest}
    for key, value in trunk_parameters(saved["last_state_dict"]).items():
        assert torch.equal(value, state[key]), key
    scratch = train("teacher", tiny_data, tmp_path / "scratch", TrainConfig(**FROZEN), progress=False)
    assert load_model(scratch)[1]["start"] == {"source": "none", "file": None, "sha256": None}
    assert not same_weights(scratch, tmp_path / "run" / "model.pt")


def missing_key(state):
    del state["layer2.0.conv1.weight"]


def many_missing_keys(state):
    for key in [k for k in state if k.startswith("layer4.")]:
        del state[key]


def unexpected_key(state):
    state["layer5.0.conv1.weight"] = torch.zeros(3)


def wrong_shape(state):
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)


@pytest.mark.parametrize("damage,culprits", [
    (missing_key, ["missing: layer2.0.conv1.weight"]),
    (many_missing_keys, ["missing: layer4.0.conv1.weight, layer4.0.bn1.weight, layer4.0.bn1.bias and ", " more"]),
    (unexpected_key, ["unexpected: layer5.0.conv1.weight"]),
    (wrong_shape, ["wrong shape: conv1.weight (64, 3, 3, 3) (expected (64, 3, 7, 7))"]),
])
def test_a_weights_file_that_does_not_fit_is_one_line_naming_the_keys(tiny_data, tmp_path, damage, culprits):
    path, state = weights_file(tmp_path / "weights.pth")
    damage(state)
    torch.save(state, path)
    result = CliRunner().invoke(main, cli_train_args(TrainConfig(**{**FROZEN, "pretrained": str(path)}),
                                                     tmp_path / "run", tiny_data)[3:])
    one_line_error(result, f"pretrained: {path} does not fit resnet10", *culprits, "torch.save(model.state_dict()")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_file_that_is_not_torchvision_weights_is_one_line_naming_it(tiny_data, tmp_path):
    teacher = train("teacher", tiny_data, tmp_path / "teacher", TrainConfig(**FROZEN), progress=False)
    (tmp_path / "notes.txt").write_text("not weights")
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    cases = [(tmp_path / "notes.txt", "cannot read it (not a PyTorch file"),
             (tmp_path / "list.pth", "not a state dict"),
             (teacher, "is a fgkd model.pt, not torchvision weights; give it as init_from"),
             (tmp_path / "absent.pth", "no such file")]
    for path, culprit in cases:
        out = tmp_path / "run"
        result = CliRunner().invoke(main, cli_train_args(TrainConfig(**{**FROZEN, "pretrained": str(path)}), out,
                                                         tiny_data)[3:])
        one_line_error(result, f"pretrained: {path}", culprit)
        assert not (out / "model.pt").exists()


@pytest.fixture(scope="module")
def source_model(tiny_data, tmp_path_factory):
    """A trained 4-class resnet10 teacher to transfer from."""
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "seed": 7})
    return train("teacher", tiny_data, tmp_path_factory.mktemp("source") / "teacher", config, progress=False)


def module_parameters(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and "running_" not in k
            and not k.endswith("num_batches_tracked")}


def test_init_from_copies_the_trunk_and_a_fitting_head_never_the_aux_heads(tiny_data, source_model, tmp_path, caplog):
    source = torch.load(source_model, weights_only=True)["state_dict"]
    config = TrainConfig(**{**FROZEN, "init_from": str(source_model)})
    with caplog.at_level("INFO", logger="fgkd"):
        aux = train("auxkd", tiny_data, tmp_path / "auxkd", config, [source_model], progress=False)
    assert f"init_from {source_model}: trunk and main head copied" in caplog.text
    trained = torch.load(aux, weights_only=True)
    for prefix in ("trunk.", "head."):
        expected = module_parameters(source, prefix)
        assert module_parameters(trained["last_state_dict"], prefix).keys() == expected.keys()
        for key, value in module_parameters(trained["last_state_dict"], prefix).items():
            assert torch.equal(value, expected[key]), prefix + key
    aux_head = module_parameters(trained["last_state_dict"], "aux.0.")
    assert not torch.equal(aux_head["classifier.1.weight"], source["head.classifier.1.weight"])
    assert trained["metadata"]["start"]["source"] == "init_from"


def test_init_from_a_model_of_other_classes_re_initialises_the_head(source_model, tmp_path, caplog):
    generate(tmp_path / "raw", classes=3, images_per_class=8, size=32, seed=1)
    other = prepare("cub", tmp_path / "raw", tmp_path / "prepared", progress=False).parent
    source = torch.load(source_model, weights_only=True)["state_dict"]
    config = TrainConfig(**{**FROZEN, "init_from": str(source_model)})
    with caplog.at_level("INFO", logger="fgkd"):
        model = train("teacher", other, tmp_path / "teacher", config, progress=False)
    assert (f"init_from {source_model}: trunk copied; main head re-initialised (4 classes, head official of 32 hidden "
            "units there; 3 classes, head official of 32 here)") in caplog.text
    trained = torch.load(model, weights_only=True)["last_state_dict"]
    for key, value in module_parameters(source, "trunk.").items():
        assert torch.equal(trained["trunk." + key], value), key
    assert trained["head.classifier.4.weight"].shape == (3, 32)
    assert not torch.equal(trained["head.classifier.1.weight"], source["head.classifier.1.weight"])


def test_bad_start_weights_options_are_one_line(tiny_data, source_model, tmp_path):
    weights, _ = weights_file(tmp_path / "weights.pth")
    cases = [({"init_from": str(source_model), "backbone": "resnet18"},
              [f"init_from: {source_model} is a resnet10 model, this stage trains a resnet18"]),
             ({"init_from": str(weights)},
              [f"init_from: {weights}: a PyTorch file of another kind", "a torchvision weights file goes to pretrained"]),
             ({"init_from": str(source_model), "pretrained": str(weights)},
              ["are both set: init_from replaces the trunk's weights", "set pretrained: none"]),
             ({"init_from": str(tmp_path / "absent.pt")}, [f"init_from: {tmp_path / 'absent.pt'}: no such file"]),
             ({"pretrained": "imagenet"}, ["backbone 'resnet10' has no ImageNet weights"])]
    for options, culprits in cases:
        out = tmp_path / "run"
        result = CliRunner().invoke(main, cli_train_args(TrainConfig(**{**FROZEN, **options}), out, tiny_data)[3:])
        one_line_error(result, *culprits)
        assert not (out / "model.pt").exists()


def test_a_checkpoint_that_started_from_other_weights_is_not_resumed(tiny_data, tmp_path, caplog):
    """The same path, other contents: the configuration (and its hash) is the same, the start weights are not."""
    path, _ = weights_file(tmp_path / "weights.pth", seed=1)
    config = TrainConfig(**{**TINY.__dict__, "epochs": 4, "pretrained": str(path)})
    out = tmp_path / "run"
    kill_after_first_checkpoint(cli_train_args(config, out, tiny_data), out)
    weights_file(path, seed=2)
    with caplog.at_level("WARNING", logger="fgkd"):
        resumed = train("teacher", tiny_data, out, config, progress=False)
    assert "written by another start weights" in caplog.text and "configuration" not in caplog.text
    assert same_weights(resumed, train("teacher", tiny_data, tmp_path / "fresh", config, progress=False))
