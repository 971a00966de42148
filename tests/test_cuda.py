"""The CUDA paths: bf16 autocast, channels_last, one-process nccl data parallelism, SyncBatchNorm, predict in bf16,
pinned memory. Skipped, visibly (pytest -rs), on a machine without CUDA; nothing here has run on a GPU yet.

Tolerances. bf16 keeps 8 bits of mantissa. The same comparisons on the CPU (its bf16 autocast, ResNet-18 at 112 px,
random weights, batch 8) gave: losses within 0.1-2.6% of float32 (KD the largest), softmax probabilities within
0.002, logits within 0.05 absolute (their scale: 0.3-1 with random weights). The bounds below are 2-5x that:
losses 5% relative, probabilities 0.02, logits 0.15 absolute. float32 with TF32 off (channels_last against the
default layout): only the order of sums differs, 1e-4 relative.
"""

import subprocess

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import TINY
from fgkd.data.dataset import load_split, make_loader, make_train_loader
from fgkd.data.recipes import ImageSizes
from fgkd.distributed import sync_batchnorm
from fgkd.ensemble import predict
from fgkd.methods import METHODS, FrozenNetworks
from fgkd.models import FGVCNet
from fgkd.modelfile import load_model
from fgkd.train import TrainConfig, _autocast, evaluate
from fixtures import cli_train_args, torchrun_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

LOSS_RTOL, PROB_ATOL, LOGIT_ATOL = 0.05, 0.02, 0.15
CUDA = torch.device("cuda")


def network(aux_heads: int = 0, images: torch.Tensor | None = None) -> FGVCNet:
    """A ResNet-18 FGVCNet on the GPU (official head), its batch-norm statistics set by a few batches of ``images``
    (as a trained network's would be: the frozen networks run in eval mode)."""
    net = FGVCNet("resnet18", 10, "official", 64, 32, aux_heads).to(CUDA)
    if images is not None:
        with torch.no_grad():
            net.train()
            for _ in range(3):
                net(images)
    return net


@pytest.mark.parametrize("stage", ["teacher", "student", "auxkd"])
def test_bf16_autocast_gives_the_float32_losses_and_logits(stage):
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 112, 112, device=CUDA), torch.arange(8, device=CUDA) % 10
    earlier = FrozenNetworks([network(images=images).eval() for _ in range(2)])
    model = network(2 if stage == "auxkd" else 0, images)
    outputs = {}
    for amp in ("off", "bf16"):
        config = TrainConfig(amp=amp, device="cuda")
        method = METHODS[stage].from_config(model, earlier, config).train()
        with _autocast(CUDA, config):  # what train_epoch and evaluate run under
            outputs[amp] = method(images, labels)
    exact, bf16 = outputs["off"], outputs["bf16"]
    assert bf16.logits.dtype == torch.float32  # the heads run in float32 under autocast
    torch.testing.assert_close(bf16.logits, exact.logits, rtol=0, atol=LOGIT_ATOL)
    torch.testing.assert_close(bf16.logits.softmax(1), exact.logits.softmax(1), rtol=0, atol=PROB_ATOL)
    assert exact.losses.keys() == bf16.losses.keys()
    for key in [*exact.losses, *exact.extras]:
        value = {**exact.losses, **exact.extras}[key]
        # abs: the small KD term (0.1 here) may move by more than 5% of itself; 0.01 is a sliver of the total loss
        assert float({**bf16.losses, **bf16.extras}[key]) == pytest.approx(float(value), rel=LOSS_RTOL, abs=0.01), key


def test_channels_last_gives_the_same_logits(tiny_data):
    """evaluate(), as training's validation and predict run it, in float32 (TF32 off) with either memory layout."""
    torch.manual_seed(0)
    model = FGVCNet("resnet18", 4, "official", 32, 32).to(CUDA)
    loader = make_loader(load_split(tiny_data, "test", ImageSizes(36, 32)), batch_size=8)
    logits = {}
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for layout in ("off", "on"):
            config = TrainConfig(amp="off", channels_last=layout, device="cuda")
            logits[layout] = torch.from_numpy(evaluate(model.to(memory_format=torch.channels_last if layout == "on"
                                                                else torch.contiguous_format), loader, CUDA,
                                                       config)["logits"])
    torch.testing.assert_close(logits["on"], logits["off"], rtol=1e-4, atol=1e-4)


def test_one_process_nccl_run_through_torchrun_trains_like_a_plain_cuda_run(tiny_data, tmp_path):
    """torchrun with one process: the nccl process group, DDP and SyncBatchNorm all run (with one process they
    compute what the plain run does); the saved model.pt loads into a plain network."""
    config = TrainConfig(**{**TINY.__dict__, "head": "official", "device": "cuda"})
    plain = subprocess.run(cli_train_args(config, tmp_path / "plain", tiny_data), capture_output=True, text=True,
                           timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]
    ddp = subprocess.run(torchrun_args(cli_train_args(config, tmp_path / "ddp", tiny_data)), capture_output=True,
                         text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "data-parallel: 1 process(es), nccl backend, on cuda:0" in ddp.stderr

    one, two = (pd.read_parquet(tmp_path / name / "history.parquet") for name in ("plain", "ddp"))
    assert two["loss"].iloc[0] == pytest.approx(one["loss"].iloc[0], rel=1e-2)
    model, meta = load_model(tmp_path / "ddp" / "model.pt")  # strict: every key of a plain FGVCNet
    assert meta["processes"] == 1
    (record,) = meta["arithmetic"]
    assert (record["device"], record["gpu"]) == ("cuda", torch.cuda.get_device_name(0))
    assert record["tf32_convolutions"] == torch.backends.cudnn.allow_tf32
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not (tmp_path / "ddp" / "checkpoint.pt").exists()


def test_syncbatchnorm_conversion_keeps_the_state_dict_of_the_plain_network():
    torch.manual_seed(0)
    plain = FGVCNet("resnet18", 10, "official", 64, 32).to(CUDA)
    synced = sync_batchnorm(FGVCNet("resnet18", 10, "official", 64, 32).to(CUDA), CUDA)
    batch_norms = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batch_norms and all(isinstance(m, nn.SyncBatchNorm) for m in batch_norms)
    assert synced.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(synced.state_dict())  # strict, as load_model does with a saved model.pt
    images = torch.randn(4, 3, 64, 64, device=CUDA)
    with torch.no_grad():  # eval mode: both normalise with the same running statistics, no process group needed
        torch.testing.assert_close(plain.eval()(images), synced.eval()(images))


def test_predict_in_bf16_on_cuda_agrees_with_float32_on_the_cpu(tiny_teacher, tiny_data, tmp_path):
    predict(tiny_teacher, tiny_data, tmp_path / "cuda.parquet", device="cuda")  # amp auto: bf16 on CUDA
    predict(tiny_teacher, tiny_data, tmp_path / "cpu.parquet", device="cpu")
    cuda, cpu = (pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("cuda", "cpu"))
    assert cuda["image_id"].tolist() == cpu["image_id"].tolist()
    columns = [c for c in cpu.columns if c.startswith("logit_")]
    assert all(cuda[c].dtype == "float32" for c in columns)
    low, exact = (torch.tensor(frame[columns].to_numpy()) for frame in (cuda, cpu))
    torch.testing.assert_close(low, exact, rtol=LOSS_RTOL, atol=LOGIT_ATOL)  # trained logits are larger
    torch.testing.assert_close(low.softmax(1), exact.softmax(1), rtol=0, atol=PROB_ATOL)


def test_attention_on_cuda_gives_the_cpus_overlap(tiny_teacher, tiny_data, tmp_path):
    """The workflow's attention job runs on its GPU (float32; TF32 convolutions by torch's default); a trained and
    an untrained network, so that the overlap is not 1 whatever the maps."""
    from artifacts import save_model
    from fgkd.report import attention

    untrained = save_model(tmp_path / "untrained" / "model.pt", 4)[0]
    overlaps = {}
    for device in ("cuda", "cpu"):
        attention([tiny_teacher, untrained], tiny_data, 2, tmp_path / f"{device}.parquet", tmp_path / f"{device}.png",
                  batch_size=3, device=device)
        overlaps[device] = pd.read_parquet(tmp_path / f"{device}.parquet")["overlap"].item()
    assert overlaps["cpu"] < 0.99 and overlaps["cuda"] == pytest.approx(overlaps["cpu"], abs=1e-3)


def test_loaders_pin_memory_and_non_blocking_copies_keep_the_values(tiny_data):
    dataset = load_split(tiny_data, "train", ImageSizes(36, 32))
    for loader in (make_train_loader(dataset, 8, seed=0), make_loader(dataset, 8)):
        assert loader.pin_memory
        images, labels, _ = next(iter(loader))
        assert images.is_pinned() and labels.is_pinned()
        on_gpu = images.to(CUDA, non_blocking=True, memory_format=torch.channels_last)  # as train_epoch copies
        torch.cuda.synchronize()
        assert torch.equal(on_gpu.cpu(), images)
