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
from fgkd.train import TrainConfig, train
from conftest import TINY
from fixtures import cli_train_args, wait_for_file
from test_workflow import BIN, project_copy, run

@pytest.fixture
def data(tiny_data):
    return tiny_data


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs folder (needs root, as CI has); unmounted afterwards."""
    mounted = []

    def make(options):
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
        assert result.returncode == 0, f"these fault tests need root to mount a tmpfs: {result.stderr}"
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_full_disk_names_the_file_and_keeps_earlier_results(data, mount):
    out = mount("size=1m")
    earlier = b"an earlier model the user wants to keep"
    (out / "model.pt").write_bytes(earlier)
    with pytest.raises(FgkdError, match=r"checkpoint.pt: could not be written.*KiB free there.*untouched"):
        train("teacher", data, out, TINY, progress=False)
    assert (out / "model.pt").read_bytes() == earlier
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


def test_read_only_results_folder_is_a_clear_error(data, mount):
    out = mount("ro,size=1m")
    result = CliRunner().invoke(main, ["train", "--stage", "teacher", "--data", str(data), "--out", str(out / "teacher"),
                                       "--backbone", "resnet10", "--epochs", "1", "--resize", "36", "--crop", "32",
                                       "--no-progress"])
    assert result.exit_code == 1
    assert "Read-only file system" in result.output and "teacher" in result.output


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


def test_checkpoint_of_another_configuration_is_never_reused(data, tmp_path, caplog):
    other = TrainConfig(**{**TINY.__dict__, "lr": 0.01, "epochs": 3})
    out = tmp_path / "run"
    process = subprocess.Popen(cli_train_args(other, out, data), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_file(out / "checkpoint.pt", process)
    process.kill()
    _, stderr = process.communicate()
    assert (out / "checkpoint.pt").exists(), stderr.decode()[-2000:]
    with caplog.at_level("WARNING", logger="fgkd"):
        resumed = train("teacher", data, out, TINY, progress=False)
    assert "written by another configuration" in caplog.text
    fresh = train("teacher", data, tmp_path / "fresh", TINY, progress=False)
    a = torch.load(resumed, weights_only=True)["last_state_dict"]
    b = torch.load(fresh, weights_only=True)["last_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


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
