"""Data-parallel training through torchrun (gloo on CPU): N processes train like one with N x the batch."""

import dataclasses
import os
import signal
import subprocess

import pandas as pd
import pytest
import torch

from fgkd.errors import LAUNCHED_ERRORS
from fgkd.modelfile import load_model
from fgkd.train import TrainConfig, train
from conftest import SPEED_PATH_BACKBONES
from fixtures import checkpoint_position, cli_train_args, optimizer_steps, resumed_at, torchrun_args, wait_for_file

# Batch-norm layers in the trunk and in the official head, so that synchronised statistics matter; one batch
# of all 48 training images per epoch (24 per process).
CONFIG = TrainConfig(backbone="resnet10", head="official", head_hidden=32, epochs=2, batch_size=48, resize=36, crop=32,
                     lr=0.05, backbone_lr=0.05, val_fraction=0.25, attention_stride=8)
# The tolerance. Epoch 1 (same weights, same images) differs only by the order of float sums: 1e-5.
# Epoch 2 follows one update, and float32 gradients of this network are accurate to about 7e-4 relative
# (measured against float64), whichever way they are summed: 1e-3. (A doubled learning rate moves epoch 2's
# loss by 6%.) Over many steps the runs drift further apart, as max-pooling and ReLU route a gradient
# elsewhere when two values tie within rounding: they are equal in law, not bit for bit.
FIRST_EPOCH_RTOL, UPDATE_RTOL = 1e-5, 1e-3


@pytest.fixture
def data(one_batch_data):
    return one_batch_data


def per_process(config: TrainConfig, processes: int) -> TrainConfig:
    return TrainConfig(**{**config.__dict__, "batch_size": config.batch_size // processes})


def run_two_processes(config: TrainConfig, out, data, *extra):
    result = subprocess.run(cli_train_args(per_process(config, 2), out, data, "--processes", "2", *extra),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return pd.read_parquet(out / "history.parquet")


@pytest.mark.parametrize("backbone", SPEED_PATH_BACKBONES)
def test_two_processes_train_like_one_process_with_the_doubled_batch(backbone, data, tmp_path):
    name, stride = SPEED_PATH_BACKBONES[backbone]
    config = dataclasses.replace(CONFIG, backbone=name, attention_stride=stride)
    one = pd.read_parquet(train("teacher", data, tmp_path / "one", config, progress=False).parent / "history.parquet")
    two = run_two_processes(config, tmp_path / "two", data)
    unsynced = run_two_processes(dataclasses.replace(config, sync_batchnorm=False), tmp_path / "unsynced", data)

    assert two["loss"].iloc[0] == pytest.approx(one["loss"].iloc[0], rel=FIRST_EPOCH_RTOL)
    assert two["loss"].iloc[1] == pytest.approx(one["loss"].iloc[1], rel=UPDATE_RTOL)
    assert two["train_acc"].tolist() == one["train_acc"].tolist()
    assert two["val_acc"].tolist() == one["val_acc"].tolist()  # every validation image scored once over both
    # Per-process batch statistics are another training: the test would see a broken synchronisation (the tiny
    # EfficientNet's first loss moves by 5e-4 relative, the others' by more).
    assert unsynced["loss"].iloc[0] != pytest.approx(one["loss"].iloc[0], rel=10 * FIRST_EPOCH_RTOL)

    model, meta = load_model(tmp_path / "two" / "model.pt")  # a plain network again: no SyncBatchNorm inside
    assert meta["processes"] == 2 and type(model.head.classifier[0]).__name__ == "BatchNorm1d"
    assert not any("Sync" in type(m).__name__ for m in model.modules())
    assert not (tmp_path / "two" / "checkpoint.pt").exists()


def test_a_signal_stops_every_process_at_one_step_and_the_rerun_resumes_exactly(data, tmp_path):
    config = per_process(TrainConfig(**{**CONFIG.__dict__, "epochs": 6, "batch_size": 8}), 2)
    reference = tmp_path / "reference"
    total = optimizer_steps(subprocess.run(cli_train_args(config, reference, data, "--processes", "2"), check=True,
                                           capture_output=True, text=True, timeout=600).stderr)

    out = tmp_path / "preempted"
    args = cli_train_args(config, out, data, "--processes", "2")
    launcher = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_file(out / "checkpoint.pt", launcher)
    launcher.send_signal(signal.SIGUSR1)  # SLURM's --signal=USR1@... reaches the launcher; it tells the workers
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and "stopped by SIGUSR1" in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]  # once, not once per process
    assert len(errors) == 1 and errors[0].startswith("Error: stopped by SIGUSR1") and "Traceback" not in stderr
    epoch, step = checkpoint_position(out / "checkpoint.pt")
    assert epoch < config.epochs and not (out / "model.pt").exists()

    log = subprocess.run(args, check=True, capture_output=True, text=True, timeout=600).stderr
    assert resumed_at(log) == (epoch, step)
    assert optimizer_steps(log) == total - epoch * total // config.epochs - step
    for which in ("state_dict", "last_state_dict"):
        expected = torch.load(reference / "model.pt", weights_only=True)[which]
        resumed = torch.load(out / "model.pt", weights_only=True)[which]
        for key, value in expected.items():
            assert torch.equal(value, resumed[key]), (which, key)
    timing = ["seconds", "images_per_s"]
    pd.testing.assert_frame_equal(pd.read_parquet(reference / "history.parquet").drop(columns=timing),
                                  pd.read_parquet(out / "history.parquet").drop(columns=timing))


def test_one_process_under_torchrun_runs_data_parallel_and_trains_like_a_plain_run(data, tmp_path):
    """With one process torchrun used to skip the process group and DDP (world size 1), so the data-parallel code
    could not be checked on a one-GPU machine (tests/test_cuda.py does it with nccl); now it runs them, and computes
    what a plain run does."""
    plain = pd.read_parquet(train("teacher", data, tmp_path / "plain", CONFIG, progress=False).parent
                            / "history.parquet")
    result = subprocess.run(torchrun_args(cli_train_args(CONFIG, tmp_path / "one", data)), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data-parallel: 1 process(es), gloo backend, on cpu" in result.stderr
    one = pd.read_parquet(tmp_path / "one" / "history.parquet")
    assert one["loss"].iloc[0] == pytest.approx(plain["loss"].iloc[0], rel=FIRST_EPOCH_RTOL)
    assert one["loss"].iloc[1] == pytest.approx(plain["loss"].iloc[1], rel=UPDATE_RTOL)
    assert load_model(tmp_path / "one" / "model.pt")[1]["processes"] == 1


def test_two_processes_train_in_bf16_like_one_process_with_the_doubled_batch(data, tmp_path):
    """CPU autocast hands batch norm bf16 activations: the synchronised layer keeps float32 statistics, as torch's
    batch norm does, and returns bf16 (it used to stop with a dtype error)."""
    config = dataclasses.replace(CONFIG, amp="bf16", channels_last="on")
    one = pd.read_parquet(train("teacher", data, tmp_path / "one", config, progress=False).parent / "history.parquet")
    two = run_two_processes(config, tmp_path / "two", data)
    # bf16 rounds each process's activations on their own (1e-3 apart here); the float32 tolerance is
    # test_timm_backbones.py's, layer by layer
    assert two["loss"].tolist() == pytest.approx(one["loss"].tolist(), rel=0.01)


def test_bad_input_to_several_processes_is_one_line_not_one_per_process_and_torchruns_report(data, tmp_path):
    """Each process finds it, and torchrun stops the others when the first fails, maybe before they print it: the
    launcher prints it once."""
    args = cli_train_args(per_process(CONFIG, 2), tmp_path / "student", data, "--processes", "2", stage="student")
    (tmp_path / "tmp").mkdir()
    result = subprocess.run([*args, "--index", "1"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert (result.returncode, result.stderr) == (
        1, "Error: student 1 learns against the teacher and students 1..0: expected 1 --earlier models, got 0\n")
    assert not (tmp_path / "student").exists()
    assert not any((tmp_path / "tmp").iterdir())  # nor torchrun's folder (torchelastic_*) left behind


def test_a_process_that_fails_first_without_fgkds_error_keeps_torchruns_report(data, tmp_path):
    """The other process, stopped by torchrun's SIGTERM, may leave a "stopped by SIGTERM" line: that is not what
    went wrong."""
    (tmp_path / "site").mkdir()  # process 1 dies at its start; process 0 leaves such a line and goes on
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import os, pathlib\n"
        "if os.environ.get('RANK') == '1':\n    os._exit(3)\n"
        "if os.environ.get('RANK') == '0':\n"
        f"    pathlib.Path(os.environ['{LAUNCHED_ERRORS}'], '0').write_text('stopped by SIGTERM')\n")
    args = cli_train_args(per_process(CONFIG, 2), tmp_path / "out", data, "--processes", "2")
    result = subprocess.run(args, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert result.returncode == 1 and "ChildFailedError" in result.stderr, result.stderr[-3000:]
    root_cause = result.stderr[result.stderr.index("Root Cause"):]
    assert "rank      : 1" in root_cause and "exitcode  : 3" in root_cause
    assert "Error: stopped by SIGTERM" not in result.stderr
