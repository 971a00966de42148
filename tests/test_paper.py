"""config/paper.yaml's pipeline for real, at toy scale: the three data sets from archives and folders in their
official layouts, ResNet-50 and VGG-16-BN with the official head and preprocessing, K = 3, start weights from local
files, aux-KD and the ablations. The overlay config/toy.yaml changes only sizes (images, crops, seeds, loader
workers), epochs, the start-weights path (a file the test makes: no download) and gpus_per_job (no GPU here).

Cost: every job is a process that imports torch (2-5 s of CPU here) and builds its networks; the paper's DAG at one
seed is 6 pairs of data set and backbone x 36 jobs, about 17 CPU-minutes here: too long for CI. So the whole DAG is
planned and every one of its `fgkd train` commands checked, and a part that takes every code path is run: here, the
method and the ablations (every variant, aux-KD and its baselines, every report) on CUB x VGG-16-BN (an archive; the
backbone with its own head width), with K = 2 students (a third takes no other path and costs 3 variants x 3 jobs);
in test_slurm.py, through the local SLURM cluster, the method with the paper's K = 3 on Stanford Cars x ResNet-50 (a
folder) and the teacher of FGVC-Aircraft (an archive).
"""

import functools
import hashlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
import yaml

from fixtures import archive, make_aircraft, make_cars, make_cub
from test_workflow import REPO, expected_train_options, project_copy, run, shell_commands, train_options_in

PAIRS = [(d, b) for d in ("cub", "cars", "aircraft") for b in ("resnet50", "vgg16_bn")]
RUN_PAIR = ("cub", "vgg16_bn")  # everything of the method and the ablations
RUN_STUDENTS = 2  # K of that run (the plan keeps the paper's 3)
CONFIGS = ["--configfile", "config/paper.yaml", "config/toy.yaml"]
OVERLAY = """\
# Toy scale of config/paper.yaml: only sizes, epochs, the start weights' path and the GPUs change.
datasets:
  cub: {resize: 72}
  cars: {resize: 72}
  aircraft: {resize: 72}
seeds: [0]
train:
  pretrained: weights/{backbone}.pth
  epochs: 1
  batch_size: 4
  resize: 72
  crop: 64
  workers: 0
predict: {batch_size: 16}
attention: {images: 2}
gpus_per_job: 0
"""


def weights_file(backbone: str, target: Path) -> None:
    """A torchvision state dict of the backbone, as `torch.save(model.state_dict(), ...)` writes it. VGG's
    classifier (120M parameters, which fgkd drops) is left out to spare each job hashing 0.5 GB; complete files are
    tested in test_start_weights."""
    torch.manual_seed(0)
    state = torchvision.models.get_model(backbone).state_dict()
    if backbone.startswith("vgg"):
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)


def paper_project(base: Path, backbones: list[str]) -> Path:
    """A project with config/paper.yaml and the toy overlay, the three data sets' raw data in their official layouts
    and a start-weights file per backbone."""
    project = project_copy(base / "project")
    shutil.copy2(REPO / "config" / "paper.yaml", project / "config" / "paper.yaml")
    (project / "config" / "toy.yaml").write_text(OVERLAY)
    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    make_cub(base / "cub", classes=3, per_class=6)
    archive(base / "cub", raw / "CUB_200_2011.tgz")
    make_cars(raw / "stanford_cars", classes=3, per_class=3)
    make_aircraft(base / "aircraft", classes=3, per_class=3)
    archive(base / "aircraft", raw / "fgvc-aircraft-2013b.tar.gz")
    for backbone in backbones:
        weights_file(backbone, project / "weights" / f"{backbone}.pth")
    return project


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    project = paper_project(tmp_path_factory.mktemp("paper"), ["resnet50", "vgg16_bn"])  # the plan needs both
    dataset, backbone = RUN_PAIR
    run(["snakemake", "--cores", "2", "ablations", *CONFIGS, "--config", f"run_datasets=[{dataset}]",
         f"backbones=[{backbone}]", f"students={RUN_STUDENTS}"], project, timeout=1800)
    return project


def merged_config(project: Path) -> dict:
    """paper.yaml with the overlay merged in, as Snakemake merges --configfile files (nested keys update)."""
    config = yaml.safe_load((project / "config" / "paper.yaml").read_text())
    for key, value in yaml.safe_load((project / "config" / "toy.yaml").read_text()).items():
        if key == "datasets":
            for name, spec in value.items():
                config["datasets"][name].update(spec)
        elif isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    return config


def test_the_toy_overlay_changes_only_sizes_epochs_weights_and_devices_of_the_whole_dag(paper):
    """Every `fgkd train` command of the paper's whole DAG (6 pairs, all variants): the overlay's options are the
    only difference from config/paper.yaml alone, and each command carries the options the README's layering gives."""
    plan = ["snakemake", "--cores", "2", "ablations", "-n", "-p", "--forceall"]
    full = run([*plan, "--configfile", "config/paper.yaml"], paper).stdout
    toy = run([*plan, *CONFIGS], paper).stdout
    config = merged_config(paper)
    overlay_keys = set(yaml.safe_load(OVERLAY)["train"])
    commands = {}
    for name, output in (("full", full), ("toy", toy)):
        for words in shell_commands(output, "train"):
            out = re.search(r"\$\(dirname (.+?/model\.pt)\)", " ".join(words)).group(1)
            commands.setdefault(name, {})[out] = train_options_in(words)
    assert len(commands["toy"]) == len(PAIRS) * (3 + 3 * 3 + 1)  # shared 3; 3 variants x K; the method's aux-KD
    for out, options in commands["toy"].items():
        paper_options = commands["full"][out]  # the paper's own command for this network (seed 0 of its 3)
        changed = {k for k in paper_options.keys() | options.keys() if paper_options.get(k) != options.get(k)}
        assert changed <= overlay_keys, (out, changed)
        parts = Path(out).parent.relative_to("results").parts
        variant, stage = (None, parts[3]) if len(parts) == 4 else parts[3:5]
        expected = expected_train_options(config, parts[0], parts[1], parts[2].removeprefix("seed"), variant, stage)
        expected["pretrained"] = expected["pretrained"].format(backbone=parts[1])
        assert options == expected, out


def student_names(k: int) -> set[str]:
    return {f"student_{i}" for i in range(1, k + 1)}


def test_the_method_and_the_ablations_write_every_report_row(paper):
    reports = paper / "results" / "reports"
    metrics = pd.read_parquet(reports / "metrics.parquet")
    assert set(zip(metrics.dataset, metrics.backbone)) == {RUN_PAIR}
    assert set(metrics["method"]) == {"teacher", *student_names(RUN_STUDENTS), "ensemble", "auxkd"}
    assert set(metrics["selection"]) == {"best", "last"} and metrics["top1"].between(0, 1).all()
    assert "| cub | vgg16_bn |" in (reports / "summary.md").read_text()
    assert (reports / "figures" / "attention_cub_vgg16_bn.png").is_file()
    assert len(pd.read_parquet(reports / "comparisons.parquet"))
    ablations = pd.read_parquet(reports / "ablations" / "metrics.parquet")
    assert set(ablations["variant"]) == {"or", "lambda0", "at"}
    for variant in ("or", "lambda0", "at"):
        methods = set(ablations[ablations.variant == variant]["method"])
        assert {"teacher", *student_names(RUN_STUDENTS), "ensemble"} <= methods, variant
    assert {"auxkd", "auxkd_ce", "auxkd_single"} <= set(ablations["method"])
    paired = pd.read_parquet(reports / "ablations" / "comparisons.parquet")
    assert set(zip(paired.dataset, paired.backbone)) == {RUN_PAIR} and len(paired)


@functools.cache
def file_digest(path: Path) -> str:
    """The start-weights digest a model.pt records (sha256, 16 hex digits)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def assert_trained_with_the_papers_options(project: Path, config: dict, model: Path, students: int) -> None:
    """What ran, read from model.pt: the options of ``config`` (paper.yaml + overlay, merged_config) as the README
    layers them (the VGG head 4096 wide, official head and preprocessing), started from weights/{backbone}.pth (its
    sha256), and an aux-KD student with one auxiliary head per teacher (the run had K = ``students``)."""
    parts = model.parent.relative_to(project / "results").parts
    dataset, backbone, seed = parts[0], parts[1], parts[2].removeprefix("seed")
    variant, stage = (None, parts[3]) if len(parts) == 4 else parts[3:5]
    meta = torch.load(model, weights_only=True)["metadata"]
    ran = json.loads(meta["config"])
    expected = expected_train_options(config, dataset, backbone, seed, variant, stage)
    expected["pretrained"] = expected["pretrained"].format(backbone=backbone)
    assert {key: ran[key] if isinstance(ran[key], bool) else str(ran[key]) for key in expected} == expected, model
    assert meta["head"] == "official" and meta["preprocessing"] == "official"
    assert meta["head_hidden"] == (4096 if backbone == "vgg16_bn" else 512)
    assert meta["start"]["sha256"] == file_digest(project / "weights" / f"{backbone}.pth"), model
    # the teacher and the K students (single: the teacher alone)
    assert meta["aux_heads"] == {"auxkd": 1 + students, "auxkd_single": 1}.get(stage, 0), model


def test_every_network_was_trained_with_the_papers_options_and_the_local_weights(paper):
    models = sorted((paper / "results").rglob("model.pt"))
    # 3 shared; 3 variants x K; the method's aux-KD
    assert len(models) == 3 + 3 * RUN_STUDENTS + 1, [str(m) for m in models]
    config = merged_config(paper)
    for model in models:
        assert_trained_with_the_papers_options(paper, config, model, RUN_STUDENTS)
