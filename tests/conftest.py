import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fgkd.train import TrainConfig  # noqa: E402

# A network and schedule small enough for a CPU test run in seconds.
TINY = TrainConfig(backbone="resnet10", epochs=2, batch_size=8, resize=36, crop=32, lr=0.05, backbone_lr=0.05,
                   val_fraction=0.25, attention_stride=8, head_hidden=32)

# timm: one model per family, the smallest of timm's registry (its test_* models; Swin has none, so its tiny one), and
# the stride of the attention map each trains with on 32 px crops (Swin's last stage is 1 x 1 there: no "where").
FAMILIES = {"vit": ("timm-test_vit", 16), "swin": ("timm-swin_tiny_patch4_window7_224", 16),
            "convnext": ("timm-test_convnext", 8), "efficientnet": ("timm-test_efficientnet", 8),
            "resnet": ("timm-test_resnet", 8)}

# The backbones the speed paths (bf16 + channels_last, torch.compile, data-parallel training) are tested with:
# torchvision's ResNet, a timm ViT (layer norm only) and a timm EfficientNet (batch norm with its activation inside,
# which synchronisation must keep).
SPEED_PATH_BACKBONES = {"resnet10": (TINY.backbone, TINY.attention_stride), "timm_vit": FAMILIES["vit"],
                        "timm_efficientnet": FAMILIES["efficientnet"]}

# scripts/test runs the test files in parallel (pytest-xdist, --dist loadfile: a file in one process, in this order),
# so the longest files start first: one started last would run alone at the end.
SLOWEST_FIRST = ["test_workflow.py", "test_slurm.py", "test_paper.py", "test_distributed.py", "test_faults.py",
                 "test_train.py", "test_timm_backbones.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared synthetic set: 4 classes x 12 images of 32 px (raw data in its sibling folder raw/)."""
    from fgkd.data.prepare import prepare
    from fgkd.data.synth import generate

    base = tmp_path_factory.mktemp("tiny")
    generate(base / "raw", classes=4, images_per_class=12, size=32, seed=0)
    prepare("cub", base / "raw", base / "prepared", progress=False)
    return base / "prepared"


@pytest.fixture(scope="session")
def one_batch_data(tmp_path_factory):
    """4 classes x 32 images of 32 px, 48 of them for training: one batch per epoch at batch size 48, so that one
    process and N processes see the same images in each step (data-parallel tests)."""
    from fgkd.data.prepare import prepare
    from fgkd.data.synth import generate

    base = tmp_path_factory.mktemp("one_batch")
    generate(base / "raw", classes=4, images_per_class=32, size=32, seed=3)
    prepare("cub", base / "raw", base / "prepared", progress=False)
    return base / "prepared"


@pytest.fixture(scope="session")
def tiny_teacher(tiny_data, tmp_path_factory):
    """model.pt of a teacher trained for one epoch on tiny_data (history.parquet beside it); tests must not change
    its folder."""
    from fgkd.train import train

    config = TrainConfig(**{**TINY.__dict__, "epochs": 1})
    return train("teacher", tiny_data, tmp_path_factory.mktemp("teacher"), config, progress=False)


@pytest.fixture(scope="session")
def official_teacher(tiny_data, tmp_path_factory):
    """A one-epoch teacher of tiny_data on the official code's input recipe (square resize, mean = std = 0.5): what
    classify and export must reproduce from the model.pt alone."""
    from fgkd.train import train

    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "preprocessing": "official"})
    return train("teacher", tiny_data, tmp_path_factory.mktemp("official") / "teacher", config, progress=False)


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs folder (full or read-only disks are real here; needs root, as CI has);
    unmounted afterwards."""
    mounted = []

    def make(options):
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                                text=True)
        assert result.returncode == 0, f"these fault tests need root to mount a tmpfs: {result.stderr}"
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", str(target)], capture_output=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node SLURM cluster on this machine (scripts/slurm-local: slurmctld, slurmd, munge), started once
    for the tests that submit jobs to it."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm-local"
    start = subprocess.run([script, "start"], capture_output=True, text=True)
    assert start.returncode == 0, f"could not start the local SLURM cluster (needs root and Debian's slurm packages):\n{start.stderr}"
    yield
    subprocess.run([script, "stop"], capture_output=True)
