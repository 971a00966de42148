"""The synthetic generator: deterministic, CUB layout, and really fine-grained."""

import dataclasses
import hashlib
import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from fgkd.data import synth
from fgkd.errors import FgkdError

pytestmark = pytest.mark.unit


def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("classes,identity_parts", [(3, None), (4, 2)])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, classes, identity_parts):
    a = synth.generate(tmp_path / "a", classes, 4, 32, seed=7, identity_parts=identity_parts)
    b = synth.generate(tmp_path / "b", classes, 4, 32, seed=7, identity_parts=identity_parts)
    c = synth.generate(tmp_path / "c", classes, 4, 32, seed=8, identity_parts=identity_parts)
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


def identity_set(root, classes, parts, images_per_class=4):
    """(synthetic.json, test-split labels 0..C-1) of a generated set in identity-parts mode."""
    root = synth.generate(root, classes, images_per_class, 32, seed=3, identity_parts=parts)
    rows = lambda name: [line.split() for line in (root / name).read_text().splitlines()]  # noqa: E731
    label = {image: int(c) - 1 for image, c in rows("image_class_labels.txt")}
    return json.loads((root / "synthetic.json").read_text()), [label[i] for i, split in rows("train_test_split.txt")
                                                                if split == "0"]


# Every class has the same number of test images, so one slot's best guess is right for one class per marking:
# cap = (markings per slot) / classes. 16 classes, 2 parts: 4 x 4 combinations, 4 markings -> 4/16. 10 classes,
# 2 parts: 4 markings (shared by 3, 3, 2, 2 classes) -> 4/10, not 1/m = 1/2. 7 classes, 2 parts: 3 markings
# (3, 2, 2) -> 3/7. 10 classes, 3 parts: 3 markings -> 3/10. 30 classes, 4 parts: 3 markings -> 3/30.
@pytest.mark.parametrize("classes,parts,markings,cap", [(16, 2, 4, 4 / 16), (10, 2, 4, 4 / 10), (7, 2, 3, 3 / 7),
                                                        (10, 3, 3, 3 / 10), (30, 4, 3, 3 / 30)])
def test_identity_parts_one_part_is_shared_and_capped_all_parts_name_the_class(tmp_path, classes, parts, markings, cap):
    meta, test = identity_set(tmp_path, classes, parts)
    identity, class_parts = meta["identity"], list(meta["class_parts"].values())  # in label order
    m = identity["classes_per_marking"]["min"]
    assert (identity["mode"], identity["parts"], identity["markings_per_slot"]) == ("combination", parts, markings)
    assert identity["slots"] == meta["part_slots"][:parts] and m >= 2
    for slot in range(parts):
        sharing = Counter(names[slot] for names in class_parts)
        assert None not in sharing and len(sharing) == markings and min(sharing.values()) >= m
    assert min(min(Counter(names[s] for names in class_parts).values()) for s in range(parts)) == m
    assert len({tuple(names[:parts]) for names in class_parts}) == classes  # each combination is one class
    assert all(names[parts:] == [None] * (len(synth.PART_SLOTS) - parts) for names in class_parts)
    for slot in range(parts):  # no more markings than colours: each marking is told by its colour alone
        assert len({names[slot].split("-")[0] for names in class_parts}) == markings

    caps = identity["one_part_cap"]
    for slot, name in enumerate(meta["part_slots"]):
        if slot < parts:  # the best lookup table from this slot's marking to a class, scored on the test labels
            best = Counter()
            for (marking, _), images in Counter((class_parts[c][slot], c) for c in test).items():
                best[marking] = max(best[marking], images)
            assert sum(best.values()) / len(test) == caps[name] == pytest.approx(cap)
        else:  # a marking drawn per image says nothing: the most frequent class
            assert caps[name] == max(Counter(test).values()) / len(test) == pytest.approx(1 / classes)
    assert caps["overall"] == max(caps[name] for name in meta["part_slots"]) < 1
    assert identity["one_part_cap_split"] == "test"


def test_in_the_default_mode_synthetic_json_has_no_identity_block(tmp_path):
    meta = json.loads((synth.generate(tmp_path, 4, 2, 32, seed=0) / "synthetic.json").read_text())
    assert "identity" not in meta and all(None not in names for names in meta["class_parts"].values())


@pytest.mark.parametrize("seed", range(3))
def test_identity_classes_differing_in_one_slot_differ_only_there_and_free_slots_are_nuisance(seed):
    rng = np.random.default_rng(seed)
    size, parts = 64, 2
    codes = synth.class_codes(10, rng, parts)
    nuisance = synth.sample_nuisance(rng, size, synth.SynthParams(occlusion_prob=0.0), synth.free_slots(codes))
    assert synth.free_slots(codes) == [2, 3] and sorted(nuisance.free_markings) == [2, 3]
    for slot in range(parts):
        other = 1 - slot
        a, b = next((a, b) for a in range(10) for b in range(10)
                    if a != b and codes[a, other] == codes[b, other] and codes[a, slot] != codes[b, slot])
        changed = np.any(synth.render(codes[a], nuisance, size)[0] != synth.render(codes[b], nuisance, size)[0], axis=2)
        region = synth.part_region(slot, nuisance, size)
        assert changed[region].any() and not changed[~region].any()
    # Same class, another marking in the tail (a free slot): only the tail's region changes.
    tail = (nuisance.free_markings[2] + 1) % synth.VARIANTS_PER_SLOT
    redrawn = dataclasses.replace(nuisance, free_markings={**nuisance.free_markings, 2: tail})
    changed = np.any(synth.render(codes[0], nuisance, size)[0] != synth.render(codes[0], redrawn, size)[0], axis=2)
    region = synth.part_region(2, nuisance, size)
    assert changed[region].any() and not changed[~region].any()


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


ALONE = "some part's marking would belong to one class only, so that part alone would identify it"


@pytest.mark.parametrize("args,message", [
    (["--identity-parts", "1"], "--identity-parts 1: must be 2 to 4, the part slots (head, wing, tail, belly)"),
    (["--identity-parts", "5"], "--identity-parts 5: must be 2 to 4"),
    (["--classes", "145", "--identity-parts", "2"],
     "--classes 145: 2 identity parts of 12 markings each make only 144 combinations"),
    (["--classes", "5", "--identity-parts", "2"], f"--classes 5 with --identity-parts 2: {ALONE}; use --classes 6"),
    (["--classes", "3", "--identity-parts", "4"], f"--classes 3 with --identity-parts 4: {ALONE}; use --classes 4"),
])
def test_impossible_identity_parts_are_one_line_and_write_nothing(tmp_path, args, message):
    from click.testing import CliRunner

    from fgkd.cli import main

    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "raw"), "--images-per-class", "2", *args])
    assert result.exit_code == 1 and result.output.startswith(f"Error: {message}"), result.output
    assert len(result.output.splitlines()) == 1 and not (tmp_path / "raw").exists()


@pytest.mark.parametrize("args,culprit", [(["--occlusion", "nan"], "--occlusion"), (["--occlusion", "5"], "--occlusion"),
                                          (["--seed", "-1"], "--seed"), (["--clutter", "-1"], "--clutter"),
                                          (["--rotation", "nan"], "--rotation"), (["--rotation", "181"], "--rotation"),
                                          (["--scale", "0.9", "0.8"], "--scale 0.9 0.8"),
                                          (["--scale", "0", "0.8"], "--scale 0.0 0.8"),
                                          (["--scale", "0.5", "1.2"], "--scale 0.5 1.2"),
                                          (["--noise", "-1"], "--noise"), (["--noise", "nan"], "--noise"),
                                          (["--part-scale", "1.6"], "--part-scale"),
                                          (["--part-scale", "0.4"], "--part-scale")])
def test_a_setting_the_generator_cannot_draw_is_one_line_and_writes_nothing(tmp_path, args, culprit):
    from click.testing import CliRunner

    from fgkd.cli import main

    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "raw"), "--classes", "2",
                                       "--images-per-class", "2", *args])
    assert result.exit_code == 1 and result.output.startswith(f"Error: {culprit}"), result.output
    assert not (tmp_path / "raw").exists()


def _classes(root):
    return [tuple(parts) for parts in json.loads((root / "synthetic.json").read_text())["class_parts"].values()]


def _shows(parts, other):
    """Whether a class with these markings shows every marking that defines the other class."""
    return all(o is None or p == o for p, o in zip(parts, other))


def test_a_set_of_other_classes_shares_no_class_with_the_excluded_sets(tmp_path):
    """The pretraining set's classes differ from the target sets' (default and combination mode). The first
    excluded set is the very set that the same arguments make without exclusion, so without the feature every
    class would collide; the combination set's 16 classes over 144 combinations would meet about 4 of 40."""
    same = synth.generate(tmp_path / "same", 40, 2, 16, seed=0)
    pairs = synth.generate(tmp_path / "pairs", 16, 2, 16, seed=1, identity_parts=2)
    other = synth.generate(tmp_path / "other", 40, 2, 16, seed=0, exclude_classes_of=[tmp_path / "same",
                                                                                        pairs / "synthetic.json"])
    classes = _classes(other)
    assert len(set(classes)) == 40
    for excluded in [*_classes(same), *_classes(pairs)]:
        assert not any(_shows(parts, excluded) for parts in classes), excluded
    meta = json.loads((other / "synthetic.json").read_text())
    assert meta["excluded_classes"]["classes"] == 56


@pytest.mark.parametrize("args,message", [
    (["--exclude-classes-of", "{tmp}/nowhere"], "--exclude-classes-of {tmp}/nowhere: no synthetic.json there"),
    (["--exclude-classes-of", "{tmp}/bad.json"], "--exclude-classes-of {tmp}/bad.json: not a synthetic.json"),
    (["--exclude-classes-of", "{tmp}/bad.json", "--identity-parts", "2"],
     "--exclude-classes-of works in the default mode only"),
])
def test_a_bad_set_to_exclude_is_one_line_and_writes_nothing(tmp_path, args, message):
    from click.testing import CliRunner

    from fgkd.cli import main

    (tmp_path / "bad.json").write_text('{"classes": 3}')
    args = [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "raw"), "--classes", "6",
                                       "--images-per-class", "2", *args])
    assert result.exit_code == 1 and result.output.startswith(f"Error: {message.format(tmp=tmp_path)}"), result.output
    assert len(result.output.splitlines()) == 1 and not (tmp_path / "raw").exists()


KNOBS = {"clutter": 0, "rotation": 0.0, "scale": [0.8, 0.9], "noise": 0.0, "part_scale": 1.5, "occlusion": 0.0}


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_every_difficulty_option_changes_the_images_and_is_recorded_for_rerendering(tmp_path, knob):
    """Each `fgkd synth` difficulty option reaches the drawing (a set differing from the default in that option
    alone has other pixels) and synthetic.json, from which `fgkd part-occlusion` re-renders the very images."""
    from click.testing import CliRunner

    from fgkd.cli import main
    from fgkd.config import cli_flags
    from fgkd.data.images import open_rgb
    from fgkd.data.prepare import JPEG_QUALITY
    from fgkd.occlusion import rerender

    def made(out, options):
        result = CliRunner().invoke(main, ["synth", "--out", str(out), "--classes", "3", "--images-per-class", "4",
                                           "--size", "32", *cli_flags(options)])
        assert result.exit_code == 0, result.output
        return out / "CUB_200_2011"

    default, changed = made(tmp_path / "default", {}), made(tmp_path / "changed", {knob: KNOBS[knob]})
    pictures = [np.asarray(Image.open(root / "images" / path)) for root in (default, changed)
                for path in [(default / "images.txt").read_text().split()[1]]]
    assert not np.array_equal(*pictures), knob
    params = json.loads((changed / "synthetic.json").read_text())["params"]
    assert params[synth.SYNTH_KNOBS[knob]] == KNOBS[knob]
    prepared = io.BytesIO()  # the stored image, encoded once more as `fgkd prepare` does
    Image.fromarray(pictures[1]).save(prepared, format="JPEG", quality=JPEG_QUALITY)
    again = rerender(changed.parent, [1], [0], None)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(again, np.asarray(open_rgb(io.BytesIO(prepared.getvalue()))))


def _wing_under_belly(part_scale, images=300, size=64):
    """Mean share of the wing marking's disc that the belly marking's disc covers, over drawn images."""
    params = synth.SynthParams(occlusion_prob=0.0, part_scale=part_scale)
    ys, xs = np.mgrid[0:size * synth.SUPERSAMPLE, 0:size * synth.SUPERSAMPLE].astype(np.float32) + 0.5
    shares = []
    for index in range(images):
        nuisance = synth.sample_nuisance(np.random.default_rng(index), size, params)
        u, v = synth._body_frame(nuisance, xs, ys, synth.SUPERSAMPLE)
        discs = []
        for slot in (1, 3):  # wing, belly
            pu, pv, radius = synth._slot_geometry(slot, nuisance)
            discs.append(np.hypot(u - pu, v - pv) <= 0.9 * radius)  # the glyphs' extent
        shares.append((discs[0] & discs[1]).sum() / discs[0].sum())
    return float(np.mean(shares))


def test_the_part_scale_limit_keeps_the_wing_and_the_belly_apart():
    """The figures of docs/reference/synthetic-data.md: 0.8% at the default 1.3, 3.5% at the limit."""
    assert synth.PART_SLOTS[1].name == "wing" and synth.PART_SLOTS[3].name == "belly"
    assert round(100 * _wing_under_belly(synth.SynthParams().part_scale), 1) == 0.8
    assert round(100 * _wing_under_belly(synth.MAX_PART_SCALE), 1) == 3.5


def test_an_identity_slot_with_more_markings_than_colours_still_has_distinct_markings():
    """7 markings per slot (37 to 49 classes over 2 parts) cannot all differ in colour: they differ as variants."""
    codes = synth.class_codes(40, np.random.default_rng(0), identity_parts=2)
    for slot in range(2):
        markings = set(codes[:, slot].tolist())
        assert len(markings) == 7 and len({synth.marking(slot, v)[1] for v in markings}) < 7
