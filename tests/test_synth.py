"""The synthetic generator: deterministic, CUB layout, and really fine-grained."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from fgkd.data import synth
from fgkd.errors import FgkdError


def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = synth.generate(tmp_path / "a", 3, 4, 32, seed=7)
    b = synth.generate(tmp_path / "b", 3, 4, 32, seed=7)
    c = synth.generate(tmp_path / "c", 3, 4, 32, seed=8)
    assert digest(a) == digest(b)
    images = lambda d: {k: v for k, v in d.items() if k.endswith(".jpg")}  # noqa: E731
    assert set(images(digest(a)).values()).isdisjoint(images(digest(c)).values())


def test_cub_layout_and_counts(tmp_path):
    root = synth.generate(tmp_path, classes=5, images_per_class=6, size=40, seed=1)
    lines = lambda name: (root / name).read_text().splitlines()  # noqa: E731
    assert len(lines("classes.txt")) == 5
    images = [line.split() for line in lines("images.txt")]
    assert [int(i) for i, _ in images] == list(range(1, 31))
    for _, relative in images:
        with Image.open(root / "images" / relative) as image:
            assert image.format == "JPEG" and image.size == (40, 40)
        assert relative.split("/")[0] in {line.split()[1] for line in lines("classes.txt")}
    labels = [int(line.split()[1]) for line in lines("image_class_labels.txt")]
    assert sorted(set(labels)) == [1, 2, 3, 4, 5] and all(labels.count(c) == 6 for c in range(1, 6))
    splits = [int(line.split()[1]) for line in lines("train_test_split.txt")]
    for c in range(1, 6):
        of_class = [s for s, lab in zip(splits, labels) if lab == c]
        assert of_class.count(0) == 3 and of_class.count(1) == 3
    assert len(lines("bounding_boxes.txt")) == 30
    assert len(lines("parts/part_locs.txt")) == 30 * len(synth.PART_SLOTS)


def test_each_part_slot_alone_identifies_the_class():
    n = synth.VARIANTS_PER_SLOT
    codes = synth.class_codes(n, np.random.default_rng(0))
    assert codes.shape == (n, len(synth.PART_SLOTS))
    for slot in range(codes.shape[1]):
        assert len(set(codes[:, slot])) == n
        assert len({synth.variant_name(slot, v) for v in codes[:, slot]}) == n  # distinct markings too
    glyphs = [{synth.marking(slot, v)[0] for v in range(n)} for slot in range(len(synth.PART_SLOTS))]
    assert all(a.isdisjoint(b) for i, a in enumerate(glyphs) for b in glyphs[i + 1:])  # a marking names its slot
    many = synth.class_codes(200, np.random.default_rng(0))
    assert len({tuple(row) for row in many}) == 200


@pytest.mark.parametrize("seed", range(5))
def test_two_classes_under_the_same_nuisance_differ_only_inside_part_regions(seed):
    rng = np.random.default_rng(seed)
    size = 64
    nuisance = synth.sample_nuisance(rng, size, synth.SynthParams(occlusion_prob=0.0))
    codes = synth.class_codes(2, rng)
    first, mask = synth.render(codes[0], nuisance, size)
    second, _ = synth.render(codes[1], nuisance, size)
    changed = np.any(first != second, axis=2)
    regions = np.zeros((size, size), bool)
    for slot in range(len(synth.PART_SLOTS)):
        region = synth.part_region(slot, nuisance, size)
        regions |= region
        if region.any():  # every visible slot shows the difference
            assert changed[region].any()
    assert changed.any() and not changed[~regions].any()
    assert changed.sum() < 0.4 * mask.sum()  # parts are small next to the shared body


def test_occluded_parts_are_hidden_and_marked_invisible(tmp_path):
    size = 64
    nuisance = synth.sample_nuisance(np.random.default_rng(3), size, synth.SynthParams(occlusion_prob=1.0))
    assert sum(nuisance.occluded) == len(synth.PART_SLOTS) - 1  # one part always stays visible
    codes = synth.class_codes(2, np.random.default_rng(1))
    first, _ = synth.render(codes[0], nuisance, size)
    second, _ = synth.render(codes[1], nuisance, size)
    changed = np.any(first != second, axis=2)
    visible = nuisance.occluded.index(False)
    assert not changed[~synth.part_region(visible, nuisance, size)].any()

    root = synth.generate(tmp_path, 3, 10, 48, seed=2, params=synth.SynthParams(occlusion_prob=0.5))
    flags = [int(line.split()[4]) for line in (root / "parts/part_locs.txt").read_text().splitlines()]
    assert 0 < flags.count(0) < len(flags)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(FgkdError, match="--classes"):
        synth.generate(tmp_path, 1, 4, 32, 0)
    with pytest.raises(FgkdError, match="--images-per-class"):
        synth.generate(tmp_path, 3, 1, 32, 0)
    synth.generate(tmp_path, 2, 2, 32, 0)
    with pytest.raises(FgkdError, match="already holds"):
        synth.generate(tmp_path, 2, 2, 32, 0)


@pytest.mark.parametrize("args,culprit", [(["--occlusion", "nan"], "--occlusion"), (["--occlusion", "5"], "--occlusion"),
                                          (["--seed", "-1"], "--seed")])
def test_an_occlusion_outside_0_1_or_a_negative_seed_is_one_line_and_writes_nothing(tmp_path, args, culprit):
    from click.testing import CliRunner

    from fgkd.cli import main

    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "raw"), "--classes", "2",
                                       "--images-per-class", "2", *args])
    assert result.exit_code == 1 and result.output.startswith(f"Error: {culprit}"), result.output
    assert not (tmp_path / "raw").exists()
