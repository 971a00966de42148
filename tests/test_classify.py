"""`fgkd classify` through the real CLI on image files: the probabilities are the softmax of `fgkd predict`'s logits,
ensembles follow fgkd.metrics.ensemble_scores, bad images are one line each, overlays and output formats hold."""

import csv
import dataclasses
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.special
import torch
from click.testing import CliRunner
from PIL import Image

from fgkd.cli import main
from fgkd.data.dataset import centre_crop_box, fgvc_transform
from fgkd.data.recipes import PREPROCESSING, ImageSizes
from fgkd.data.manifest import read_manifest
from fgkd.metrics import COMBINES, ensemble_scores
from fgkd.train import train
from artifacts import one_line_error, save_model
from conftest import TINY
from fixtures import write_image

ODD_NAMES = ['Ross\'s "Gull", juvenile', "Sabine's Gull", 'say "hi",\nthen go', "Gull; grey, white"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def predicted(model, data, out):
    """`fgkd predict`'s logits of the test split, by the path of each image file."""
    assert run("predict", "--model", model, "--data", data, "--out", out).exit_code == 0
    logits = pd.read_parquet(out)
    paths = read_manifest(data).set_index("image_id")["path"]
    return {(data / paths[i]).name: row for i, row in zip(logits["image_id"], logits.filter(like="logit_").to_numpy())}


@pytest.fixture(scope="module")
def second_teacher(tiny_data, tmp_path_factory):
    """Another network of the same data set, inputs and classes: an ensemble of two."""
    config = dataclasses.replace(TINY, epochs=1, seed=1)
    return train("teacher", tiny_data, tmp_path_factory.mktemp("second") / "teacher", config, progress=False)


@pytest.fixture(scope="module")
def photos(tiny_data, tmp_path_factory):
    """A folder of the test split's JPEG files, a truncated JPEG, a text file named x.jpg, and a note that is not an
    image file by its name."""
    folder = tmp_path_factory.mktemp("photos")
    frame = read_manifest(tiny_data)
    for relative in frame.loc[frame["split"] == "test", "path"]:
        shutil.copyfile(tiny_data / relative, folder / (tiny_data / relative).name)
    whole = next(folder.glob("*.jpg")).read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "x.jpg").write_text("not an image\n")
    (folder / "notes.txt").write_text("skipped: not an image file by its name\n")
    return folder


def test_a_folder_gives_the_softmax_of_predicts_logits_and_one_line_per_bad_image(tiny_teacher, tiny_data, photos,
                                                                                  tmp_path):
    expected = predicted(tiny_teacher, tiny_data, tmp_path / "logits.parquet")
    result = run("classify", "--model", tiny_teacher, photos, "--top-k", 3, "--format", "json")
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("Error: 2 of ") and "Traceback" not in result.output, lines
    for name in ("truncated.jpg", "x.jpg"):
        assert sum(str(photos / name) in line for line in lines) == 1, lines
    shown = json.loads(result.stdout)
    assert [entry["image"] for entry in shown] == [str(photos / name) for name in sorted(expected)]
    names = read_manifest(tiny_data).drop_duplicates("label").set_index("label")["class_name"]
    for entry in shown:
        probabilities = scipy.special.softmax(expected[entry["image"].rsplit("/", 1)[1]].astype(np.float64))
        top = np.argsort(-probabilities)[:3]
        assert [p["class_index"] for p in entry["predictions"]] == top.tolist()
        assert [p["class_name"] for p in entry["predictions"]] == [names[c] for c in top]
        np.testing.assert_allclose([p["probability"] for p in entry["predictions"]], probabilities[top], atol=1e-5)
        assert sum(p["probability"] for p in entry["predictions"]) <= 1 + 1e-9


@pytest.mark.parametrize("combine", COMBINES)
def test_an_ensemble_of_two_models_equals_ensemble_scores_of_their_logits(tiny_teacher, second_teacher, tiny_data,
                                                                          photos, tmp_path, combine):
    members = [predicted(m, tiny_data, tmp_path / f"{i}.parquet") for i, m in enumerate((tiny_teacher, second_teacher))]
    result = run("classify", "--model", tiny_teacher, "--model", second_teacher, photos, "--combine", combine,
                 "--format", "csv")
    assert result.exit_code == 1, result.output  # the two bad images
    rows = pd.read_csv(io.StringIO(result.stdout))
    assert list(rows.columns) == ["image", "rank", "class_index", "class_name", "probability"]
    for image, shown in rows.groupby("image", sort=False):
        name = image.rsplit("/", 1)[1]
        scores = next(ensemble_scores([m[name][None] for m in members], combine, [(0, 1)]))[0]
        probabilities = scipy.special.softmax(scores.astype(np.float64)) if combine == "logits" else scores / 2
        order = np.argsort(-scores)
        assert shown["rank"].tolist() == [1, 2, 3, 4]  # --top-k 5 of 4 classes: all four
        assert shown["class_index"].tolist() == order.tolist()
        np.testing.assert_allclose(shown["probability"], probabilities[order], atol=1e-5)
    assert rows["image"].nunique() == len(members[0])


def test_overlays_have_the_images_size_and_show_the_attention_on_the_crop(tiny_teacher, tmp_path):
    images = tmp_path / "images"
    write_image(images / "wide.jpg", 72, 40, seed=1)
    write_image(images / "tall.JPG", 36, 60, seed=2)
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(images / "small.png")
    overlay = tmp_path / "overlay"
    result = run("classify", "--model", tiny_teacher, images, "--overlay", overlay)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in overlay.iterdir()) == ["small.png.png", "tall.JPG.png", "wide.jpg.png"]
    sizes = ImageSizes(TINY.resize, TINY.crop)
    for source in images.iterdir():
        with Image.open(source) as image, Image.open(overlay / f"{source.name}.png") as drawn:
            assert drawn.size == image.size and drawn.format == "PNG"
            original = np.asarray(image.convert("RGB"), dtype=np.int16)
            changed = np.abs(np.asarray(drawn, dtype=np.int16) - original).max(axis=2) > 0
        left, top, right, bottom = centre_crop_box(sizes, *image.size)
        inside = np.zeros_like(changed)
        inside[top:bottom, left:right] = True
        assert changed[inside].mean() > 0.5 and not changed[~inside].any()


@pytest.mark.parametrize("preprocessing", sorted(PREPROCESSING))
@pytest.mark.parametrize("width, height", [(80, 40), (30, 70), (50, 50)])
def test_the_crop_box_is_where_the_test_transforms_crop_comes_from(preprocessing, width, height):
    """An image whose red and green channels are its x and y: the transformed crop's corners say where they came
    from."""
    sizes = ImageSizes(24, 16, preprocessing)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.zeros_like(x)]).astype(np.uint8)
    recipe = PREPROCESSING[preprocessing]
    crop = fgvc_transform(sizes, train=False)(torch.from_numpy(image))
    pixels = crop * torch.tensor(recipe.std).view(3, 1, 1) + torch.tensor(recipe.mean).view(3, 1, 1)
    seen_x = pixels[0, 0, [0, -1]].numpy() * (width - 1)  # x of the centres of the crop's first and last columns
    seen_y = pixels[1, [0, -1], 0].numpy() * (height - 1)
    left, top, right, bottom = centre_crop_box(sizes, width, height)
    column, row = (right - left) / sizes.crop, (bottom - top) / sizes.crop  # one crop pixel in image pixels
    np.testing.assert_allclose(seen_x, [left + column / 2, right - column / 2], atol=max(1.5, column))
    np.testing.assert_allclose(seen_y, [top + row / 2, bottom - row / 2], atol=max(1.5, row))


@pytest.mark.parametrize("preprocessing", sorted(PREPROCESSING))
@pytest.mark.parametrize("width, height", [(1, 1), (1, 60), (60, 1), (2, 3)])
def test_the_crop_box_of_a_tiny_image_is_inside_it_and_at_least_a_pixel(preprocessing, width, height):
    left, top, right, bottom = centre_crop_box(ImageSizes(24, 16, preprocessing), width, height)
    assert 0 <= left < right <= width and 0 <= top < bottom <= height


@pytest.fixture(scope="module")
def odd_names_model(tiny_data, tmp_path_factory):
    """A teacher of a copy of tiny_data whose class names hold commas, quotes, semicolons and a line break."""
    base = tmp_path_factory.mktemp("odd")
    shutil.copytree(tiny_data, base / "data")
    manifest = pd.read_parquet(base / "data" / "manifest.parquet")
    manifest["class_name"] = [ODD_NAMES[label] for label in manifest["label"]]
    manifest.to_parquet(base / "data" / "manifest.parquet")
    return train("teacher", base / "data", base / "teacher", dataclasses.replace(TINY, epochs=1), progress=False)


def test_class_names_with_commas_and_quotes_survive_csv_and_json(odd_names_model, photos):
    image = sorted(photos.glob("Species_*.jpg"))[0]
    parsed = {}
    for output_format in ("csv", "json"):
        result = run("classify", "--model", odd_names_model, image, "--format", output_format)
        assert result.exit_code == 0, result.output
        if output_format == "csv":
            rows = list(csv.DictReader(io.StringIO(result.stdout)))
            parsed[output_format] = [(int(r["class_index"]), r["class_name"], float(r["probability"])) for r in rows]
        else:
            [entry] = json.loads(result.stdout)
            parsed[output_format] = [(p["class_index"], p["class_name"], p["probability"])
                                     for p in entry["predictions"]]
    assert parsed["csv"] == parsed["json"]
    assert [name for _, name, _ in parsed["csv"]] == [ODD_NAMES[index] for index, _, _ in parsed["csv"]]
    assert sorted(name for _, name, _ in parsed["csv"]) == sorted(ODD_NAMES)


def test_models_saved_without_class_names_show_indices_and_say_so_once(tmp_path, photos):
    old, _ = save_model(tmp_path / "teacher" / "model.pt", 4)  # the metadata of an fgkd before class names
    image = sorted(photos.glob("Species_*.jpg"))[0]
    result = run("classify", "--model", old, "--model", old, image, "--format", "table")
    assert result.exit_code == 0, result.output
    notes = result.stderr.splitlines()
    assert len(notes) == 1 and "no class names" in notes[0] and str(old) in notes[0], notes
    table = result.stdout.splitlines()
    assert table[0].split() == ["image", "rank", "probability", "class"] and len(table) == 5
    assert sorted(line.split()[-1] for line in table[1:]) == ["0", "1", "2", "3"]
    assert json.loads(run("classify", "--model", old, image, "--format", "json").stdout)[0]["predictions"][0][
        "class_name"] is None


def with_metadata(source, target, **changes):
    """A copy of a model.pt whose metadata says ``changes``: a model of other inputs or classes."""
    saved = torch.load(source, weights_only=True)
    saved["metadata"].update(changes)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, target)
    return target


def bad_call(case, tiny_teacher, odd_names_model, photos, tmp_path):
    """(the second --model, IMAGE|DIR, texts the one error line must hold)."""
    if case == "crop":
        other = with_metadata(tiny_teacher, tmp_path / "crop" / "model.pt", crop=28)
        return other, photos, [str(other), "crop 28"]
    if case == "preprocessing":
        other = with_metadata(tiny_teacher, tmp_path / "official" / "model.pt", preprocessing="official")
        return other, photos, [str(other), "preprocessing official"]
    if case == "classes":
        other = save_model(tmp_path / "three" / "model.pt", 3)[0]
        return other, photos, [str(other), "3 classes"]
    if case == "class names":
        return odd_names_model, photos, [str(odd_names_model), "class 0"]
    if case == "missing model":
        return tmp_path / "absent" / "model.pt", photos, [str(tmp_path / "absent" / "model.pt"), "no such model"]
    if case == "not a model":
        return photos / "notes.txt", photos, [str(photos / "notes.txt"), "not a PyTorch file"]
    if case == "missing image":
        return tiny_teacher, tmp_path / "absent.jpg", [str(tmp_path / "absent.jpg"), "no such file or folder"]
    (tmp_path / "empty").mkdir()
    return tiny_teacher, tmp_path / "empty", [str(tmp_path / "empty"), "no image files"]


@pytest.mark.parametrize("case", ["crop", "preprocessing", "classes", "class names", "missing model", "not a model",
                                  "missing image", "empty folder"])
def test_bad_models_and_targets_are_one_line_naming_the_culprit(tiny_teacher, odd_names_model, photos, tmp_path, case):
    other, target, culprits = bad_call(case, tiny_teacher, odd_names_model, photos, tmp_path)
    overlay = tmp_path / "overlay"
    result = run("classify", "--model", tiny_teacher, "--model", other, target, "--overlay", overlay)
    one_line_error(result, *culprits)
    assert result.stdout == "" and not overlay.exists()


def test_the_attention_figure_draws_with_the_shared_overlay(tiny_teacher, tiny_data, tmp_path):
    figure = tmp_path / "attention.png"
    result = run("attention", "--model", tiny_teacher, "--model", tiny_teacher, "--data", tiny_data, "--images", 2,
                 "--overlap", tmp_path / "overlap.parquet", "--figure", figure)
    assert result.exit_code == 0, result.output
    with Image.open(figure) as drawn:
        assert drawn.format == "PNG" and len(np.unique(np.asarray(drawn.convert("L")))) > 10


def test_the_official_recipe_of_a_model_is_the_one_classify_uses(official_teacher, tiny_data, photos, tmp_path):
    """Square resize on the PIL image, mean = std = 0.5, from model.pt: classify gives the softmax of predict's
    logits (predict reads the recipe from the model as training did); the imagenet recipe would give others."""
    expected = predicted(official_teacher, tiny_data, tmp_path / "logits.parquet")
    result = run("classify", "--model", official_teacher, *sorted(photos.glob("Species_*.jpg")), "--format", "json",
                 "--top-k", 4)
    assert result.exit_code == 0, result.output
    for entry in json.loads(result.stdout):
        probabilities = scipy.special.softmax(expected[entry["image"].rsplit("/", 1)[1]].astype(np.float64))
        shown = {p["class_index"]: p["probability"] for p in entry["predictions"]}
        np.testing.assert_allclose([shown[c] for c in range(4)], probabilities, atol=1e-5)
    imagenet = with_metadata(official_teacher, tmp_path / "imagenet" / "model.pt", preprocessing="imagenet")
    other = json.loads(run("classify", "--model", imagenet, *sorted(photos.glob("Species_*.jpg")), "--format",
                           "json", "--top-k", 4).stdout)
    assert other != json.loads(result.stdout)  # the check can tell the recipes apart


def test_an_ensembles_overlay_is_the_mean_of_its_members_maps(tiny_teacher, second_teacher, photos, tmp_path):
    from fgkd.attention import attention_heat, blend
    from fgkd.data.dataset import decode_rgb
    from fgkd.losses import attention_energy
    from fgkd.modelfile import input_sizes, load_model

    image = sorted(photos.glob("Species_*.jpg"))[0]
    overlay = tmp_path / "overlay"
    result = run("classify", "--model", tiny_teacher, "--model", second_teacher, image, "--overlay", overlay)
    assert result.exit_code == 0, result.output
    decoded = decode_rgb(image)
    picture = decoded.permute(1, 2, 0).numpy() / 255.0
    sizes = input_sizes(load_model(tiny_teacher)[1])
    left, top, right, bottom = centre_crop_box(sizes, picture.shape[1], picture.shape[0])
    heats = []
    for path in (tiny_teacher, second_teacher):
        network = load_model(path)[0]
        with torch.inference_mode():
            network(fgvc_transform(sizes, train=False)(decoded)[None])
        heats.append(attention_heat(attention_energy(network.attention_features)[0], (bottom - top, right - left)))
    assert np.abs(heats[0] - heats[1]).max() > 0.05  # two members that look at different places
    expected = picture.copy()
    expected[top:bottom, left:right] = blend(picture[top:bottom, left:right], np.mean(heats, axis=0))
    drawn = np.asarray(Image.open(overlay / f"{image.name}.png"), dtype=np.int16)
    assert np.abs(drawn - np.round(expected * 255)).max() <= 1


def test_several_images_and_folders_are_classified_in_the_order_given(tiny_teacher, photos, tmp_path):
    """`fgkd classify --model m photos/*.jpg`: what a shell gives (before: click's "unexpected extra arguments")."""
    species = sorted(photos.glob("Species_*.jpg"))
    more = tmp_path / "more"
    more.mkdir()
    shutil.copyfile(species[0], more / "copy.jpg")
    result = run("classify", "--model", tiny_teacher, species[2], species[1], more, species[2], "--format", "json")
    assert result.exit_code == 0, result.output
    assert [entry["image"] for entry in json.loads(result.stdout)] == [str(species[2]), str(species[1]),
                                                                       str(more / "copy.jpg")]


def test_overlays_among_the_inputs_or_of_two_images_of_one_name_are_refused(tiny_teacher, photos, tmp_path):
    image = sorted(photos.glob("Species_*.jpg"))[0]
    twin = tmp_path / "twin" / image.name
    twin.parent.mkdir()
    shutil.copyfile(image, twin)
    links = tmp_path / "links"
    links.mkdir()
    (links / image.name).symlink_to(image)
    cases = [([photos], photos, f"--overlay {photos}: the folder of"),
             ([links], links, f"--overlay {links}: the folder of"),  # a folder of links to the images
             ([image], photos / "." , "so its overlays would be classified next time"),
             ([image, twin], tmp_path / "overlays", f"{image} and {twin}: both would have the overlay")]
    for targets, overlay, culprit in cases:
        before = sorted(photos.iterdir())
        result = run("classify", "--model", tiny_teacher, *targets, "--overlay", overlay)
        one_line_error(result, culprit)
        assert sorted(photos.iterdir()) == before and not (tmp_path / "overlays").exists()


def test_one_file_under_two_spellings_is_classified_once_and_a_one_pixel_image_gets_its_overlay(tiny_teacher, photos,
                                                                                               tmp_path):
    image = sorted(photos.glob("Species_*.jpg"))[0]
    (tmp_path / "alias").symlink_to(photos)
    thin = tmp_path / "thin"
    thin.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1, 200, 3), dtype=np.uint8)).save(thin / "row.png")
    result = run("classify", "--model", tiny_teacher, image, tmp_path / "alias" / image.name,
                 photos / ".." / photos.name / image.name, thin / "row.png", "--format", "json", "--overlay",
                 tmp_path / "overlays")
    assert result.exit_code == 0, result.output
    assert [entry["image"] for entry in json.loads(result.stdout)] == [str(image), str(thin / "row.png")]
    with Image.open(tmp_path / "overlays" / "row.png.png") as drawn:
        assert drawn.size == (200, 1)  # before: a traceback from a crop of no rows
