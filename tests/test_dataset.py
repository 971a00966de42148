"""The manifest Dataset, its transforms and the DataLoader factory, on real prepared files."""

import pandas as pd
import pytest
import torch

from fgkd.data.dataset import ImageSizes, load_split, make_loader, split_train_val
from fgkd.data.manifest import read_manifest
from fgkd.errors import DataError


@pytest.fixture
def prepared(tiny_data):
    return tiny_data


def test_items_are_normalised_crops_with_labels(prepared):
    sizes = ImageSizes(resize=40, crop=32)
    train = load_split(prepared, "train", sizes)
    test = load_split(prepared, "test", sizes)
    assert len(train) == 24 and len(test) == 24 and train.num_classes == 4
    image, label, image_id = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= int(label) < 4
    assert -3 < image.mean() < 3
    torch.testing.assert_close(test[0][0], test[0][0])  # test transform is deterministic


def test_validation_split_is_stratified_and_disjoint(prepared):
    frame = read_manifest(prepared)
    train, val = split_train_val(frame, 0.2, seed=0)
    assert set(train.index).isdisjoint(val.index)
    assert len(train) + len(val) == (frame["split"] == "train").sum()
    assert val.groupby("label").size().to_dict() == {0: 1, 1: 1, 2: 1, 3: 1}
    again, _ = split_train_val(frame, 0.2, seed=0)
    pd.testing.assert_frame_equal(train, again)
    _, none = split_train_val(frame, 0.0, seed=0)
    assert len(none) == 0


def test_loader_is_deterministic_for_a_seed(prepared):
    dataset = load_split(prepared, "train", ImageSizes(40, 32))
    first = [ids.tolist() for _, _, ids in make_loader(dataset, 8, shuffle=True, seed=5)]
    second = [ids.tolist() for _, _, ids in make_loader(dataset, 8, shuffle=True, seed=5)]
    other = [ids.tolist() for _, _, ids in make_loader(dataset, 8, shuffle=True, seed=6)]
    assert first == second and first != other
    batch = next(iter(make_loader(dataset, 8, shuffle=True, seed=5, workers=2)))
    assert batch[0].shape == (8, 3, 32, 32)


def test_corrupt_prepared_image_is_named(prepared, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    dataset = load_split(copy, "test", ImageSizes(40, 32))
    victim = copy / dataset.paths[0]
    victim.write_bytes(b"garbage")
    with pytest.raises(DataError, match=victim.name):
        dataset[0]


def test_missing_manifest_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match="fgkd prepare"):
        read_manifest(tmp_path)
