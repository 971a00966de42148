"""The workflow through a real one-node SLURM cluster (scripts/slurm-local: slurmctld, slurmd, munge) and the
profile slurm/config.yaml: config/paper.yaml's method at toy scale, every rule a SLURM job, and a time-limit signal
to a data-parallel training job, whose retry resumes. All of the suite's SLURM jobs are here: the cluster is one per
machine, and these tests run in one process (scripts/test runs test files in parallel, a file in one process)."""

import os
import re
import subprocess

import pandas as pd
import pytest
import torch

from fixtures import optimizer_steps, resumed_at, wait_for_file
from test_paper import CONFIGS, assert_trained_with_the_papers_options, merged_config, paper_project
from test_workflow import BIN, job_counts, project_copy, run

# Status checks every 2 s, not Snakemake's 10: the jobs here last seconds, and each waited for a check (a real
# cluster keeps the default, which spares its controller).
QUICK_STATUS = ["--seconds-between-status-checks", "2"]


def slurm_rules(output: str) -> set[str]:
    """The rules of the jobs a `snakemake --profile slurm` run submitted to SLURM, from its log."""
    return set(re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/rule_(\w+)/", output))


# Epochs of the signalled training: the signal lands in the epoch after the first checkpoint, and the training must
# outlast it by a few epochs (seconds each here) whatever the machine's load.
SIGNALLED_EPOCHS = 6


def test_slurm_signal_before_the_time_limit_checkpoints_and_the_retry_resumes(tmp_path, slurm_cluster):
    """scancel --signal=USR1 (what --signal=USR1@120 sends) to a training job of two data-parallel processes; the
    synthetic set's rules run as SLURM jobs too."""
    projects = {name: project_copy(tmp_path / name) for name in ("reference", "slurm")}
    for project in projects.values():
        config = project / "config" / "config.yaml"
        config.write_text(config.read_text().replace("epochs: 1", f"epochs: {SIGNALLED_EPOCHS}"))
    target = "results/synthetic/resnet10/seed0/teacher/model.pt"
    two_processes = ["--config", "gpus_per_job=0", "train_processes=2"]
    run(["snakemake", "--cores", "2", target, *two_processes], projects["reference"])

    project = projects["slurm"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    process = subprocess.Popen(["snakemake", "--profile", "slurm", target, *QUICK_STATUS, *two_processes], cwd=project,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = project / "results/synthetic/resnet10/seed0/teacher/checkpoint.pt"
    wait_for_file(checkpoint, process, timeout=600)
    running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert len(running) == 1, running
    subprocess.run(["scancel", "--signal=USR1", running[0]], check=True)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]
    assert slurm_rules(output) == {"synth", "prepare", "train_shared"}, output[-3000:]
    assert "Trying to restart job" in output or "retry" in output.lower()
    logs = {name: (project / "logs/train/synthetic/resnet10/seed0/teacher.log").read_text()
            for name, project in projects.items()}  # the SLURM one is the retry's: it replaces the stopped attempt's
    epoch, step = resumed_at(logs["slurm"])
    assert step >= 1, logs["slurm"][-3000:]  # stopped, and resumed, inside an epoch
    per_epoch = optimizer_steps(logs["reference"]) // SIGNALLED_EPOCHS
    assert optimizer_steps(logs["slurm"]) == optimizer_steps(logs["reference"]) - epoch * per_epoch - step
    a = torch.load(projects["reference"] / target, weights_only=True)
    b = torch.load(project / target, weights_only=True)
    assert a["metadata"]["processes"] == b["metadata"]["processes"] == 2
    for which in ("state_dict", "last_state_dict"):
        assert all(torch.equal(a[which][k], b[which][k]) for k in a[which])


PAIR = ("cars", "resnet50")  # the method, K = 3 students and aux-KD, on Stanford Cars (a folder)
TARGETS = ["all", "results/aircraft/resnet50/seed0/teacher/model.pt"]  # and FGVC-Aircraft's teacher (an archive)


@pytest.fixture(scope="module")
def paper_through_slurm(tmp_path_factory, slurm_cluster):
    """The project, the rules its run planned and those it submitted to SLURM."""
    project = paper_project(tmp_path_factory.mktemp("paper"), ["resnet50"])
    command = ["snakemake", "--profile", "slurm", *TARGETS, *QUICK_STATUS, *CONFIGS, "--config",
               f"run_datasets=[{PAIR[0]}]", f"backbones=[{PAIR[1]}]"]
    planned = set(job_counts(run([*command, "--dry-run"], project).stdout)) - {"all"}
    result = run(command, project, timeout=1800)
    return project, planned, slurm_rules(result.stdout + result.stderr)


def test_the_papers_method_runs_every_rule_as_a_slurm_job(paper_through_slurm):
    project, planned, submitted = paper_through_slurm
    assert {"prepare", "train_shared", "train_variant", "predict", "ensemble", "attention", "report"} <= planned
    local = {"verify_data", "verify_shared", "verify_variant"}  # checks of a few seconds, run where snakemake runs
    assert local <= planned and submitted == planned - local
    metrics = pd.read_parquet(project / "results" / "reports" / "metrics.parquet")
    assert set(zip(metrics.dataset, metrics.backbone)) == {PAIR}
    assert set(metrics["method"]) == {"teacher", "student_1", "student_2", "student_3", "ensemble", "auxkd"}
    assert set(metrics["selection"]) == {"best", "last"} and metrics["top1"].between(0, 1).all()


def test_the_papers_networks_trained_through_slurm_carry_its_options(paper_through_slurm):
    project = paper_through_slurm[0]
    models = sorted((project / "results").rglob("model.pt"))
    # Cars: the teacher, K = 3 students, the aux-KD student; Aircraft: the teacher
    assert len(models) == 1 + 3 + 1 + 1, [str(m) for m in models]
    config = merged_config(project)
    for model in models:
        assert_trained_with_the_papers_options(project, config, model, config["students"])
