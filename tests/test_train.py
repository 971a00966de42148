"""The training engine end to end on a tiny synthetic set: every stage, determinism, resume, errors."""

import dataclasses
import os
import shutil
import signal
import subprocess

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from fgkd.cli import main
from fgkd.data.dataset import load_split
from fgkd.data.recipes import ImageSizes
from fgkd.data.prepare import prepare
from fgkd.data.synth import generate
from fgkd.ensemble import ensemble, predict
from fgkd.errors import FgkdError
from fgkd.modelfile import load_model
from fgkd.train import TrainConfig, train
from conftest import SPEED_PATH_BACKBONES, TINY
from fixtures import checkpoint_position, cli_train_args, optimizer_steps, resumed_at, wait_for_file

@pytest.fixture
def data(tiny_data):
    return tiny_data


def weights(path, which="best"):
    return torch.load(path, weights_only=True)["state_dict" if which == "best" else "last_state_dict"]


def test_every_stage_runs_and_writes_its_contract(data, tmp_path):
    out = tmp_path / "results"
    teacher = train("teacher", data, out / "teacher", TINY, progress=False)
    s1 = train("student", data, out / "student_1", TINY, [teacher], index=1, progress=False)
    s2 = train("student", data, out / "student_2", TINY.__class__(**{**TINY.__dict__, "orth": "at", "orth_weight": 1.0}),
               [teacher, s1], index=2, progress=False)
    members = [teacher, s1, s2]
    logits = []
    for model in members:
        logits.append(predict(model, data, model.parent / "logits.parquet"))
    aux = train("auxkd", data, out / "auxkd", TINY, members, progress=False)

    history = pd.read_parquet(out / "student_1" / "history.parquet")
    assert list(history["epoch"]) == [1, 2]
    assert {"stage", "lr", "ce", "orth", "orth_raw", "loss", "train_acc", "val_acc", "seconds", "images_per_s"} <= set(history)
    assert set(pd.read_parquet(out / "auxkd" / "history.parquet").columns) >= {"ce", "kd", "aux_ce"}
    for path in (*members, aux):
        assert not (path.parent / "checkpoint.pt").exists()
    _, meta = load_model(aux)
    assert meta["aux_heads"] == 3 and meta["stage"] == "auxkd"

    frame = pd.read_parquet(logits[0])
    assert list(frame.columns[:2]) == ["image_id", "label"] and frame.shape == (24, 2 + 4)
    table = ensemble(logits, ["teacher", "student_1", "student_2"])
    assert table["prefix"].sum() == 3 and len(table) == 7
    single = table[table["members"] == "teacher"].iloc[0]
    manual = (frame.filter(like="logit_").to_numpy().argmax(1) == frame["label"].to_numpy()).mean()
    assert single["top1"] == pytest.approx(manual)
    assert ensemble(logits, ["t", "s1", "s2"], combine="probs")["top1"].between(0, 1).all()


def test_same_seed_same_history_and_weights(data, tmp_path):
    a = train("teacher", data, tmp_path / "a", TINY, progress=False)
    b = train("teacher", data, tmp_path / "b", TINY, progress=False)
    c = train("teacher", data, tmp_path / "c", TrainConfig(**{**TINY.__dict__, "seed": 1}), progress=False)
    timing = ["seconds", "images_per_s"]
    ha, hb = (pd.read_parquet(p.parent / "history.parquet").drop(columns=timing) for p in (a, b))
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
    for key, value in weights(a, "last").items():
        assert torch.equal(value, weights(b, "last")[key]), key
    assert not torch.equal(weights(a, "last")["head.classifier.4.weight"], weights(c, "last")["head.classifier.4.weight"])


def test_killed_run_resumes_to_the_same_final_weights(data, tmp_path, caplog):
    config = TrainConfig(**{**TINY.__dict__, "epochs": 8})
    with caplog.at_level("INFO", logger="fgkd"):
        reference = train("teacher", data, tmp_path / "reference", config, progress=False)
    total = optimizer_steps(caplog.text)

    out = tmp_path / "killed"
    process = subprocess.Popen(cli_train_args(config, out, data), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_file(out / "checkpoint.pt", process)
    assert process.poll() is None, process.communicate()[1].decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists(), "the run was not killed mid-way"
    epoch, step = checkpoint_position(out / "checkpoint.pt")
    assert 1 <= epoch < config.epochs

    caplog.clear()
    with caplog.at_level("INFO", logger="fgkd"):
        resumed = train("teacher", data, out, config, progress=False)
    # Bit-determinism makes a rerun from scratch end with the same weights: count what the rerun did.
    assert resumed_at(caplog.text) == (epoch, step)
    assert optimizer_steps(caplog.text) == total - epoch * total // config.epochs - step
    for which in ("best", "last"):
        for key, value in weights(reference, which).items():
            assert torch.equal(value, weights(resumed, which)[key]), (which, key)
    pd.testing.assert_frame_equal(
        pd.read_parquet(reference.parent / "history.parquet").drop(columns=["seconds", "images_per_s"]),
        pd.read_parquet(resumed.parent / "history.parquet").drop(columns=["seconds", "images_per_s"]))


def test_non_finite_loss_stops_with_a_clear_error_and_no_model(data, tmp_path):
    config = TrainConfig(**{**TINY.__dict__, "lr": 1e30, "backbone_lr": 1e30, "epochs": 3})
    with pytest.raises(FgkdError, match=r"non-finite loss \(ce=\S+\) at teacher [1-3]/3, step \d+"):
        train("teacher", data, tmp_path / "nan", config, progress=False)
    assert not (tmp_path / "nan" / "model.pt").exists()


FLOAT_OPTIONS = [field.name for field in dataclasses.fields(TrainConfig) if field.type == "float"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", FLOAT_OPTIONS)
def test_non_finite_options_are_one_line_and_leave_the_earlier_model(data, tmp_path, key, value):
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "model.pt").write_bytes(b"an earlier model")
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, key: float(value)})
    result = CliRunner().invoke(main, cli_train_args(config, out, data)[3:])  # without `python -m fgkd`
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.splitlines()[-1] == f"Error: {key} must be a finite number (got {float(value)})"
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]
    assert (out / "model.pt").read_bytes() == b"an earlier model"


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_weights_going_non_finite_after_a_checkpoint_stop_the_run_and_keep_the_finite_checkpoint(data, tmp_path):
    """One step per epoch at lr 1e10: epoch 1 ends finite, epoch 2's loss is finite but its update overflows the
    batch-norm running variances (buffers, not parameters): only a check of the weights can see it."""
    out = tmp_path / "teacher"
    good = train("teacher", data, out, TrainConfig(**{**TINY.__dict__, "epochs": 1}), progress=False).read_bytes()
    config = TrainConfig(**{**TINY.__dict__, "lr": 1e10, "backbone_lr": 1e10, "batch_size": 48, "epochs": 2})
    result = subprocess.run(cli_train_args(config, out, data), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "non-finite weights" in errors[0] and "running_var" in errors[0], errors
    assert "checkpoint.pt, is kept" in errors[0] and "lower the learning rates" in errors[0]
    assert (out / "model.pt").read_bytes() == good
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1 and saved["state"]["partial"] is None
    assert all_finite(saved["model"]) and all_finite(saved["state"]["best_state"])


@pytest.mark.parametrize("key", ["head.classifier.4.weight", "trunk.bn1.running_var"])
def test_a_model_with_non_finite_weights_is_refused_by_predict_and_as_an_earlier_model(data, tmp_path, key):
    teacher = train("teacher", data, tmp_path / "teacher", TrainConfig(**{**TINY.__dict__, "epochs": 1}),
                    progress=False)
    saved = torch.load(teacher, weights_only=True)
    saved["state_dict"][key][0] = float("nan")
    broken = tmp_path / "broken" / "model.pt"
    broken.parent.mkdir()
    torch.save(saved, broken)
    logits = tmp_path / "logits.parquet"
    for args in (["predict", "--model", str(broken), "--data", str(data), "--out", str(logits)],
                 ["train", "--stage", "student", "--index", "1", "--earlier", str(broken), "--data", str(data),
                  "--out", str(tmp_path / "student"), "--no-progress"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.output.splitlines()[-1].startswith(f"Error: {broken}: non-finite weights ({key})"), result.output
    assert not logits.exists() and not any((tmp_path / "student").glob("*"))


# A CUDA device this machine does not have.
ABSENT_CUDA = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "meta", ABSENT_CUDA])
def test_a_device_that_is_not_here_is_one_line_for_train_and_predict(data, tiny_teacher, tmp_path, device):
    out, logits = tmp_path / "teacher", tmp_path / "logits.parquet"
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "device": device})
    predict_args = ["predict", "--model", str(tiny_teacher), "--data", str(data), "--out", str(logits)]
    for args in (cli_train_args(config, out, data)[3:], [*predict_args, "--device", device]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
        assert result.output.splitlines()[-1].startswith(f"Error: device {device!r}"), result.output
    assert not logits.exists() and not (out / "model.pt").exists()


@pytest.mark.parametrize("culprit", ["batch size", "data"])
def test_a_step_of_one_image_is_one_line_naming_the_batch_size_or_the_data(data, tmp_path, culprit):
    from fgkd.atomic import write_parquet
    from fgkd.data.manifest import read_manifest

    config = TrainConfig(**{**TINY.__dict__, "epochs": 1})
    if culprit == "batch size":
        config, expected = TrainConfig(**{**config.__dict__, "batch_size": 1}), "batch_size 1: batch norm cannot train"
    else:  # one training image; the rest of the set is test images
        shutil.copytree(data, tmp_path / "one_image")
        data, expected = tmp_path / "one_image", f"{tmp_path / 'one_image'}: 1 training image(s)"
        frame = read_manifest(data)
        frame.loc[frame.index[frame.split == "train"][1:], "split"] = "test"
        write_parquet(frame, data / "manifest.parquet")
    result = CliRunner().invoke(main, cli_train_args(config, tmp_path / "teacher", data)[3:])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert result.output.splitlines()[-1].startswith(f"Error: {expected}"), result.output
    assert not (tmp_path / "teacher" / "model.pt").exists()


@pytest.mark.parametrize("orth", ["or", "at"])
@pytest.mark.parametrize("whose", ["student", "teacher"])
def test_an_attention_map_of_one_position_is_one_line_not_nan_or_a_silent_ce_student(data, tiny_teacher, tmp_path,
                                                                                      orth, whose):
    """At stride 32 a 32 px crop leaves a 1 x 1 map: OR's standardisation was NaN, AT's penalty a constant. The
    line names whose map it is: the student's (its own options) or an earlier network's (retrain that one)."""
    student_stride, teacher = (32, tiny_teacher) if whose == "student" else (8, train(
        "teacher", data, tmp_path / "teacher", TrainConfig(**{**TINY.__dict__, "epochs": 1, "attention_stride": 32}),
        progress=False))
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "orth": orth, "attention_stride": student_stride})
    args = cli_train_args(config, tmp_path / "student", data, "--earlier", str(teacher), "--index", "1",
                          stage="student")
    result = CliRunner().invoke(main, args[3:])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    small, retrain = {"student": ("the student's (1 x 1)", ""),
                      "teacher": ("--earlier model 1's (1 x 1)", "; retrain the earlier models named the same way")}[whose]
    assert result.output.splitlines() == [f"Error: orth {orth}: attention maps of one position at 32 x 32 inputs: "
                                          f"{small}; a penalty on where a network attends needs at least 2 positions: "
                                          f"raise the crop or lower attention_stride{retrain}"], result.output
    assert not (tmp_path / "student" / "model.pt").exists()


def test_wrong_earlier_models_are_refused(data, tmp_path):
    teacher = train("teacher", data, tmp_path / "teacher", TrainConfig(**{**TINY.__dict__, "epochs": 1}), progress=False)
    with pytest.raises(FgkdError, match="expected 2 --earlier models"):
        train("student", data, tmp_path / "s2", TINY, [teacher], index=2, progress=False)
    other = tmp_path / "other"
    generate(other / "raw", classes=3, images_per_class=6, size=32, seed=1)
    prepare("cub", other / "raw", other / "prepared", progress=False)
    with pytest.raises(FgkdError, match="trained for 4 classes, the data set has 3"):
        train("student", other / "prepared", tmp_path / "s1", TINY, [teacher], index=1, progress=False)
    with pytest.raises(FgkdError, match="orth: 'xx'"):
        train("teacher", data, tmp_path / "bad", TrainConfig(**{**TINY.__dict__, "orth": "xx"}), progress=False)


def test_part_occlusion_as_generated_matches_predict_on_the_prepared_files(data, tmp_path):
    from fgkd.occlusion import part_occlusion

    teacher = train("teacher", data, tmp_path / "teacher", TINY, progress=False)
    logits = predict(teacher, data, tmp_path / "logits.parquet")
    frame = pd.read_parquet(logits)
    expected = (frame.filter(like="logit_").to_numpy().argmax(1) == frame["label"].to_numpy()).mean()
    table = part_occlusion(data.parent / "raw", data, [teacher], tmp_path / "occlusion.parquet")
    as_generated = table[(table.network == "teacher") & (table.condition == "as generated")]["top1"].iloc[0]
    assert as_generated == pytest.approx(expected)
    assert set(table["condition"]) >= {"all visible", "hidden:head", "only:tail"}
    assert set(table["network"]) == {"teacher", "ensemble"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_saves_a_mid_epoch_checkpoint_and_the_rerun_resumes_exactly(data, tmp_path, signum, caplog):
    config = TrainConfig(**{**TINY.__dict__, "epochs": 6})
    with caplog.at_level("INFO", logger="fgkd"):
        reference = train("teacher", data, tmp_path / "reference", config, progress=False)
    total = optimizer_steps(caplog.text)
    out = tmp_path / "preempted"
    process = subprocess.Popen(cli_train_args(config, out, data), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_file(out / "checkpoint.pt", process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr.decode()[-2000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr.decode()
    epoch, step = checkpoint_position(out / "checkpoint.pt")
    assert step >= 1  # stopped inside an epoch
    caplog.clear()
    with caplog.at_level("INFO", logger="fgkd"):
        resumed = train("teacher", data, out, config, progress=False)
    assert resumed_at(caplog.text) == (epoch, step)
    assert optimizer_steps(caplog.text) == total - epoch * total // config.epochs - step
    for which in ("best", "last"):
        for key, value in weights(reference, which).items():
            assert torch.equal(value, weights(resumed, which)[key]), (which, key)
    timing = ["seconds", "images_per_s"]
    pd.testing.assert_frame_equal(pd.read_parquet(reference.parent / "history.parquet").drop(columns=timing),
                                  pd.read_parquet(resumed.parent / "history.parquet").drop(columns=timing))


def test_model_pt_records_the_arithmetic_of_every_process_that_trained_it(data, tmp_path):
    """CPU results depend on the thread count and on which kernels oneDNN picks; a run stopped and resumed under
    others records both settings, so that its numbers are not taken for those of either alone. A checkpoint of an
    fgkd that recorded nothing leaves an 'unrecorded' entry, not a record of the resuming process alone."""
    from fgkd import arithmetic

    config = TrainConfig(**{**TINY.__dict__, "epochs": 6})
    out = tmp_path / "teacher"
    process = subprocess.Popen(cli_train_args(config, out, data), env={**os.environ, "OMP_NUM_THREADS": "2"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_file(out / "checkpoint.pt", process)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr.decode()[-2000:]
    older = tmp_path / "older"  # the same checkpoint as an fgkd without the record wrote it
    shutil.copytree(out, older)
    saved = torch.load(older / "checkpoint.pt", weights_only=True)
    del saved["state"]["arithmetic"]
    torch.save(saved, older / "checkpoint.pt")

    capped = {**os.environ, "OMP_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    for folder in (out, older):
        resumed = subprocess.run(cli_train_args(config, folder, data), capture_output=True, text=True, env=capped)
        assert resumed.returncode == 0 and "resuming after epoch" in resumed.stderr, resumed.stderr[-2000:]
    first, second = torch.load(out / "model.pt", weights_only=True)["metadata"]["arithmetic"]
    inherited = {name: os.environ[name] for name in arithmetic.LIMITS if os.environ.get(name)}
    assert (first["device"], first["threads"], first["limits"]) == ("cpu", 2, inherited)
    assert (second["device"], second["threads"], second["limits"]) == ("cpu", 1, {**inherited, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert first["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and first["torch"] == torch.__version__
    assert torch.load(older / "model.pt", weights_only=True)["metadata"]["arithmetic"] == [arithmetic.UNRECORDED, second]


@pytest.mark.parametrize("backbone", SPEED_PATH_BACKBONES)
def test_compiled_network_trains_like_the_eager_one(backbone, data, tmp_path):
    from torch._dynamo.utils import counters

    name, stride = SPEED_PATH_BACKBONES[backbone]
    config = dataclasses.replace(TINY, backbone=name, attention_stride=stride, epochs=1)
    counters.clear()
    eager = train("teacher", data, tmp_path / "eager", config, progress=False)
    assert counters["stats"]["unique_graphs"] == 0
    compiled = train("teacher", data, tmp_path / "compiled", dataclasses.replace(config, compile="on"), progress=False)
    assert counters["stats"]["unique_graphs"] > 0  # it was compiled: training like eager alone would not show it
    a, b = (pd.read_parquet(p.parent / "history.parquet") for p in (eager, compiled))
    assert b["loss"].iloc[0] == pytest.approx(a["loss"].iloc[0], rel=1e-4)  # fused kernels round differently
    assert b["train_acc"].iloc[0] == a["train_acc"].iloc[0]
    assert set(weights(compiled)) == set(weights(eager))  # saved without torch.compile's wrapper names


@pytest.mark.parametrize("backbone", SPEED_PATH_BACKBONES)
def test_gpu_fast_path_settings_compute_like_float32(backbone, data, tmp_path):
    """bf16 autocast and channels_last (the CUDA defaults) forced on CPU. With a zero learning rate the
    epoch's loss is the forward pass of the same initial weights: equal to bf16's precision."""
    name, stride = SPEED_PATH_BACKBONES[backbone]
    config = dataclasses.replace(TINY, backbone=name, attention_stride=stride, epochs=1, lr=0.0, backbone_lr=0.0)
    plain = train("teacher", data, tmp_path / "fp32", config, progress=False)
    fast = train("teacher", data, tmp_path / "bf16", dataclasses.replace(config, amp="bf16", channels_last="on"),
                 progress=False)
    a, b = (pd.read_parquet(p.parent / "history.parquet")["loss"].iloc[0] for p in (plain, fast))
    assert b == pytest.approx(a, rel=0.01) and b != a  # bf16 keeps 8 bits of mantissa: close, not equal
    assert all(v.dtype == torch.float32 for v in weights(fast).values() if v.is_floating_point())
    logits = pd.read_parquet(predict(fast, data, tmp_path / "logits.parquet")).filter(like="logit_")
    assert logits.notna().all().all()
    model, _ = load_model(fast)
    images = torch.stack([load_split(data, "test", ImageSizes(32, 32))[i][0] for i in range(8)])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what validation and predict run under on CUDA
        out = model(images)
    assert out.dtype == torch.float32 and not torch.equal(out.to(torch.bfloat16).float(), out)  # bf16 logits tie


def test_validation_accuracy_counts_ties_against_the_prediction(data):
    """It picks the best epoch: a network that scores every class alike must earn nothing (argmax would credit it
    with the share of class 0)."""
    import torch

    from fgkd.data.dataset import load_split
    from fgkd.data.recipes import ImageSizes
    from fgkd.distributed import Processes
    from fgkd.models import FGVCNet
    from fgkd.train import _val_accuracy

    model = FGVCNet("resnet10", 4, "gap", 32, 8)
    torch.nn.init.zeros_(model.head.fc.weight)
    torch.nn.init.zeros_(model.head.fc.bias)
    val = load_split(data, "val", ImageSizes(TINY.resize, TINY.crop), TINY.val_fraction, TINY.seed)
    assert (val.labels == 0).any()
    assert _val_accuracy(model, val, torch.device("cpu"), TINY, Processes()) == 0.0


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(data, tmp_path):
    """Before, a student trained into its teacher's folder replaced the teacher, and predict wrote logits over the
    model (or the manifest) it read."""
    import shutil

    from click.testing import CliRunner

    from fgkd.cli import main

    data = shutil.copytree(data, tmp_path / "data")  # the shared fixture must survive a regression
    teacher = train("teacher", data, tmp_path / "teacher", TrainConfig(**{**TINY.__dict__, "epochs": 1}), progress=False)
    before = teacher.read_bytes(), (data / "manifest.parquet").read_bytes()
    runs = [["train", "--stage", "student", "--index", "1", "--earlier", str(teacher), "--data", str(data),
             "--out", str(tmp_path / "teacher" / ".." / "teacher"), "--backbone", "resnet10", "--epochs", "1",
             "--resize", "36", "--crop", "32", "--no-progress"],
            ["predict", "--model", str(teacher), "--data", str(data), "--out", str(teacher)],
            ["predict", "--model", str(teacher), "--data", str(data), "--out", str(data / "manifest.parquet")]]
    for args in runs:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "would overwrite it" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert (teacher.read_bytes(), (data / "manifest.parquet").read_bytes()) == before


@pytest.mark.parametrize("scores,best", [([0.5, 0.9, 0.3], 2), ([0.6, 0.6, 0.2], 1), ([0.1, 0.2, 0.3], 3)])
def test_model_pt_holds_the_weights_of_the_epoch_best_on_validation(data, tmp_path, monkeypatch, scores, best):
    """Validation top-1 scripted per epoch; the weights each epoch ended with recorded where it is measured."""
    import fgkd.train

    ended = []

    def scripted(model, val_set, device, config, processes):
        ended.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return scores[len(ended) - 1]

    monkeypatch.setattr(fgkd.train, "_val_accuracy", scripted)
    path = train("teacher", data, tmp_path / "run", TrainConfig(**{**TINY.__dict__, "epochs": 3}), progress=False)
    saved = torch.load(path, weights_only=True)
    assert saved["metadata"]["best_epoch"] == best and saved["metadata"]["best_val_acc"] == scores[best - 1]
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, ended[best - 1][key]), key
    for key, value in saved["last_state_dict"].items():
        assert torch.equal(value, ended[-1][key]), key
    assert any(not torch.equal(ended[0][k], ended[-1][k]) for k in ended[0])  # the epochs' weights differ


def test_without_a_validation_split_the_last_epoch_is_kept(data, tmp_path):
    path = train("teacher", data, tmp_path / "run", TrainConfig(**{**TINY.__dict__, "val_fraction": 0.0}),
                 progress=False)
    saved = torch.load(path, weights_only=True)
    assert saved["metadata"]["best_epoch"] == TINY.epochs
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, saved["last_state_dict"][key]), key


def test_a_process_other_than_the_first_writes_nothing(data, tmp_path):
    """Under torchrun only the first process writes the checkpoint, model.pt and history: a late write by another one
    could leave a stale file. Process 1 of a world of one runs the whole loop without collectives."""
    from fgkd.distributed import Processes

    train("teacher", data, tmp_path / "run", TrainConfig(**{**TINY.__dict__, "epochs": 1}), progress=False,
          processes=Processes(rank=1, world=1))
    assert list((tmp_path / "run").iterdir()) == []
