"""Faults really done: a full disk, a read-only results folder, a corrupt image met by a DataLoader
worker, a checkpoint of another configuration, kill -9 of the Snakemake command."""

import os
import signal
import subprocess

import pytest
import torch
from click.testing import CliRunner

from fgkd.cli import main
from fgkd.errors import FgkdError
from fgkd.modelfile import load_model
from fgkd.train import TrainConfig, train
from conftest import TINY
from fixtures import cli_train_args, wait_for_file
from test_workflow import BIN, project_copy, run

@pytest.fixture
def data(tiny_data):
    return tiny_data


def test_full_disk_names_the_file_and_keeps_earlier_results(data, mount):
    out = mount("size=1m")
    earlier = b"an earlier model the user wants to keep"
    (out / "model.pt").write_bytes(earlier)
    with pytest.raises(FgkdError, match=r"checkpoint.pt: could not be written.*KiB free there.*untouched"):
        train("teacher", data, out, TINY, progress=False)
    assert (out / "model.pt").read_bytes() == earlier
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("where", ["read-only", "under a file", "not UTF-8"])
def test_an_unwritable_results_folder_is_one_line_before_the_first_epoch(data, mount, tmp_path, where):
    if where == "read-only":
        out, culprit = mount("ro,size=1m") / "teacher", "Read-only file system"
    elif where == "under a file":
        (tmp_path / "file").write_text("not a folder")
        out, culprit = tmp_path / "file" / "teacher", "Not a directory"
    else:
        out, culprit = os.fsencode(tmp_path) + b"/r\xffsults", "r\\xffsults"  # as Python shows the byte
    args = cli_train_args(TrainConfig(**{**TINY.__dict__, "epochs": 1}), "OUT", data)
    args[args.index("OUT")] = out  # a real argv: bytes for the non-UTF-8 name
    result = subprocess.run(args, capture_output=True, timeout=300)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and culprit in errors[0] and "--out" in errors[0], errors
    assert "epoch 1/" not in stderr  # refused before any training
    assert not os.path.exists(os.path.join(os.fsencode(out), b"model.pt"))


def test_corrupt_image_in_a_worker_is_one_line_naming_the_file(data, tmp_path):
    import shutil

    from fgkd.data.manifest import read_manifest

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    frame = read_manifest(copy)
    victim = copy / frame[frame.split == "train"]["path"].iloc[3]
    victim.write_bytes(victim.read_bytes()[:40])
    result = CliRunner().invoke(main, ["train", "--stage", "teacher", "--data", str(copy), "--out", str(tmp_path / "t"),
                                       "--backbone", "resnet10", "--epochs", "1", "--resize", "36", "--crop", "32",
                                       "--workers", "1", "--no-progress", "--val-fraction", "0"])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and victim.name in error[0] and "fgkd prepare" in error[0]
    assert "Traceback" not in result.output


def kill_after_first_checkpoint(args: list[str], out) -> None:
    """Run `fgkd train` and SIGKILL it once it has written out/checkpoint.pt."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_file(out / "checkpoint.pt", process)
    process.kill()
    _, stderr = process.communicate()
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists(), stderr.decode()[-2000:]


def same_weights(a, b) -> bool:
    a, b = (torch.load(p, weights_only=True) for p in (a, b))
    return all(torch.equal(a[which][k], b[which][k]) for which in ("state_dict", "last_state_dict") for k in a[which])


@pytest.fixture
def other_images(data, tmp_path):
    """A copy of ``data`` with the same manifest, bytes for bytes, and every image replaced by the same-named
    image of a set generated with another seed: what rerunning synth with another seed can leave behind."""
    import shutil

    from fgkd.data.manifest import read_manifest
    from fgkd.data.prepare import prepare
    from fgkd.data.synth import generate

    generate(tmp_path / "seed1" / "raw", classes=4, images_per_class=12, size=32, seed=1)
    prepare("cub", tmp_path / "seed1" / "raw", tmp_path / "seed1" / "prepared", progress=False)
    copy = tmp_path / "other_images"
    shutil.copytree(data, copy)
    for relative in read_manifest(copy)["path"]:
        shutil.copyfile(tmp_path / "seed1" / "prepared" / relative, copy / relative)
    assert (copy / "manifest.parquet").read_bytes() == (data / "manifest.parquet").read_bytes()
    return copy


def test_checkpoint_of_another_configuration_is_never_reused(data, tmp_path, caplog):
    other = TrainConfig(**{**TINY.__dict__, "lr": 0.01, "epochs": 3})
    out = tmp_path / "run"
    kill_after_first_checkpoint(cli_train_args(other, out, data), out)
    with caplog.at_level("WARNING", logger="fgkd"):
        resumed = train("teacher", data, out, TINY, progress=False)
    assert "written by another configuration" in caplog.text
    assert same_weights(resumed, train("teacher", data, tmp_path / "fresh", TINY, progress=False))


def test_checkpoint_of_other_images_under_the_same_manifest_is_never_reused(data, other_images, tmp_path, caplog):
    import shutil

    config = TrainConfig(**{**TINY.__dict__, "epochs": 4})
    folder, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(data, folder)
    kill_after_first_checkpoint(cli_train_args(config, out, folder), out)
    shutil.rmtree(folder)
    shutil.copytree(other_images, folder)  # the data regenerated in place; same options, same command
    with caplog.at_level("INFO", logger="fgkd"):
        resumed = train("teacher", folder, out, config, progress=False)
    assert "written by another data set" in caplog.text and "another configuration" not in caplog.text
    assert "resuming after" not in caplog.text
    assert same_weights(resumed, train("teacher", folder, tmp_path / "fresh", config, progress=False))
    from fgkd.data.manifest import data_digest

    assert load_model(resumed)[1]["data_digest"] == data_digest(folder) != data_digest(data)


def test_checkpoint_of_a_data_set_with_other_classes_starts_over_without_a_traceback(data, tmp_path, caplog):
    from fgkd.data.prepare import prepare
    from fgkd.data.synth import generate

    generate(tmp_path / "three" / "raw", classes=3, images_per_class=12, size=32, seed=0)
    three = prepare("cub", tmp_path / "three" / "raw", tmp_path / "three" / "prepared", progress=False).parent
    config = TrainConfig(**{**TINY.__dict__, "epochs": 4})
    out = tmp_path / "run"
    kill_after_first_checkpoint(cli_train_args(config, out, data), out)
    with caplog.at_level("WARNING", logger="fgkd"):
        resumed = train("teacher", three, out, config, progress=False)
    assert "written by another data set" in caplog.text
    assert same_weights(resumed, train("teacher", three, tmp_path / "fresh", config, progress=False))


def test_checkpoint_whose_weights_do_not_fit_the_network_starts_over_without_a_traceback(data, tmp_path, caplog):
    """Same identity, other shapes: what a checkpoint of an fgkd with another network layout would hold."""
    config = TrainConfig(**{**TINY.__dict__, "epochs": 4})
    out = tmp_path / "run"
    kill_after_first_checkpoint(cli_train_args(config, out, data), out)
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    saved["model"]["head.classifier.4.weight"] = torch.zeros(5, TINY.head_hidden)
    torch.save(saved, out / "checkpoint.pt")
    with caplog.at_level("WARNING", logger="fgkd"):
        resumed = train("teacher", data, out, config, progress=False)
    assert "its weights do not fit this network" in caplog.text
    assert same_weights(resumed, train("teacher", data, tmp_path / "fresh", config, progress=False))


def test_checkpoint_of_a_student_of_another_teacher_is_never_reused(data, other_images, tmp_path, caplog):
    """A teacher retrained on other data keeps its configuration hash; its bytes change."""
    import shutil

    teachers = [train("teacher", source, tmp_path / name, TINY, progress=False)
                for source, name in ((data, "teacher_a"), (other_images, "teacher_b"))]
    assert len({load_model(t)[1]["config_hash"] for t in teachers}) == 1
    teacher = tmp_path / "teacher" / "model.pt"
    teacher.parent.mkdir()
    shutil.copyfile(teachers[0], teacher)
    config = TrainConfig(**{**TINY.__dict__, "epochs": 4})
    out = tmp_path / "student"
    kill_after_first_checkpoint(cli_train_args(config, out, data, "--index", "1", "--earlier", str(teacher),
                                               stage="student"), out)
    shutil.copyfile(teachers[1], teacher)
    with caplog.at_level("WARNING", logger="fgkd"):
        resumed = train("student", data, out, config, [teacher], index=1, progress=False)
    assert "written by another set of earlier models" in caplog.text and "configuration" not in caplog.text
    assert same_weights(resumed, train("student", data, tmp_path / "fresh", config, [teacher], index=1, progress=False))


def test_kill_9_of_snakemake_then_the_same_command_resumes_to_the_same_weights(tmp_path):
    reference = project_copy(tmp_path / "reference")
    killed = project_copy(tmp_path / "killed")
    for project in (reference, killed):
        text = (project / "config" / "config.yaml").read_text().replace("epochs: 1", "epochs: 8")
        (project / "config" / "config.yaml").write_text(text)
    target = "results/synthetic/resnet10/seed0/teacher/model.pt"
    run(["snakemake", "--cores", "2", target], reference)

    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    process = subprocess.Popen(["snakemake", "--cores", "2", target], cwd=killed, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "results/synthetic/resnet10/seed0/teacher/checkpoint.pt"
    wait_for_file(checkpoint, process)
    os.killpg(process.pid, signal.SIGKILL)  # snakemake and the training it started
    process.wait()
    assert checkpoint.exists() and not (killed / target).exists(), "the run was not killed mid-way"

    run(["snakemake", "--cores", "2", target], killed)
    a = torch.load(reference / target, weights_only=True)
    b = torch.load(killed / target, weights_only=True)
    for which in ("state_dict", "last_state_dict"):
        assert all(torch.equal(a[which][k], b[which][k]) for k in a[which])
    assert "resuming after epoch" in (killed / "logs/train/synthetic/resnet10/seed0/teacher.log").read_text()


def test_a_rewrite_that_fills_the_disk_leaves_the_earlier_file_whole(mount):
    """What "any earlier version is untouched" rests on: new content goes to a temporary sibling and is renamed into
    place only once complete (writing the file in place would truncate it first)."""
    from fgkd.atomic import atomic_path

    out = mount("size=1m")
    earlier = os.urandom(300_000)
    (out / "model.pt").write_bytes(earlier)
    with pytest.raises(FgkdError, match=r"model.pt: could not be written.*untouched"):
        with atomic_path(out / "model.pt") as tmp:
            tmp.write_bytes(os.urandom(900_000))
    assert (out / "model.pt").read_bytes() == earlier
    assert [p.name for p in out.iterdir()] == ["model.pt"]


def test_a_non_utf8_output_name_is_one_line_for_every_writer(data, tmp_path):
    """Parquet cannot name such a file: before, `prepare` converted every image and then died with a traceback."""
    import sys

    model = train("teacher", data, tmp_path / "teacher", TrainConfig(**{**TINY.__dict__, "epochs": 1}), progress=False)
    from fgkd.ensemble import predict

    logits = predict(model, data, tmp_path / "logits.parquet")
    raw = data.parent / "raw"
    bad = os.fsencode(tmp_path) + b"/\xffout"
    commands = {"prepare": ["prepare", "cub", "--root", str(raw), "--out", bad],
                "predict": ["predict", "--model", str(model), "--data", str(data), "--out", bad + b".parquet"],
                "ensemble": ["ensemble", str(logits), "--out", bad + b".parquet"]}
    for name, args in commands.items():
        result = subprocess.run([sys.executable, "-m", "fgkd", *args], capture_output=True, timeout=300)
        stderr = result.stderr.decode(errors="replace")
        assert result.returncode == 1 and "Traceback" not in stderr, (name, stderr[-2000:])
        errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "\\xffout" in errors[0] and "not UTF-8" in errors[0], (name, errors)
    assert not [p for p in os.listdir(os.fsencode(tmp_path)) if b"\xff" in p]
