"""The attention shares of `fgkd part-occlusion` against maps whose answer is known, and the part masks against the
pixels the parts are drawn on, after the test transform."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from fgkd.data import synth
from fgkd.data.dataset import fgvc_transform, unnormalise
from fgkd.data.recipes import ImageSizes
from fgkd.occlusion import PARTS, carry_masks, part_attention, part_owners, scenes

pytestmark = pytest.mark.unit

WING = [p.name for p in synth.PART_SLOTS].index("wing")


@pytest.fixture(scope="module")
def test_images(tiny_data):
    """(raw folder, image ids, labels) of tiny_data's test split."""
    manifest = pd.read_parquet(tiny_data / "manifest.parquet")
    test = manifest[manifest.split == "test"]
    return tiny_data.parent / "raw", test["image_id"].tolist(), test["label"].tolist()


def test_part_owners_split_overlapping_regions_by_the_nearer_centre(test_images):
    """Nearer measured in the object's frame (body units: the image's distances scaled alike), from the pixels to the
    slots, where part_owners measures from the slots' centres drawn into the image."""
    size, drawn = scenes(*test_images)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    contested = 0
    for _, nuisance in drawn:
        owners = part_owners(nuisance, size)
        regions = np.stack([synth.part_region(s, nuisance, size) for s in range(len(synth.PART_SLOTS))])
        assert ((owners >= 0) == regions.any(axis=0)).all()
        for slot, region in enumerate(regions):
            assert not (owners == slot)[~region].any()
        u, v = synth._body_frame(nuisance, xs, ys, 1)
        distance = np.stack([np.hypot(u - pu, v - pv) for pu, pv, _ in
                             (synth._slot_geometry(s, nuisance) for s in range(len(regions)))])
        for y, x in zip(*np.nonzero(regions.sum(axis=0) > 1)):
            assert distance[owners[y, x], y, x] <= distance[regions[:, y, x], y, x].min() + 1e-6
            contested += 1
    assert contested > 0  # the regions do overlap: wing and belly


def test_attention_on_one_part_is_that_parts_share_and_a_uniform_map_gives_the_areas(test_images):
    """Where the crop is the whole image (resize = crop = image size), the masks are exactly the owners: a map that is
    1 on the wing's pixels puts all its attention there, one that is uniform gives each part its share of pixels. An
    image whose map is zero everywhere is left out of the mean; a network with no attention at all has none."""
    raw, ids, labels = test_images
    size, drawn = scenes(raw, ids, labels)
    owners = torch.from_numpy(np.stack([part_owners(nuisance, size) for _, nuisance in drawn]))
    wing = (owners == WING).float()
    blank_first = wing.clone()
    blank_first[0] = 0
    energies = {"on_wing": wing, "uniform": torch.ones(len(ids), 4, 4), "blank_first": blank_first,
                "blank": torch.zeros(len(ids), 4, 4)}
    table = part_attention(raw, ids, labels, energies, ImageSizes(size, size), batch_size=5)
    assert table.columns.tolist() == ["network", "part", "share", "area"]
    share = table.pivot(index="network", columns="part", values="share")[list(PARTS)]
    area = table.pivot(index="network", columns="part", values="area")[list(PARTS)]
    expected_area = [float((owners == slot).double().mean()) for slot in [*range(len(PARTS) - 1), -1]]
    for network in energies:
        assert area.loc[network].tolist() == pytest.approx(expected_area, abs=1e-6)
    assert share.loc["on_wing"].tolist() == pytest.approx([0, 1, 0, 0, 0], abs=1e-6)
    assert share.loc["blank_first"].tolist() == pytest.approx([0, 1, 0, 0, 0], abs=1e-6)
    assert share.loc["uniform"].tolist() == pytest.approx(expected_area, abs=1e-6)
    assert share.loc["blank"].isna().all()
    # in batches or in one, the same numbers
    whole = part_attention(raw, ids, labels, energies, ImageSizes(size, size), batch_size=len(ids))
    pd.testing.assert_frame_equal(table, whole)


def test_attention_on_one_part_through_a_resize_and_crop(test_images):
    """With the models' resize and crop, the masks are soft at their edges: a map equal to the carried wing mask puts
    most of its attention on the wing and little on the other parts; a uniform map still gives the areas."""
    raw, ids, labels = test_images
    sizes = ImageSizes(36, 32)
    size, drawn = scenes(raw, ids, labels)
    wing = carry_masks(np.stack([part_owners(nuisance, size) == WING for _, nuisance in drawn]), sizes)
    table = part_attention(raw, ids, labels, {"on_wing": wing, "uniform": torch.ones(len(ids), 4, 4)}, sizes)
    share = table.pivot(index="network", columns="part", values="share")[list(PARTS)]
    area = table.pivot(index="network", columns="part", values="area")[list(PARTS)]
    assert share.loc["on_wing", "wing"] > 0.9 and share.loc["on_wing"].drop("wing").max() < 0.05
    assert share.loc["uniform"].tolist() == pytest.approx(area.loc["uniform"].tolist(), abs=1e-6)
    assert 0 < area.loc["uniform", "wing"] < 0.2 and area.loc["uniform"].sum() == pytest.approx(1)


@pytest.mark.parametrize("sizes", [ImageSizes(40, 36), ImageSizes(28, 24), ImageSizes(44, 32, "official")],
                         ids=["upscaled", "downscaled", "official recipe"])
def test_a_carried_mask_covers_its_parts_pixels_where_the_network_sees_them(test_images, sizes):
    """The wing drawn or hidden under its occluder differs only inside the wing's region; after the test transform,
    the pixels that differ lie inside that region's carried mask, and fill much of it."""
    raw, ids, labels = test_images
    size, drawn = scenes(raw, ids, labels)
    transform = fgvc_transform(sizes, train=False)
    regions = carry_masks(np.stack([synth.part_region(WING, nuisance, size) for _, nuisance in drawn]), sizes)
    for (code, nuisance), region in zip(drawn, regions):
        seen = []
        for hidden in (False, True):
            occluded = [hidden and slot == WING for slot in range(len(synth.PART_SLOTS))]
            pixels = synth.render(code, dataclasses.replace(nuisance, occluded=occluded), size)[0]
            seen.append(unnormalise(transform(torch.from_numpy(pixels).permute(2, 0, 1)), sizes))
        changed = (seen[0] - seen[1]).abs().amax(dim=0) > 0.05
        assert changed.any() and not changed[region == 0].any()
        assert changed[region == 1].float().mean() > 0.4
