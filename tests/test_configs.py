"""config/cub-small.yaml, the method on a user's own CUB-200-2011 archive at a laptop's budget, planned
(`snakemake -n`) against a small archive in the official layout placed where the config expects it: the data set is
prepared from the archive, every network trains at the budget the config's header estimates, and the documented
command-line overrides apply on top of it."""

import re
from pathlib import Path

import pytest
import yaml

from fixtures import archive, make_cub
from test_workflow import REPO, job_counts, project_copy, run, shell_commands, train_options_in

CONFIG = "config/cub-small.yaml"
# What the header's time estimate is for: a change here must come with a new estimate.
BUDGET = {"backbone": "resnet18", "pretrained": "imagenet", "epochs": "5", "resize": "256", "crop": "224",
          "seed": "0"}
PLAN = ["snakemake", "--cores", "4", "all", "--dry-run", "--printshellcmds", "--configfile", CONFIG]


def shipped() -> dict:
    return yaml.safe_load((REPO / CONFIG).read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy with a three-class CUB_200_2011.tgz at the config's datasets.cub.raw."""
    base = tmp_path_factory.mktemp("cub_small")
    project = project_copy(base / "project")
    make_cub(base / "cub", classes=3, per_class=4)
    target = project / shipped()["datasets"]["cub"]["raw"]
    target.parent.mkdir(parents=True, exist_ok=True)
    archive(base / "cub", target)
    return project


def trained(plan: str) -> dict[str, dict]:
    """Each planned `fgkd train` by its output folder: its options and its words."""
    commands = {}
    for words in shell_commands(plan, "train"):
        out = re.search(r"\$\(dirname (\S+)/model\.pt\)", " ".join(words)).group(1)
        commands[out] = {"options": train_options_in(words), "words": words}
    return commands


def earlier(words: list[str]) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words) if word == "--earlier"]


def test_cub_small_prepares_the_archive_and_trains_the_method_at_its_budget(project):
    plan = run(PLAN, project).stdout
    assert job_counts(plan) == {"prepare": 1, "verify_data": 1, "train_shared": 1, "verify_shared": 1,
                                "train_variant": 3, "verify_variant": 3, "predict": 4, "ensemble": 1,
                                "attention": 1, "report": 1, "all": 1}
    (prepare,) = shell_commands(plan, "prepare")
    assert prepare[:7] == ["fgkd", "prepare", "cub", "--root", "data/raw/CUB_200_2011.tgz", "--out",
                           "data/prepared/cub"]
    assert prepare[prepare.index("--resize") + 1] == "256"

    run_dir = "results/cub/resnet18/seed0"
    teacher, student_1, student_2, auxkd = (f"{run_dir}/teacher", f"{run_dir}/or/student_1",
                                            f"{run_dir}/or/student_2", f"{run_dir}/or/auxkd")
    commands = trained(plan)
    assert set(commands) == {teacher, student_1, student_2, auxkd}
    for out, command in commands.items():
        assert {k: command["options"].get(k) for k in BUDGET} == BUDGET, out
        assert command["options"]["preprocessing"] == "imagenet", out
    for student, index in ((student_1, "1"), (student_2, "2")):  # K = 2 orthogonal students, the OR loss
        words = commands[student]["words"]
        assert words[words.index("--index") + 1] == index
        assert commands[student]["options"]["orth"] == "or" and commands[student]["options"]["orth_weight"] == "0.1"
    assert earlier(commands[student_2]["words"]) == [f"{teacher}/model.pt", f"{student_1}/model.pt"]
    words = commands[auxkd]["words"]  # the aux-KD student learns from the teacher and both students
    assert words[words.index("--stage") + 1] == "auxkd"
    assert earlier(words) == [f"{teacher}/model.pt", f"{student_1}/model.pt", f"{student_2}/model.pt"]

    (ensemble,) = shell_commands(plan, "ensemble")
    assert ensemble[ensemble.index("--names") + 1] == "teacher,student_1,student_2"
    (report,) = shell_commands(plan, "report")
    assert report[report.index("--students") + 1] == "2"
    for output in ("results/reports/summary.md", "results/reports/metrics.parquet",
                   "results/reports/figures/attention_cub_resnet18.png"):
        assert output in plan, output


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["datasets"]["cub"].update(root=c["datasets"]["cub"].pop("raw")),
     "config error: datasets.cub: unknown key root (allowed: format, raw,"),
    (lambda c: c["train"].update(epoch=c["train"].pop("epochs")), "config error: train: unknown key epoch"),
    (lambda c: c["datasets"]["cub"].update(raw="data/raw/absent/CUB_200_2011.tgz"),
     "config error: datasets.cub.raw: data/raw/absent/CUB_200_2011.tgz does not exist"),
], ids=["raw-misspelled", "epochs-misspelled", "archive-missing"])
def test_a_broken_cub_small_config_is_refused_in_one_line(project, edit, message):
    config = shipped()
    edit(config)
    broken = project / "config" / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    result = run([*PLAN[:-1], "config/broken.yaml"], project, check=False)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_command_line_overrides_apply_on_top_of_cub_small(project, tmp_path):
    """The forms the README documents: a nested key (the other train options stay), the seeds, the archive's path."""
    epochs = trained(run([*PLAN, "--config", "train={epochs: 3}"], project).stdout)
    assert len(epochs) == 4
    assert all(c["options"] == {**c["options"], **BUDGET, "epochs": "3"} for c in epochs.values())

    seeds = trained(run([*PLAN, "--config", "seeds=[0, 1]"], project).stdout)
    assert sorted(Path(out).parts[3] for out in seeds) == ["seed0"] * 4 + ["seed1"] * 4

    elsewhere = tmp_path / "CUB_200_2011.tgz"
    elsewhere.write_bytes((project / "data/raw/CUB_200_2011.tgz").read_bytes())
    plan = run([*PLAN, "--config", f"datasets={{cub: {{raw: {elsewhere}}}}}"], project).stdout
    (prepare,) = shell_commands(plan, "prepare")
    assert prepare[prepare.index("--root") + 1] == str(elsewhere)
    assert prepare[prepare.index("--resize") + 1] == "256"
