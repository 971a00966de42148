"""The two input recipes: `official` (PRIS-CV/knowledge-transfer-based-FGVC train.py/test.py) and fgkd's `imagenet`;
each model.pt records its recipe, and every use of the model (predict, part occlusion, earlier networks) follows it."""

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision import transforms as v1
from torchvision.transforms import v2

from fgkd.cli import main
from fgkd.data.dataset import load_split
from fgkd.data.recipes import IMAGENET_MEAN, IMAGENET_STD, ImageSizes
from fgkd.data.manifest import read_manifest
from fgkd.data.prepare import prepare
from fgkd.errors import FgkdError
from fgkd.modelfile import load_model
from fgkd.train import TrainConfig, train
from artifacts import one_line_error, save_model
from conftest import TINY
from fixtures import make_cub


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A prepared CUB-layout set of real, non-square JPEGs (40..96 x 32..40 px), 3 classes x 8 images."""
    base = tmp_path_factory.mktemp("photos")
    make_cub(base / "raw", classes=3, per_class=8)
    return prepare("cub", base / "raw", base / "prepared", progress=False).parent


def official(resize: int, crop: int, train: bool):
    """The official code's transforms, as written in its train.py and test.py (torchvision v1, on PIL images)."""
    spatial = [v1.RandomCrop(crop, padding=8), v1.RandomHorizontalFlip()] if train else [v1.CenterCrop(crop)]
    return v1.Compose([v1.Resize((resize, resize)), *spatial, v1.ToTensor(), v1.Normalize((0.5,) * 3, (0.5,) * 3)])


def imagenet(resize: int, crop: int, train: bool):
    """fgkd's recipe before the choice existed: the short side to resize, ImageNet statistics, on the uint8 tensor."""
    spatial = [v2.RandomCrop(crop), v2.RandomHorizontalFlip()] if train else [v2.CenterCrop(crop)]
    return v2.Compose([v2.Resize(resize, antialias=True), *spatial, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def decoded(path, recipe: str):
    image = Image.open(path).convert("RGB")
    return image if recipe == "official" else torch.from_numpy(np.array(image)).permute(2, 0, 1)


@pytest.mark.parametrize("recipe,reference,exact", [("official", official, False), ("imagenet", imagenet, True)])
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("resize,crop", [(40, 32), (16, 12)])  # up and down: downscaling is antialiased
def test_each_recipe_gives_what_its_reference_transforms_give_on_real_non_square_images(photos, recipe, reference,
                                                                                        exact, split, resize, crop):
    """Same seed, same crop and flip: the random draws are the reference's too. `official` to float rounding (ToTensor
    divides, fgkd multiplies), `imagenet` to the bit (byte-identical to fgkd before the choice)."""
    dataset = load_split(photos, split, ImageSizes(resize, crop, recipe))
    frame = read_manifest(photos)
    paths = frame[frame.split == split]["path"].tolist()
    sizes = [Image.open(photos / p).size for p in paths]
    assert sum(width != height for width, height in sizes) >= len(sizes) - 1  # one 40 x 40 among them
    transform = reference(resize, crop, split == "train")
    for index in range(len(paths)):
        torch.manual_seed(index)
        ours = dataset[index][0]
        torch.manual_seed(index)
        expected = transform(decoded(photos / paths[index], recipe))
        assert ours.shape == (3, crop, crop)
        if exact:
            assert torch.equal(ours, expected), index
        else:
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def official_teacher(photos, tmp_path_factory):
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "preprocessing": "official", "val_fraction": 0.0})
    return train("teacher", photos, tmp_path_factory.mktemp("official") / "teacher", config, progress=False)


def test_predict_uses_the_preprocessing_saved_in_the_model(photos, official_teacher, tmp_path):
    _, meta = load_model(official_teacher)
    assert meta["preprocessing"] == "official"
    out = tmp_path / "logits.parquet"
    result = CliRunner().invoke(main, ["predict", "--model", str(official_teacher), "--data", str(photos),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    logits = pd.read_parquet(out).filter(like="logit_").to_numpy()

    frame = read_manifest(photos)
    paths = frame[frame.split == "test"]["path"]
    model, _ = load_model(official_teacher)
    with torch.inference_mode():
        as_official = model(torch.stack([official(36, 32, False)(decoded(photos / p, "official")) for p in paths]))
        as_imagenet = model(torch.stack([imagenet(36, 32, False)(decoded(photos / p, "imagenet")) for p in paths]))
    np.testing.assert_allclose(logits, as_official.numpy(), rtol=0, atol=1e-4)
    assert np.abs(logits - as_imagenet.numpy()).max() > 0.1


def test_part_occlusion_follows_the_models_preprocessing(tiny_data, tmp_path):
    """Its "as generated" condition re-renders the test images. Kept as test images: those the model classifies
    right on official inputs and wrong on imagenet ones (both computed here with the reference transforms), so the
    condition scores 100% with the model's preprocessing and 0% with the other."""
    import shutil

    from fgkd.atomic import write_parquet
    from fgkd.occlusion import part_occlusion

    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "preprocessing": "official"})
    teacher = train("teacher", tiny_data, tmp_path / "teacher", config, progress=False)
    data = shutil.copytree(tiny_data, tmp_path / "chosen")
    frame = read_manifest(data)
    test = frame[frame.split == "test"]
    model, _ = load_model(teacher)
    with torch.inference_mode():
        right = {recipe: model(torch.stack([reference(36, 32, False)(decoded(data / p, recipe)) for p in test.path]))
                 .argmax(1).numpy() == test.label.to_numpy() for recipe, reference in
                 (("official", official), ("imagenet", imagenet))}
    chosen = test.index[right["official"] & ~right["imagenet"]]
    assert len(chosen), "no test image tells the two recipes apart; train the model differently"
    frame.loc[test.index.difference(chosen), "split"] = "train"
    write_parquet(frame, data / "manifest.parquet")
    table = part_occlusion(tiny_data.parent / "raw", data, [teacher], tmp_path / "occlusion.parquet")
    assert table.query("network == 'teacher' and condition == 'as generated'")["top1"].iloc[0] == 1.0


@pytest.mark.parametrize("option,value", [("preprocessing", "official"), ("resize", 40), ("crop", 28)])
def test_an_earlier_network_of_other_inputs_is_refused_in_one_line(tiny_data, tmp_path, option, value):
    """A model.pt of an earlier fgkd (no preprocessing key) was trained on imagenet's inputs, here 36 -> 32."""
    teacher, _ = save_model(tmp_path / "teacher" / "model.pt", 4)
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1})
    student = train("student", tiny_data, tmp_path / "fits", config, [teacher], index=1, progress=False)
    assert load_model(student)[1]["preprocessing"] == "imagenet"
    config = TrainConfig(**{**config.__dict__, option: value})
    with pytest.raises(FgkdError) as caught:
        train("student", tiny_data, tmp_path / "other", config, [teacher], index=1, progress=False)
    message = str(caught.value)
    assert message.startswith(f"{teacher}: trained on preprocessing imagenet, resize 36, crop 32, this stage on")
    assert f"{option} {value}" in message and "\n" not in message
    assert not (tmp_path / "other" / "model.pt").exists()


def test_an_unknown_preprocessing_is_one_line(tiny_data, tmp_path):
    result = CliRunner().invoke(main, ["train", "--stage", "teacher", "--data", str(tiny_data), "--out",
                                       str(tmp_path / "t"), "--backbone", "resnet10", "--preprocessing", "squash"])
    one_line_error(result, "'--preprocessing'", "'squash' is not one of 'imagenet', 'official'", exit_code=2)
    assert not (tmp_path / "t").exists()


def test_attention_refuses_models_of_other_inputs_in_one_line(photos, official_teacher, tmp_path):
    """They are shown one batch of images: it can be right for one recipe only."""
    older, _ = save_model(tmp_path / "older" / "model.pt", 3)  # no preprocessing key: imagenet
    figure = tmp_path / "attention.png"
    result = CliRunner().invoke(main, ["attention", "--model", str(official_teacher), "--model", str(older), "--data",
                                       str(photos), "--overlap", str(tmp_path / "overlap.parquet"), "--figure",
                                       str(figure)])
    one_line_error(result, f"{older}: trained on preprocessing imagenet",
                   f"{official_teacher} on preprocessing official")
    assert not figure.exists()
