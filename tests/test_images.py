"""One image decoder for every input: a 16-bit PNG, 32-bit and float TIFFs and a photo with an EXIF orientation give
the pixels of their 8-bit upright equivalent in `fgkd prepare`, the data set, `fgkd classify` and its overlays."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fgkd
from fgkd.cli import main
from fgkd.data.dataset import decode_rgb
from fgkd.data.images import open_rgb
from fgkd.data.manifest import read_manifest
from fgkd.data.prepare import prepare
from fixtures import STORED, make_cub, write_oriented


def grey_picture(seed: int = 0, height: int = 40, width: int = 56) -> np.ndarray:
    """8-bit grey blocks spanning 0..255 (so that min..max scaling of wide images gives them back exactly)."""
    blocks = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))
    pixels.flat[0], pixels.flat[-1] = 0, 255
    return pixels


def write_odd(path, grey: np.ndarray, kind: str) -> None:
    """The grey picture as a 16-bit PNG, a 32-bit integer TIFF or a 0..1 float TIFF."""
    if kind == "png16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(path, format="PNG")
    elif kind == "tif32":
        Image.fromarray(grey.astype(np.int32) * 1000 - 7).save(path, format="TIFF")
    else:
        Image.fromarray(grey.astype(np.float32) / 255).save(path, format="TIFF")


ODD = ["png16", "tif32", "float"]


def classified(model, image, overlays):
    """`fgkd classify` of one image (a batch of one, as the batch's make-up can move logits in the last bits): its
    classes and probabilities, and its overlay's bytes."""
    result = CliRunner().invoke(main, ["classify", "--model", str(model), str(image), "--format", "csv", "--top-k",
                                       "4", "--overlay", str(overlays)])
    assert result.exit_code == 0, result.output
    rows = [line.split(",")[2:] for line in result.stdout.splitlines()[1:]]
    return rows, (overlays / f"{image.name}.png").read_bytes()


@pytest.mark.parametrize("kind", ODD)
def test_wide_pixels_decode_to_their_8_bit_picture(tmp_path, kind):
    grey = grey_picture()
    path = tmp_path / f"odd.{'png' if kind == 'png16' else 'tif'}"
    write_odd(path, grey, kind)
    with Image.open(path) as image:
        assert image.mode in ("I;16", "I", "F")  # the case under test, as PIL reads it
    assert np.array_equal(np.asarray(open_rgb(path)), np.stack([grey] * 3, axis=-1))
    assert np.array_equal(decode_rgb(path).permute(1, 2, 0).numpy(), np.stack([grey] * 3, axis=-1))


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_an_exif_orientation_is_applied(tmp_path, orientation):
    rgb = np.random.default_rng(orientation).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    write_oriented(tmp_path / "photo.png", rgb, orientation)
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "photo.png")), rgb)
    assert np.array_equal(decode_rgb(tmp_path / "photo.png").permute(1, 2, 0).numpy(), rgb)


def test_a_phone_jpeg_turned_by_exif_is_prepared_upright(tmp_path):
    """prepare, like every other path: the copy shows the picture upright (not sideways)."""
    rows = make_cub(tmp_path / "raw", classes=2, per_class=2)
    upright = np.zeros((48, 64, 3), dtype=np.uint8)
    upright[:16] = (255, 255, 255)  # white on top: the landscape picture as it was taken
    write_oriented(rows[0]["source"], upright, 6, "JPEG")
    with Image.open(rows[0]["source"]) as stored:
        assert stored.size == (48, 64)  # portrait on disk
    prepare("cub", tmp_path / "raw", tmp_path / "prepared", resize=32, progress=False)
    copy = np.asarray(Image.open(tmp_path / "prepared" / rows[0]["path"]).convert("L"), dtype=np.float64)
    assert copy.shape == (32, 43) and copy[:10].mean() > 200 and copy[-10:].mean() < 50


def test_prepare_classify_and_the_overlays_see_an_odd_image_as_its_8_bit_upright_twin(tiny_teacher, tiny_data,
                                                                                      tmp_path):
    """classify's probabilities and overlays of each odd file equal those of the plain 8-bit PNG of the same
    picture (before: a 16-bit PNG was all white and a float TIFF all black, classified with confidence)."""
    frame = read_manifest(tiny_data)
    source = tiny_data / frame.loc[frame["split"] == "test", "path"].iloc[0]
    grey = np.asarray(Image.open(source).convert("L"))
    grey = np.round((grey - grey.min()) * (255 / (grey.max() - grey.min()))).astype(np.uint8)  # spans 0..255
    rgb = np.asarray(Image.open(source).convert("RGB"))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(grey).save(photos / "a_plain_grey.png")
    Image.fromarray(rgb).save(photos / "b_plain_rgb.png")
    for kind in ODD:
        write_odd(photos / f"c_{kind}.{'png' if kind == 'png16' else 'tif'}", grey, kind)
    write_oriented(photos / "d_turned.png", rgb, 6)
    seen = {path.name: classified(tiny_teacher, path, tmp_path / "overlays" / path.stem) for path in photos.iterdir()}
    for name in ["c_png16.png", "c_tif32.tif", "c_float.tif"]:
        assert seen[name] == seen["a_plain_grey.png"], name
    assert seen["d_turned.png"] == seen["b_plain_rgb.png"]
    assert seen["a_plain_grey.png"][0] != seen["b_plain_rgb.png"][0]  # the comparison can tell pictures apart

    # prepare: the same picture in each format makes the same copy, byte for byte.
    raw = tmp_path / "raw"
    sources = make_cub(raw, classes=2, per_class=2)
    Image.fromarray(grey).save(sources[0]["source"], format="PNG")  # kept under its .jpg name: decoded by content
    write_odd(sources[1]["source"], grey, "png16")
    write_odd(sources[2]["source"], grey, "float")
    prepare("cub", raw, tmp_path / "prepared", resize=32, progress=False)
    copies = [(tmp_path / "prepared" / row["path"]).read_bytes() for row in sources[:3]]
    assert copies[0] == copies[1] == copies[2]


def test_no_other_module_decodes_image_files():
    """One decoder: a second `Image.open` is where a path stops scaling wide pixels or turning photos upright."""
    package = Path(fgkd.__file__).parent
    openers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "Image.open(" in p.read_text())
    assert openers == ["data/images.py"]
