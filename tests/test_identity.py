"""A run's identity (config_hash), its data's (data_digest) and a file's (file_digest): what resume, `fgkd verify`
and the cache compare. Each option that changes what a run computes changes its hash; the speed options do not."""

import dataclasses
import hashlib
import shutil

import pandas as pd
import pytest
import torch

from fgkd.config import NOT_IDENTITY, TrainConfig, config_hash
from fgkd.data.manifest import MANIFEST, data_digest
from fgkd.modelfile import content_digest, file_digest

pytestmark = pytest.mark.unit

BASE = TrainConfig()


def model_file(metadata=None, **changes):
    """The parts of a model.pt that content_digest reads: small weights, the same best and last unless ``changes``
    (a table of tensors per part) replace some."""
    weights = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2])}
    file = {"metadata": metadata or {"stage": "teacher", "best_epoch": 1}, "state_dict": dict(weights),
            "last_state_dict": dict(weights)}
    for key, value in changes.items():
        file[key] = {**file[key], **value}
    return file


def other_value(field: dataclasses.Field):
    value = getattr(BASE, field.name)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if field.name != "val_fraction" else 0.5
    return value + "x"


@pytest.mark.parametrize("field", [f for f in dataclasses.fields(TrainConfig) if f.name not in NOT_IDENTITY],
                         ids=lambda f: f.name)
def test_every_option_that_changes_the_numbers_changes_the_hash(field):
    changed = dataclasses.replace(BASE, **{field.name: other_value(field)})
    assert config_hash(changed, "teacher", []) != config_hash(BASE, "teacher", [])


@pytest.mark.parametrize("name", NOT_IDENTITY)
def test_speed_options_keep_the_hash(name):
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    changed = dataclasses.replace(BASE, **{name: other_value(field)})
    assert config_hash(changed, "teacher", []) == config_hash(BASE, "teacher", [])


def test_stage_processes_and_earlier_models_are_part_of_the_hash():
    base = config_hash(BASE, "student_1", ["a"], 1)
    assert len(base) == 16 and int(base, 16) >= 0
    assert base == config_hash(BASE, "student_1", ["a"], 1)
    others = {config_hash(BASE, "student_2", ["a"], 1), config_hash(BASE, "student_1", ["b"], 1),
              config_hash(BASE, "student_1", ["a", "a"], 1), config_hash(BASE, "student_1", ["a"], 2)}
    assert base not in others and len(others) == 4


def test_a_number_of_another_type_is_the_same_run():
    """A config's `orth_weight: 1` and the command line's 1.0; `epochs: 10.0` from YAML and 10."""
    assert config_hash(dataclasses.replace(BASE, orth_weight=1), "s", []) == \
        config_hash(dataclasses.replace(BASE, orth_weight=1.0), "s", [])
    assert config_hash(dataclasses.replace(BASE, epochs=10.0), "s", []) == config_hash(BASE, "s", [])


def test_data_digest_covers_every_image_byte_and_every_manifest_row(tiny_data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    digest = data_digest(copy)
    assert len(digest) == 16 and digest == data_digest(tiny_data)
    frame = pd.read_parquet(copy / MANIFEST)
    image = copy / frame["path"].iloc[-1]
    original = image.read_bytes()
    image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert data_digest(copy) != digest
    image.write_bytes(original)
    assert data_digest(copy) == digest
    last = frame.index[-1]
    first_class = frame.loc[frame.label == 0, "class_name"].iloc[0]
    changes = {"split": {"split": "test" if frame.loc[last, "split"] == "train" else "train"},
               "label": {"label": 0, "class_name": first_class}, "image_id": {"image_id": 10_000}}
    frame.assign(class_name=frame["class_name"] + "_renamed").to_parquet(copy / MANIFEST)
    assert data_digest(copy) != digest, "class_name"
    for column, change in changes.items():
        changed = frame.copy()
        for key, value in change.items():
            changed.loc[last, key] = value
        changed.to_parquet(copy / MANIFEST)
        assert data_digest(copy) != digest, column
    frame.iloc[:-1].to_parquet(copy / MANIFEST)  # one image fewer
    assert data_digest(copy) != digest


def test_file_digest_is_the_files_sha256(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights")
    assert file_digest(path) == hashlib.sha256(b"weights").hexdigest()[:16]


def test_content_digest_covers_metadata_and_every_weight_but_not_itself():
    meta = {"stage": "teacher", "best_epoch": 1}
    digest = content_digest(model_file())
    assert len(digest) == 16 and digest == content_digest(model_file({**meta, "content_sha256": "x"}))
    others = [model_file({**meta, "best_epoch": 2}), model_file({**meta, "extra": None}),
              model_file(state_dict={"a": torch.arange(6, dtype=torch.float32).reshape(3, 2)}),  # same bytes
              model_file(state_dict={"a": torch.arange(6, dtype=torch.float64).reshape(2, 3)}),
              model_file(last_state_dict={"b": torch.tensor([1, 3])}),
              model_file(last_state_dict={"c": torch.tensor([1, 2])}),
              model_file(state_dict={"b": torch.tensor([1, 2]).expand(2, 2)[0]})]  # the same values: the same digest
    digests = [content_digest(file) for file in others]
    assert digests[-1] == digest and digest not in digests[:-1] and len(set(digests[:-1])) == len(digests) - 1
    swapped = model_file()
    swapped["state_dict"], swapped["last_state_dict"] = swapped["last_state_dict"], {"a": swapped["state_dict"]["a"]}
    assert content_digest(swapped) != digest


def test_the_hash_of_a_run_is_what_earlier_fgkd_versions_computed():
    """A changed payload (a key renamed, another order) would silently make every finished model and checkpoint of
    every user a stranger to its own config: retrained, resumes refused. Changing it on purpose: update these."""
    assert config_hash(BASE, "teacher", []) == config_hash(BASE, "teacher", [], 1) == "2cd2a29f6324d6ba"
    assert config_hash(BASE, "student_1", ["abc"], 2) == "879d1bd920057505"


def test_kd_and_dkd_are_two_runs_and_kd_keeps_the_hash_it_had_before_kd_loss_existed():
    """Resume and `fgkd verify` compare this hash: a checkpoint trained with kd is not resumed as dkd, nor one of
    other DKD weights; an aux-KD run of kd keeps the hash that fgkd computed before kd_loss (pinned from then)."""
    dkd = dataclasses.replace(BASE, kd_loss="dkd")
    hashes = {config_hash(config, "auxkd", ["abc"]) for config in
              (BASE, dkd, dataclasses.replace(dkd, dkd_alpha=2.0), dataclasses.replace(dkd, dkd_beta=4.0))}
    assert len(hashes) == 4
    assert config_hash(BASE, "auxkd", ["abc", "def"]) == "5b815f4846edec4a"
    assert config_hash(dataclasses.replace(BASE, kd_alpha=0.3, kd_temperature=2.0), "auxkd", ["abc"], 2) == \
        "4162e07ea3750a50"


def test_data_digest_ignores_how_the_manifest_rows_are_indexed(tiny_data, tmp_path):
    copy = shutil.copytree(tiny_data, tmp_path / "data")
    frame = pd.read_parquet(copy / MANIFEST)
    frame.set_axis(frame.index + 100).to_parquet(copy / MANIFEST)  # the same rows, stored with another index
    assert data_digest(copy) == data_digest(tiny_data)


def test_content_digest_does_not_depend_on_the_order_of_metadata_keys():
    ordered = model_file({"stage": "teacher", "best_epoch": 1})
    assert content_digest(ordered) == content_digest(model_file({"best_epoch": 1, "stage": "teacher"}))


def test_content_digest_is_what_the_models_of_this_format_record():
    """Every trained model.pt records its content digest: a changed formula would have `fgkd verify` refuse them all
    as changed since training. Changing it on purpose: a new model format, and update this."""
    assert content_digest(model_file({"stage": "teacher", "best_val_acc": float("nan")})) == "d6628b7262d7d755"
