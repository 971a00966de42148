"""`fgkd export` through the real CLI: the exported file, run by its own runtime on test images preprocessed from the
model card alone, gives `fgkd predict`'s logits; the card holds the classes, recipe and metrics; bad input leaves
nothing behind."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torchvision.transforms import v2

from fgkd.cli import main
from fgkd.data.dataset import decode_rgb
from fgkd.data.manifest import read_manifest
from fgkd.export import WRITERS
from artifacts import one_line_error, ranked_hits, save_model

TOLERANCE = 1e-4
# TorchScript is deprecated in torch 2.14 but still what `--format torchscript` promises its users.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def predicted(model, data, out):
    """`fgkd predict`'s test-split logits and the image files they are of."""
    assert run("predict", "--model", model, "--data", data, "--out", out).exit_code == 0
    logits = pd.read_parquet(out)
    paths = read_manifest(data).set_index("image_id")["path"]
    return [data / paths[i] for i in logits["image_id"]], logits.filter(like="logit_").to_numpy(), logits["label"]


RECIPES = {  # what each recipe's card must say (the official code: PRIS-CV's train.py / test.py)
    "imagenet": {"resize_mode": "short side to resize, aspect kept", "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "interpolation": "bilinear, antialiased, on uint8 pixels"},
    "official": {"resize_mode": "square: resize x resize, aspect not kept", "mean": [0.5] * 3, "std": [0.5] * 3,
                 "interpolation": "bilinear, antialiased, on the PIL image"},
}


def card_inputs(card, files):
    """The files preprocessed from the model card's recipe with torchvision, not with fgkd's transform."""
    recipe = card["preprocessing"]
    assert {key: recipe[key] for key in RECIPES[recipe["name"]]} == RECIPES[recipe["name"]]
    assert recipe["crop_mode"] == "centre" and recipe["scale"] == "pixel values / 255"
    square, on_pil = recipe["resize_mode"].startswith("square"), recipe["interpolation"].endswith("PIL image")
    size = (recipe["resize"], recipe["resize"]) if square else recipe["resize"]
    transform = v2.Compose([*([v2.ToPILImage()] if on_pil else []), v2.Resize(size, antialias=True),
                            v2.CenterCrop(recipe["crop"]), *([v2.PILToTensor()] if on_pil else []),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(recipe["mean"], recipe["std"])])
    batch = torch.stack([transform(decode_rgb(f)) for f in files])
    assert list(batch.shape[1:]) == card["input"]["shape"][1:]
    return batch


def run_exported(path, export_format, batch, card):
    if export_format == "torchscript":
        with torch.no_grad():
            return torch.jit.load(path)(batch).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([card["output"]["name"]], {card["input"]["name"]: batch.numpy()})[0]


@pytest.fixture(scope="module", params=["imagenet", "official"])
def run_folder(request, tiny_data, tmp_path_factory):
    """A copy of a tiny teacher's run (each input recipe) with its test logits beside it, as the workflow leaves a
    run."""
    teacher = request.getfixturevalue("tiny_teacher" if request.param == "imagenet" else "official_teacher")
    folder = tmp_path_factory.mktemp("run") / "teacher"
    shutil.copytree(teacher.parent, folder)
    predicted(folder / "model.pt", tiny_data, folder / "logits.parquet")
    assert torch.load(folder / "model.pt")["metadata"]["preprocessing"] == request.param
    return folder


@pytest.mark.parametrize("export_format", WRITERS)
def test_the_exported_network_gives_predicts_logits_and_the_card_says_how(run_folder, tiny_data, tmp_path,
                                                                          export_format):
    out = tmp_path / "deploy" / f"model.{export_format}"
    result = run("export", "--model", run_folder / "model.pt", "--format", export_format, "--out", out)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "deploy" / f"model.{export_format}.json").read_text())
    files, expected, labels = predicted(run_folder / "model.pt", tiny_data, tmp_path / "logits.parquet")
    logits = run_exported(out, export_format, card_inputs(card, files), card)
    assert logits.shape == expected.shape and np.abs(logits - expected).max() <= TOLERANCE
    names = read_manifest(tiny_data).drop_duplicates("label").sort_values("label")["class_name"].tolist()
    assert card["class_names"] == names and card["dataset"] == {
        "name": tiny_data.name, "digest": torch.load(run_folder / "model.pt")["metadata"]["data_digest"],
        "classes": len(names)}
    assert card["format"] == export_format and card["file"] == out.name
    history = pd.read_parquet(run_folder / "history.parquet")
    best = card["metrics"]["best_epoch"]
    assert card["metrics"]["val_top1"] == history.loc[history["epoch"] == best, "val_acc"].item()
    assert card["metrics"]["test_top1"] == ranked_hits(expected, labels.to_numpy(), 1).mean()
    assert card["metrics"]["test_images"] == len(files) and card["metrics"]["test_from"] == "logits.parquet"
    assert len(card["identity"]["config_digest"]) == 16 and card["training_config"]["crop"] == card["input"]["shape"][2]
    assert card["trained_with"] == torch.load(run_folder / "model.pt")["metadata"]["arithmetic"]
    assert [r["device"] for r in card["trained_with"]] == ["cpu"]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, f"{out.name}.json"])
    if export_format == "onnx":
        assert [o.version for o in onnx.load(out).opset_import if o.domain == ""] == [card["software"]["onnx_opset"]]


def test_an_aux_kd_model_exports_its_main_head_and_an_old_card_says_what_it_lacks(tiny_data, tmp_path):
    """A model.pt without class names, data set or validation accuracy (an earlier fgkd), with two auxiliary heads."""
    model = save_model(tmp_path / "auxkd" / "model.pt", 4, aux_heads=2)[0]
    out = tmp_path / "auxkd.pt"
    assert run("export", "--model", model, "--format", "torchscript", "--out", out).exit_code == 0
    card = json.loads((tmp_path / "auxkd.pt.json").read_text())
    files, expected, _ = predicted(model, tiny_data, tmp_path / "logits.parquet")
    logits = run_exported(out, "torchscript", card_inputs(card, files), card)
    assert np.abs(logits - expected).max() <= TOLERANCE
    assert card["class_names"] is None and card["dataset"]["name"] is None
    assert card["network"]["auxiliary_heads_left_out"] == 2
    assert card["metrics"]["val_top1"] is None and card["metrics"]["test_top1"] is None
    assert card["trained_with"] is None


def bad_call(case, model, tmp_path, mount):
    """(--model, --format, --out, texts the one error line must hold, exit status)."""
    out = tmp_path / "out" / "model.onnx"
    if case == "missing model":
        return tmp_path / "absent.pt", "onnx", out, [str(tmp_path / "absent.pt"), "no such model"], 1
    if case == "not a model":
        (tmp_path / "notes.txt").write_text("not a model\n")
        return tmp_path / "notes.txt", "onnx", out, [str(tmp_path / "notes.txt"), "not a PyTorch file"], 1
    if case == "unknown format":
        return model, "tflite", out, ["'--format'", "tflite"], 2
    if case == "out under a file":
        (tmp_path / "out").write_text("a file where a folder would be\n")
        return model, "onnx", out, [str(out), f"{tmp_path / 'out'} is a file, not a folder"], 1
    if case == "read-only folder":
        out = mount("ro,size=1m") / "model.pt"
        return model, "torchscript", out, [str(out), "Read-only file system"], 1
    return model, "torchscript", model, [str(model), "would overwrite it"], 1


@pytest.mark.parametrize("case", ["missing model", "not a model", "unknown format", "out under a file",
                                  "read-only folder", "out is model"])
def test_bad_input_is_one_line_and_leaves_no_file(tiny_teacher, tmp_path, mount, case):
    work = tmp_path / "work"
    shutil.copytree(tiny_teacher.parent, work)
    before = (work / "model.pt").read_bytes()
    model, export_format, out, culprits, status = bad_call(case, work / "model.pt", tmp_path, mount)
    result = run("export", "--model", model, "--format", export_format, "--out", out)
    one_line_error(result, *culprits, exit_code=status)
    assert (work / "model.pt").read_bytes() == before and not (work / "model.pt.json").exists()
    if out != work / "model.pt" and out.parent.is_dir():
        assert not any(out.parent.iterdir())  # no file, card or temporary file
