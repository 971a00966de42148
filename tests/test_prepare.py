"""`fgkd prepare` on fixture trees in each official layout, as folders and as archives."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from fgkd.cli import main
from fgkd.data.prepare import prepare
from fixtures import CARS_LAYOUTS, add_cub_image, archive, correlation, decoded, make_aircraft, make_cars, make_cub

pytestmark = pytest.mark.unit

BUILDERS = {"cub": make_cub, "cars": make_cars, "aircraft": make_aircraft}
BANNER = {"aircraft": 20}


def assert_manifest_matches(out, expected_rows, banner=0):
    """The manifest has exactly the expected rows, and each image is a JPEG copy of its own source."""
    manifest = pd.read_parquet(out / "manifest.parquet")
    expected = pd.DataFrame(expected_rows).sort_values("image_id").reset_index(drop=True)
    assert list(manifest.columns) == ["image_id", "path", "label", "class_name", "split"]
    assert manifest["image_id"].dtype == "int64" and manifest["label"].dtype == "int64"
    assert manifest.to_dict("records") == expected.drop(columns="source").to_dict("records")
    for path, source in zip(manifest["path"], expected["source"]):
        with Image.open(out / path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
        assert correlation(out / path, decoded(source, banner)) > 0.9, path


@pytest.mark.parametrize("dataset", BUILDERS)
def test_folder_layout_gives_the_expected_manifest(tmp_path, dataset):
    rows = BUILDERS[dataset](tmp_path / "raw")
    prepare(dataset, tmp_path / "raw", tmp_path / "out", progress=False)
    assert_manifest_matches(tmp_path / "out", rows, BANNER.get(dataset, 0))


@pytest.mark.parametrize("layout", [layout for layout in CARS_LAYOUTS if layout != "devkit"])
def test_every_stanford_cars_layout_gives_the_expected_manifest(tmp_path, layout):
    rows = make_cars(tmp_path / "raw", layout=layout)
    prepare("cars", tmp_path / "raw", tmp_path / "out", resize=24, progress=False)
    assert_manifest_matches(tmp_path / "out", rows)


@pytest.mark.parametrize("dataset,name", [("cub", "CUB_200_2011.tgz"), ("aircraft", "fgvc-aircraft-2013b.tar.gz"),
                                          ("cars", "stanford_cars.zip")])
def test_official_archive_is_unpacked_first(tmp_path, dataset, name):
    rows = BUILDERS[dataset](tmp_path / "raw")
    packed = archive(tmp_path / "raw", tmp_path / name)
    prepare(dataset, packed, tmp_path / "out", progress=False)
    assert_manifest_matches(tmp_path / "out", rows, BANNER.get(dataset, 0))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no unpacked leftovers


def test_resize_keeps_aspect_on_the_short_side_and_never_upscales(tmp_path):
    rows = make_cub(tmp_path / "raw", classes=2, per_class=3)
    prepare("cub", tmp_path / "raw", tmp_path / "out", resize=24, progress=False)
    assert_manifest_matches(tmp_path / "out", rows)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    for path in manifest["path"]:
        with Image.open(tmp_path / "raw" / "CUB_200_2011" / path) as original, Image.open(tmp_path / "out" / path) as small:
            assert min(small.size) == 24
            assert small.width / small.height == pytest.approx(original.width / original.height, abs=0.06)
    prepare("cub", tmp_path / "raw", tmp_path / "big", resize=4096, progress=False)
    for path in manifest["path"]:
        with Image.open(tmp_path / "raw" / "CUB_200_2011" / path) as original, Image.open(tmp_path / "big" / path) as copy:
            assert copy.size == original.size


def test_aircraft_banner_is_cropped(tmp_path):
    make_aircraft(tmp_path / "raw")
    prepare("aircraft", tmp_path / "raw", tmp_path / "out", progress=False)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    with Image.open(tmp_path / "out" / manifest["path"][0]) as image:
        assert image.size == (64, 40)
        bottom = np.asarray(image)[-2:].reshape(-1, 3)
        assert not any(r > 200 and g < 60 and b > 200 for r, g, b in bottom)  # no magenta banner left


@pytest.mark.parametrize("height,resize", [(900, 64), (800, 100)])
def test_aircraft_banner_of_a_large_image_is_gone_after_resizing(tmp_path, height, resize):
    """A JPEG decoded at reduced scale (draft) holds the banner in 2.5 rows: the cut must take the partial one."""
    make_aircraft(tmp_path / "raw")
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 86, (height // 16, 1200 // 16, 3), dtype=np.uint8)
    blocks[..., 1] += 128  # green-grey content: magenta rows would stand out
    pixels = np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))
    pixels[-20:] = (255, 0, 255)
    source = tmp_path / "raw" / "fgvc-aircraft-2013b" / "data" / "images" / "1000007.jpg"
    Image.fromarray(pixels).save(source, quality=95)
    prepare("aircraft", tmp_path / "raw", tmp_path / "out", resize=resize, progress=False)
    copy = tmp_path / "out" / "images" / "1000007.jpg"
    with Image.open(copy) as image:
        assert min(image.size) == resize
        rgb = np.asarray(image, dtype=np.float64)
    rows = ((rgb[..., 0] + rgb[..., 2]) / 2 - rgb[..., 1]).mean(axis=1)  # magenta: content about -128, banner +255
    assert rows.max() < np.median(rows) + 20, rows[-3:]
    assert correlation(copy, pixels[:-20]) > 0.9


def test_same_name_with_another_extension_stays_a_separate_image(tmp_path):
    """x.jpg and x.png in one folder: two files in the output, each a copy of its own source."""
    make_cub(tmp_path / "raw", classes=2, per_class=2)
    folder = tmp_path / "raw" / "CUB_200_2011" / "images" / "001.Bird_A"
    jpg = next(folder.glob("*.jpg"))
    png_pixels = 255 - decoded(jpg)  # the negative: unrelated content would not tell them apart as surely
    add_cub_image(tmp_path / "raw", f"001.Bird_A/{jpg.stem}.png", png_pixels, class_id=1, train=False)
    prepare("cub", tmp_path / "raw", tmp_path / "out", progress=False)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    paths = {Path(p).name: tmp_path / "out" / p for p in manifest["path"] if Path(p).name.startswith(jpg.stem)}
    assert sorted(paths) == [jpg.name, f"{jpg.stem}.png.jpg"]
    assert correlation(paths[jpg.name], decoded(jpg)) > 0.9
    assert correlation(paths[f"{jpg.stem}.png.jpg"], png_pixels) > 0.9


@pytest.mark.parametrize("name,dtype,scale", [("deep.png", np.uint16, 65535), ("float.tif", np.float32, 1.0),
                                              ("wide.tif", np.int32, 1e6)])
def test_16_bit_32_bit_and_float_images_keep_their_pixels(tmp_path, name, dtype, scale):
    """PIL's convert("RGB") clips such pixels to 0..255: a 16-bit PNG came out white, a 0..1 float TIFF black."""
    make_cub(tmp_path / "raw", classes=2, per_class=2)
    levels = 0.2 + 0.4 * np.kron(np.random.default_rng(1).random((6, 8)), np.ones((8, 8)))  # 8 x 8 blocks
    pixels = (levels * scale).astype(dtype)
    add_cub_image(tmp_path / "raw", f"001.Bird_A/{name}", pixels)
    with Image.open(tmp_path / "raw" / "CUB_200_2011" / "images" / "001.Bird_A" / name) as image:
        assert image.mode in ("I;16", "F", "I")  # the case under test, as PIL reads it
    prepare("cub", tmp_path / "raw", tmp_path / "out", resize=24, progress=False)
    copy = tmp_path / "out" / "images" / "001.Bird_A" / f"{name}.jpg"
    with Image.open(copy) as image:
        grey = np.asarray(image.convert("L"), dtype=np.float64)
    # 16 bits by their full range 0..65535; 32-bit and float images by their own min..max.
    expected = pixels / 257 if dtype == np.uint16 else (pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255
    assert abs(grey.mean() - expected.mean()) < 8 and grey.std() > 15, grey.mean()  # never all white or black
    assert correlation(copy, pixels.astype(np.float64)) > 0.9


def test_synthetic_set_goes_through_the_cub_adapter(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["synth", "--out", str(tmp_path / "raw"), "--classes", "4",
                                  "--images-per-class", "6", "--size", "48", "--seed", "3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["prepare", "cub", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == 24 and sorted(manifest["label"].unique()) == [0, 1, 2, 3]
    assert set(manifest.groupby("label")["split"].value_counts().index.get_level_values(1)) == {"train", "test"}


def test_rerun_replaces_a_prepared_output(tmp_path):
    make_cub(tmp_path / "raw")
    prepare("cub", tmp_path / "raw", tmp_path / "out", resize=24, progress=False)
    prepare("cub", tmp_path / "raw", tmp_path / "out", resize=32, progress=False)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    with Image.open(tmp_path / "out" / manifest["path"][0]) as image:
        assert min(image.size) == 32


def test_outputs_are_readable_by_others_as_the_umask_allows(tmp_path):
    import os
    import stat

    from fgkd.atomic import write_parquet

    previous = os.umask(0o022)
    try:
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "x.parquet")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "x.parquet").stat().st_mode) == 0o644
