"""`fgkd verify`: a prepared data set or a model.pt is refused unless it is what the job expects (one line naming it and
what to delete), and links into Snakemake's cache become private copies that keep the links' modification times."""

import json
import os
import shutil

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from fgkd.cli import main
from fgkd.train import TrainConfig, train
from artifacts import one_line_error
from conftest import TINY


def verify(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args)])


@pytest.fixture(scope="module")
def run(tiny_data, tiny_teacher, tmp_path_factory):
    """A copy of the tiny data set, a teacher of it and student 1 started from the teacher's weights (init_from), as
    a workflow leaves them."""
    base = tmp_path_factory.mktemp("verified")
    data = shutil.copytree(tiny_data, base / "data")
    teacher = train("teacher", data, base / "teacher", TrainConfig(**{**TINY.__dict__, "epochs": 1}), progress=False)
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "init_from": str(teacher)})
    student = train("student", data, base / "or" / "student_1", config, [teacher], index=1, progress=False)
    meta = torch.load(student, weights_only=True)["metadata"]
    return data, teacher, student, meta


def model_args(run, **changes):
    data, teacher, student, meta = run
    args = {"--data": data, "--model": student, "--stage": "student_1", "--config-hash": meta["config_hash"],
            "--earlier": teacher, "--start": teacher, **changes}
    return [word for key, value in args.items() if value is not None for word in (key, value)]


def test_a_whole_model_of_its_job_is_recorded(run, tmp_path):
    result = verify(*model_args(run), "--out", tmp_path / "verified.json")
    assert result.exit_code == 0, result.output
    facts = json.loads((tmp_path / "verified.json").read_text())
    assert facts["stage"] == "student_1" and facts["config_hash"] == run[3]["config_hash"]
    assert facts["earlier"] == [entry["sha256"] for entry in run[3]["earlier"]] and len(facts["earlier"]) == 1


@pytest.mark.parametrize("change,culprit", [
    ({"--stage": "student_2"}, "the model of student_1 with config hash"),
    ({"--config-hash": "0" * 16}, f"where this job expects student_1 with config hash {'0' * 16}"),
    ({"--earlier": None}, "trained from earlier networks of sha256"),
    ({"--start": None}, "this job's start weights are none"),
])
def test_a_model_of_another_job_is_refused(run, tmp_path, change, culprit):
    one_line_error(verify(*model_args(run, **change), "--out", tmp_path / "verified.json"), str(run[2]), culprit,
                   "delete")
    assert not (tmp_path / "verified.json").exists()


def test_other_earlier_or_start_files_and_a_replaced_history_are_refused(run, tmp_path):
    data, teacher, student, meta = run
    other = train("teacher", data, tmp_path / "other", TrainConfig(**{**TINY.__dict__, "epochs": 1, "seed": 3}),
                  progress=False)
    out = tmp_path / "verified.json"
    one_line_error(verify(*model_args(run, **{"--earlier": other}), "--out", out), "trained from earlier networks")
    one_line_error(verify(*model_args(run, **{"--start": other}), "--out", out), "started from weights of sha256")
    one_line_error(verify(*model_args(run, **{"--earlier": tmp_path / "absent.pt"}), "--out", out),
                   f"--earlier {tmp_path / 'absent.pt'}: cannot be read")
    copy = shutil.copytree(student.parent, tmp_path / "student_1")
    shutil.copyfile(other.parent / "history.parquet", copy / "history.parquet")
    one_line_error(verify(*model_args(run, **{"--model": copy / "model.pt"}), "--out", out),
                   f"{copy / 'history.parquet'}: not the history written with model.pt")
    assert not out.exists()


def _nudge_a_weight(saved):
    name = next(iter(saved["state_dict"]))
    saved["state_dict"][name] = saved["state_dict"][name] + 1e-3


def _drop_a_weight(saved):
    saved["last_state_dict"].pop(next(iter(saved["last_state_dict"])))


def _another_validation_accuracy(saved):
    saved["metadata"]["best_val_acc"] = 1.0


@pytest.mark.parametrize("change", [_nudge_a_weight, _drop_a_weight, _another_validation_accuracy])
def test_a_model_changed_after_training_is_refused(run, tmp_path, change):
    """A model.pt that still loads and names the right job, but whose weights or metadata are not what `fgkd train`
    wrote (an edited or mixed-up cache entry): its content sha256 no longer matches."""
    data, teacher, student, meta = run
    copy = shutil.copytree(student.parent, tmp_path / "student_1")
    saved = torch.load(copy / "model.pt", weights_only=True)
    change(saved)
    torch.save(saved, copy / "model.pt")
    one_line_error(verify(*model_args(run, **{"--model": copy / "model.pt"}), "--out", tmp_path / "v.json"),
                   f"{copy / 'model.pt'}: its metadata or weights changed since `fgkd train` wrote it", "delete")
    assert not (tmp_path / "v.json").exists()


@pytest.fixture
def data_copy(run, tmp_path):
    return shutil.copytree(run[0], tmp_path / "data")


def _swap_an_image(data):
    frame = pd.read_parquet(data / "manifest.parquet")
    first, second = frame["path"].iloc[0], frame["path"].iloc[-1]
    shutil.copyfile(data / second, data / first)


@pytest.mark.parametrize("damage,culprit", [
    (_swap_an_image, "its images or manifest changed after `fgkd prepare` wrote them"),
    (lambda d: (d / "prepared.json").unlink(), "no prepared.json, the digest `fgkd prepare` records"),
    (lambda d: (d / "prepared.json").write_text("[1]"), "its prepared.json holds no digest"),
    (lambda d: (d / "prepared.json").write_text("{"), "its prepared.json is unreadable"),
])
def test_data_that_is_not_what_prepare_wrote_is_refused_and_the_data_set_named_for_deletion(data_copy, tmp_path,
                                                                                          damage, culprit):
    """Before: a data set without its record passed, and the advice for a garbled record was to delete the record,
    which let changed images through."""
    damage(data_copy)
    line = one_line_error(verify("--data", data_copy, "--out", tmp_path / "v.json"), f"{data_copy}: {culprit}")
    assert f"delete {data_copy} and rerun" in line and not (tmp_path / "v.json").exists()


def test_an_output_that_is_an_input_or_inside_the_data_set_is_refused(run, tmp_path):
    data, teacher, student, meta = run
    before = student.read_bytes()
    one_line_error(verify(*model_args(run), "--out", student), "would overwrite it")
    one_line_error(verify("--data", data, "--out", data / "manifest.parquet"), "inside the data set")
    assert student.read_bytes() == before and pd.read_parquet(data / "manifest.parquet").shape[0] > 0


def test_links_into_the_cache_become_private_copies_keeping_the_links_times(run, tmp_path):
    """As Snakemake's cache restores them: a model.pt and a history as links to the entry's files, a data set as a
    folder of links, and a data set that is itself a link; the entries are world-writable."""
    data, teacher, student, meta = run
    cache = tmp_path / "cache"
    entry = shutil.copytree(student.parent, cache / "student")
    restored = tmp_path / "restored"
    (restored / "data").mkdir(parents=True)
    for item in shutil.copytree(data, cache / "data").iterdir():
        os.symlink(item, restored / "data" / item.name)
    os.symlink(shutil.copytree(data, cache / "whole"), restored / "whole")
    (restored / "student_1").mkdir()
    for name in ("model.pt", "history.parquet"):
        os.symlink(entry / name, restored / "student_1" / name)
    for link in [*(restored / "data").iterdir(), restored / "whole", *(restored / "student_1").iterdir()]:
        os.utime(link, ns=(1_000_000_000, 1_000_000_000), follow_symlinks=False)
    for root, folders, files in os.walk(cache):
        for name in folders + files:
            os.chmod(os.path.join(root, name), 0o777 if name in folders else 0o666)
    entries = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}

    for data_set in (restored / "data", restored / "whole"):
        assert verify("--data", data_set, "--out", tmp_path / f"{data_set.name}.json").exit_code == 0
    result = verify(*model_args(run, **{"--model": restored / "student_1" / "model.pt", "--data": restored / "data"}),
                    "--out", tmp_path / "model.json")
    assert result.exit_code == 0, result.output
    copies = [p for p in restored.rglob("*")]
    assert not [p for p in copies if p.is_symlink()]
    for path in [*(restored / "data").iterdir(), restored / "whole", *(restored / "student_1").iterdir()]:
        assert os.stat(path).st_mtime_ns == 1_000_000_000, path
    assert not [p for p in copies if p.is_file() and os.stat(p).st_mode & 0o002]  # no world-writable copy
    (restored / "student_1" / "model.pt").write_bytes(b"written onto the results")
    (restored / "data" / "manifest.parquet").write_bytes(b"written onto the data")
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == entries


def test_a_link_to_a_missing_entry_says_so(tmp_path):
    link = tmp_path / "teacher" / "model.pt"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "cache" / "gone_model.pt")
    result = CliRunner().invoke(main, ["export", "--model", str(link), "--format", "onnx", "--out",
                                       str(tmp_path / "x.onnx")])
    one_line_error(result, f"{link}: a link to {tmp_path / 'cache' / 'gone_model.pt'}, which is not there")
