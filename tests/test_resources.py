"""What each job asks SLURM for: the config's `resources:` per kind of job, the profile's default-resources and
`--set-resources`, read from the jobs a `snakemake --profile slurm` dry run plans, and from the sbatch command lines
the SLURM plugin writes for them (a stand-in sbatch records them: no cluster)."""

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from test_workflow import job_counts, project_copy, run

SIGNAL = "--signal=USR1@120"  # what training checkpoints on before the time limit
KINDS = {"synth": "other", "prepare": "prepare", "train_shared": "train", "train_variant": "train",
         "predict": "evaluate", "attention": "evaluate", "part_occlusion": "evaluate", "ensemble": "other",
         "report": "other", "report_ablations": "other"}
LOCAL = {"verify_data", "verify_shared", "verify_variant", "ablations"}  # run where snakemake runs
GPU_RULES = {"train_shared", "train_variant", "predict", "attention"}
# The schema's defaults of each kind, pinned: changing one changes what every cluster running fgkd is asked for.
DEFAULTS = {"other": {"mem_mb": "2000", "runtime": "30"}, "prepare": {"mem_mb": "4000", "runtime": "60"},
            "train": {"mem_mb": "16000", "runtime": "1440"}, "evaluate": {"mem_mb": "8000", "runtime": "60"}}
SLURM_KEYS = ("cpus_per_task", "slurm_partition", "slurm_account", "constraint", "qos", "slurm_extra", "gpu")
CONFIGURED = {
    "train": {"runtime": 2880, "mem_mb": 64000, "cpus_per_task": 8, "slurm_partition": "gpu", "slurm_account": "mylab",
              "constraint": "a100", "qos": "long"},
    "evaluate": {"runtime": 90, "mem_mb": 12000, "gpus": 0, "slurm_partition": "cpu", "slurm_account": "mylab",
                 "slurm_extra": "--mail-type=FAIL"},
    "prepare": {"runtime": 120, "mem_mb": 6000},
}


def planned_jobs(dry_run_output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of each job a dry run prints, the resources as the text it shows."""
    jobs = []
    for block in dry_run_output.split("\nrule ")[1:]:
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        pairs = resources.group(1).split(", ") if resources else []
        jobs.append((block.split(":", 1)[0], dict(pair.split("=", 1) for pair in pairs)))
    return jobs


def slurm_choices(resources: dict[str, str]) -> dict[str, str]:
    return {key: resources[key] for key in ("mem_mb", "runtime", *SLURM_KEYS) if key in resources}


def plan(project: Path, *args: str) -> list[tuple[str, dict[str, str]]]:
    result = run(["snakemake", "--profile", "slurm", "ablations", "--dry-run", *args], project)
    jobs = planned_jobs(result.stdout)
    assert {rule for rule, _ in jobs} == set(KINDS) | LOCAL, job_counts(result.stdout)
    return [(rule, resources) for rule, resources in jobs if rule not in LOCAL]


def write_config(project: Path, resources: dict) -> list[str]:
    (project / "resources.yaml").write_text(yaml.safe_dump({"resources": resources}))
    return ["--configfile", "config/config.yaml", "resources.yaml"]


@pytest.fixture
def project(tmp_path):
    return project_copy(tmp_path / "project", default_config="config.yaml")


def test_the_default_config_plans_each_kinds_defaults(project):
    for rule, resources in plan(project):
        gpu = {"gpu": "1"} if rule in GPU_RULES else {}
        assert slurm_choices(resources) == {**DEFAULTS[KINDS[rule]], "cpus_per_task": "1", "slurm_extra": SIGNAL,
                                            **gpu}, rule


def test_the_configs_resources_reach_every_job_of_their_kind(project):
    """Runtime, memory, GPUs, partition, account, constraint, qos and extra sbatch options, per kind; the time-limit
    signal stays in front of a kind's own slurm_extra; the other kind keeps the defaults and the profile's signal."""
    jobs = plan(project, *write_config(project, CONFIGURED))
    expected = {kind: {key: str(value) for key, value in spec.items() if key != "gpus"}
                for kind, spec in CONFIGURED.items()}
    expected["evaluate"]["slurm_extra"] = f"{SIGNAL} --mail-type=FAIL"
    for rule, resources in jobs:
        kind = KINDS[rule]
        gpu = {"gpu": {"train": "1", "evaluate": "0"}[kind]} if rule in GPU_RULES else {}
        assert slurm_choices(resources) == {"cpus_per_task": "1", "slurm_extra": SIGNAL, **DEFAULTS[kind],
                                            **expected.get(kind, {}), **gpu}, rule


def test_the_reports_config_digest_leaves_the_resources_out(project):
    """Where and how long the jobs ran is no part of what they computed: the reports of a run whose resources changed
    are neither rerun nor refused by publish-results as another config's."""
    def digests(*args):
        output = run(["snakemake", "--cores", "1", "ablations", "--dry-run", "--printshellcmds", *args], project).stdout
        return set(re.findall(r"--config-digest (\w+)", output))

    default = digests()
    assert len(default) == 1 and digests(*write_config(project, CONFIGURED)) == default


def test_set_resources_wins_over_the_config_which_wins_over_the_profile(project):
    """The profile's commented placeholders, uncommented, apply to every job; a kind's keys in the config win over
    them; --set-resources on the command line wins over both; `--config resources={...}` merges key by key."""
    profile = project / "slurm" / "config.yaml"
    text = profile.read_text()
    for placeholder in ("# slurm_partition: gpu", "# slurm_account: mylab"):
        assert placeholder in text
        text = text.replace(placeholder, placeholder.removeprefix("# "))
    profile.write_text(text)
    configured = write_config(project, {"train": {"slurm_partition": "long", "runtime": 2880}})
    jobs = plan(project, *configured, "--set-resources", "train_shared:slurm_partition=urgent",
                "train_shared:runtime=60", "--config", "resources={train: {mem_mb: 32000}}")
    seen = set()
    for rule, resources in jobs:
        partition = {"train_shared": "urgent", "train_variant": "long"}.get(rule, "gpu")
        runtime = {"train_shared": "60", "train_variant": "2880"}.get(rule, DEFAULTS[KINDS[rule]]["runtime"])
        memory = "32000" if KINDS[rule] == "train" else DEFAULTS[KINDS[rule]]["mem_mb"]
        assert (resources["slurm_partition"], resources["slurm_account"]) == (partition, "mylab"), rule
        assert (resources["runtime"], resources["mem_mb"]) == (runtime, memory), rule
        seen.add(partition)
    assert seen == {"urgent", "long", "gpu"}


def test_a_kinds_own_signal_replaces_the_default_one(project):
    jobs = plan(project, *write_config(project, {"train": {"slurm_extra": "--signal=USR1@600 --mail-type=END"}}))
    extras = {rule: resources["slurm_extra"] for rule, resources in jobs}
    assert extras["train_shared"] == extras["train_variant"] == "--signal=USR1@600 --mail-type=END"
    assert extras["predict"] == SIGNAL


@pytest.mark.parametrize("resources,first_line", [
    ({"train": {"runtime": 0}}, "resources.train.runtime: 0 is less than the minimum of 1"),
    ({"evaluate": {"mem_mb": -8000}}, "resources.evaluate.mem_mb: -8000 is less than the minimum of 1"),
    ({"training": {"runtime": 60}}, "resources: unknown key training (allowed: prepare, train, evaluate, other)"),
    ({"train": {"gpus": 4}},
     "resources.train: unknown key gpus (allowed: runtime, mem_mb, cpus_per_task, slurm_partition,"),
    ({"evaluate": {"gpus": 2}}, "resources.evaluate.gpus: 2 is greater than the maximum of 1"),
    ({"other": {"slurm_partition": ""}}, "resources.other.slurm_partition: '' should be non-empty"),
    ({"train": {"slurm_extra": "--partition=gpu --mail-type=END"}},
     "resources.train.slurm_extra: '--partition=gpu --mail-type=END' sets the partition, which the SLURM plugin sets "
     "itself: use runtime, mem_mb, cpus_per_task, slurm_partition, slurm_account, constraint, qos under "
     "resources.train"),
])
def test_resource_errors_are_one_line_before_any_job(project, resources, first_line):
    result = run(["snakemake", "--profile", "slurm", "all", *write_config(project, resources)], project, check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error: ")]
    assert len(errors) == 1 and errors[0].startswith("config error: " + first_line), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not {"data", "results", "logs"} & {p.name for p in project.iterdir()}  # no job started


STAND_IN = """#!/bin/sh
# sbatch: record the command line, refuse the job. The rest of SLURM's commands: answer nothing.
[ "$(basename "$0")" = sbatch ] || exit 0
printf '%s\\n' "$*" >> "$SBATCH_LOG"
echo "sbatch: error: recorded only" >&2
exit 1
"""
SLURM_COMMANDS = ("sbatch", "squeue", "sacct", "sacctmgr", "sshare", "sinfo", "scontrol", "scancel")


def test_the_slurm_plugin_puts_them_on_the_sbatch_command_line(project, tmp_path, monkeypatch):
    """A training and a prediction job, ready to submit (stand-ins for their inputs), through the real SLURM plugin
    to a stand-in sbatch."""
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    for command in SLURM_COMMANDS:
        (stand_ins / command).write_text(STAND_IN)
        (stand_ins / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_ins}:{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_LOG", str(tmp_path / "sbatch.log"))
    teacher = "results/synthetic/resnet10/seed0/teacher"
    made = ["data/raw/synthetic/", "data/prepared/synthetic/", "data/verified/synthetic.json", f"{teacher}/model.pt",
            f"{teacher}/history.parquet", f"{teacher}/verified.json"]
    for i, name in enumerate(made):  # each newer than what it is made from
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if name.endswith("/") else path.write_bytes(b"")
        os.utime(path, (1_000_000_000 + i,) * 2)
    targets = ["results/synthetic/resnet10/seed0/or/student_1/model.pt", f"{teacher}/logits.parquet"]
    result = run(["snakemake", "--profile", "slurm", "--retries", "0", "--keep-going", *targets,
                  *write_config(project, CONFIGURED)], project, check=False, timeout=120)
    assert result.returncode == 1
    submitted = {re.search(r"--comment rule_(\w+?)_wildcards", line).group(1): shlex.split(line.split(" --wrap=")[0])
                 for line in (tmp_path / "sbatch.log").read_text().splitlines()}
    assert set(submitted) == {"train_variant", "predict"}, result.stderr[-3000:]
    train, predict = submitted["train_variant"], submitted["predict"]
    assert options(train, "-p", "-A", "-t", "--mem", "-C") == ["gpu", "mylab", "2880", "64000", "a100"]
    assert {"--qos=long", "--gpus=1", "--cpus-per-task=8", SIGNAL} <= set(train)
    assert "--cpus-per-task=1" in predict  # the profile's, for a kind that sets none
    assert options(predict, "-p", "-A", "-t", "--mem") == ["cpu", "mylab", "90", "12000"]
    assert {SIGNAL, "--mail-type=FAIL"} <= set(predict) and not [w for w in predict if w.startswith("--gpus")]


def options(words: list[str], *flags: str) -> list[str]:
    """The value after each flag."""
    return [words[words.index(flag) + 1] for flag in flags]
