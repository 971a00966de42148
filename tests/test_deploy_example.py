"""docs/examples/onnx_classify.py, the deployer's script on numpy, Pillow and onnxruntime alone: from an ONNX export
and its model card it gives `fgkd classify`'s classes and probabilities for each input recipe, and refuses a card it
cannot follow."""

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fgkd.cli import main
from fgkd.data.manifest import read_manifest
from fixtures import write_oriented

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "onnx_classify.py"
LINE = re.compile(r"(?P<image>.+)  (?P<rank>\d+)  (?P<name>.+)  (?P<probability>[0-9.]+)")
# Largest difference of a probability between the script and `fgkd classify` (measured on these photos): the script
# prints six decimals, and resizes with PIL's bilinear, as `fgkd classify` does for `official` but not for `imagenet`
# (torchvision's antialiased bilinear on the uint8 tensor, up to one grey level apart).
TOLERANCE = {"official": 1e-5,  # measured 5.5e-7
             "imagenet": 1e-4}  # measured 7.5e-5; the script ignoring the resize mode or mean/std: 0.058 and 0.21


def run_example(*args):
    return subprocess.run([sys.executable, str(EXAMPLE), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def shown(stdout):
    """{image: [(class name, probability) by rank]} of the script's lines."""
    ranked = {}
    for line in stdout.splitlines():
        match = LINE.fullmatch(line)
        assert match and int(match["rank"]) == len(ranked.get(match["image"], [])) + 1, line
        ranked.setdefault(match["image"], []).append((match["name"], float(match["probability"])))
    return ranked


@pytest.fixture(scope="module", params=["imagenet", "official"])
def exported(request, tmp_path_factory):
    """(recipe, model.pt, the ONNX export of it with its card beside it)."""
    teacher = request.getfixturevalue("tiny_teacher" if request.param == "imagenet" else "official_teacher")
    out = tmp_path_factory.mktemp("deploy") / "birds.onnx"
    result = CliRunner().invoke(main, ["export", "--model", str(teacher), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(Path(f"{out}.json").read_text())["preprocessing"]["name"] == request.param
    return request.param, teacher, out


@pytest.fixture(scope="module")
def photos(tiny_data, tmp_path_factory):
    """A test-split JPEG of each class as prepared, and three of them as a user's photos: wide (JPEG; resized to a
    36 px short side, its long side is 66.96 px, truncated to 66), tall (PNG; its 63 px long side centre-crops from a
    half pixel, 15.5, rounded to 16), and one stored turned with an EXIF orientation (JPEG)."""
    folder = tmp_path_factory.mktemp("photos")
    frame = read_manifest(tiny_data)
    sources = [tiny_data / p for p in frame[frame["split"] == "test"].drop_duplicates("label")["path"]]
    for source in sources:
        shutil.copyfile(source, folder / source.name)
    pictures = [Image.open(source).convert("RGB") for source in sources]
    pictures[2].resize((93, 50), Image.Resampling.BICUBIC).save(folder / "wide.jpg", quality=95)
    pictures[3].resize((40, 70), Image.Resampling.BICUBIC).save(folder / "tall.png")
    write_oriented(folder / "turned.jpg", np.asarray(pictures[1].resize((44, 64))), 6, "JPEG")
    return sorted(folder.iterdir())


def test_the_example_gives_fgkd_classifys_probabilities(exported, photos):
    recipe, teacher, model = exported
    result = run_example(model, *photos)
    assert result.returncode == 0 and not result.stderr, result.stderr
    example = shown(result.stdout)
    classified = CliRunner().invoke(main, ["classify", "--model", str(teacher), *map(str, photos), "--format", "json"])
    assert classified.exit_code == 0, classified.output
    expected = {entry["image"]: [(p["class_name"], p["probability"]) for p in entry["predictions"]]
                for entry in json.loads(classified.stdout)}
    assert list(example) == list(expected) == [str(p) for p in photos]
    differences = []
    for image, ranked in expected.items():
        assert example[image][0][0] == ranked[0][0], (image, example[image], ranked)  # the same top-1 class
        assert sorted(name for name, _ in example[image]) == sorted(name for name, _ in ranked)  # 4 classes, all shown
        probabilities = dict(example[image])
        differences += [abs(probabilities[name] - probability) for name, probability in ranked]
    assert max(differences) <= TOLERANCE[recipe], (recipe, max(differences))


def test_a_card_with_unknown_preprocessing_is_refused_in_one_line(exported, tmp_path):
    _, _, model = exported
    card = json.loads(Path(f"{model}.json").read_text())
    card["preprocessing"]["resize_mode"] = "long side to resize"
    (tmp_path / "birds.onnx").symlink_to(model)
    (tmp_path / "birds.onnx.json").write_text(json.dumps(card))
    result = run_example(tmp_path / "birds.onnx", model)
    assert result.returncode == 2 and not result.stdout
    assert len(result.stderr.splitlines()) == 1 and "resize_mode 'long side to resize'" in result.stderr, result.stderr
    assert str(tmp_path / "birds.onnx.json") in result.stderr


def test_an_unreadable_image_is_one_line_and_the_others_are_classified(exported, photos, tmp_path):
    _, _, model = exported
    (tmp_path / "x.jpg").write_text("not an image\n")
    result = run_example(model, tmp_path / "x.jpg", photos[0])
    assert result.returncode == 1 and list(shown(result.stdout)) == [str(photos[0])]
    assert len(result.stderr.splitlines()) == 1 and str(tmp_path / "x.jpg") in result.stderr, result.stderr


def test_the_example_imports_only_numpy_pillow_and_onnxruntime():
    nodes = list(ast.walk(ast.parse(EXAMPLE.read_text())))
    modules = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in nodes if isinstance(node, ast.ImportFrom)}
    assert {module.split(".")[0] for module in modules} == {"json", "sys", "numpy", "onnxruntime", "PIL"}
