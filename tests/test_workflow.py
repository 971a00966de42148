"""The workflow for real: Snakemake runs and real `dvc repro` (the SLURM runs are in test_slurm.py).

Each test works in a copy of the project whose config/config.yaml is the tiny smoke-test config.
"""

import base64
import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fgkd.metrics import COMBINES
from fgkd.train import TrainConfig
from fixtures import wait_for_file

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
PROJECT_FILES = ["Snakefile", "workflow", "config", "slurm", "dvc.yaml", ".dvc", ".dvcignore", "fgkd"]


def run(args, cwd, check=True, timeout=900):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def project_copy(target: Path, default_config: str = "tiny.yaml") -> Path:
    """The project's workflow files in ``target``, with config/``default_config`` as its config/config.yaml."""
    target.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        else:
            shutil.copy2(source, target / name)
    shutil.copy2(REPO / "config" / default_config, target / "config" / "config.yaml")
    return target


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run."""
    table = dry_run_output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    project = project_copy(tmp_path_factory.mktemp("local") / "project")
    run(["snakemake", "--cores", "2", "ablations"], project)  # everything `all` makes, and the ablations
    return project


def test_local_run_writes_every_report(finished):
    reports = finished / "results" / "reports"
    metrics = pd.read_parquet(reports / "metrics.parquet")
    assert set(metrics["method"]) == {"teacher", "student_1", "student_2", "ensemble", "auxkd"}
    assert set(metrics["selection"]) == {"best", "last"}
    assert set(metrics["variant"]) == {"or"} and set(metrics["seed"]) == {0}
    assert {"dataset", "backbone", "members", "top1", "top5", "parameters", "train_seconds", "images_per_s",
            "attention_overlap"} <= set(metrics.columns)
    assert metrics["top1"].between(0, 1).all()
    assert len(pd.read_parquet(reports / "ensembles.parquet")) == 7
    assert set(pd.read_parquet(reports / "history.parquet")["stage"]) == {"teacher", "student_1", "student_2", "auxkd"}
    assert "| synthetic | resnet10 |" in (reports / "summary.md").read_text()
    for figure in ("training_curves.png", "ensemble_members.png", "attention_synthetic_resnet10.png"):
        assert (reports / "figures" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablations_compare_variants_aux_baselines_and_parts(finished):
    reports = finished / "results" / "reports" / "ablations"
    metrics = pd.read_parquet(reports / "metrics.parquet")
    assert set(metrics["variant"]) == {"or", "lambda0"}
    assert {"auxkd", "auxkd_ce", "auxkd_single"} <= set(metrics[metrics.variant == "or"]["method"])
    ensembles = metrics[metrics.method == "ensemble"]
    assert ensembles["attention_overlap"].between(0, 1).all()
    occlusion = pd.read_parquet(reports / "part_occlusion.parquet")
    assert set(occlusion["variant"]) == {"or", "lambda0"}
    assert {"hidden:head", "only:belly", "as generated"} <= set(occlusion["condition"])
    attention = pd.read_parquet(reports / "part_attention.parquet")  # each network's shares, elsewhere included
    assert set(attention["variant"]) == {"or", "lambda0"}
    assert set(attention["part"]) == {"head", "wing", "tail", "belly", "elsewhere"}
    assert attention["share"].between(0, 1).all() and attention["area"].between(0, 1).all()
    sums = attention.groupby(["variant", "seed", "network"])[["share", "area"]].sum()
    assert ((sums - 1).abs() < 1e-6).all().all() and len(sums) == 2 * 3  # teacher, student_1, student_2 per variant
    text = (reports / "summary.md").read_text()
    assert "| synthetic | resnet10 | lambda0 |" in text and "Per-part evidence" in text and "| attention (%) |" in text
    assert "| synthetic | resnet10 | ensemble (or) | ensemble (lambda0) |" in text and "[n/a: one seed]" in text
    # the lambda0 students share the teacher with the method's, never retrain it
    assert (finished / "results/synthetic/resnet10/seed0/lambda0/student_1/model.pt").exists()
    assert not (finished / "results/synthetic/resnet10/seed0/lambda0/teacher").exists()


def test_comparisons_have_one_row_per_claim_seed_and_selection_consistent_with_the_metrics(finished):
    """The tiny run (one seed, variants or and lambda0): each comparison's top-1 values are the metrics' own, and
    with one seed there is a mean but no interval."""
    reports = finished / "results" / "reports"
    key = ["variant_a", "method_a", "variant_b", "method_b"]
    claims = {"main": {("or", "ensemble", "or", "teacher")},
              "ablations": {("or", "ensemble", "or", "teacher"), ("lambda0", "ensemble", "lambda0", "teacher"),
                            ("or", "ensemble", "lambda0", "ensemble"), ("or", "auxkd", "or", "auxkd_single"),
                            ("or", "auxkd", "or", "auxkd_ce"), ("or", "auxkd_single", "or", "auxkd_ce")}}
    for name, folder in (("main", reports), ("ablations", reports / "ablations")):
        table = pd.read_parquet(folder / "comparisons.parquet")
        assert list(table.columns) == ["dataset", "backbone", "selection", *key, "seed", "images", "top1_a",
                                       "top1_b", "difference", "only_a", "only_b", "mcnemar_p", "detectable", "seeds",
                                       "mean_difference", "ci_low", "ci_high", "detectable_mean"]
        assert set(table[key].itertuples(index=False, name=None)) == claims[name]
        assert len(table) == len(claims[name]) * 2 and set(table["selection"]) == {"best", "last"}  # one seed
        assert (table["seed"] == 0).all() and (table["seeds"] == 1).all()
        assert table["ci_low"].isna().all() and table["ci_high"].isna().all()
        assert table["detectable_mean"].isna().all()  # no spread to power a t-test with
        assert (table["mean_difference"] == table["difference"]).all() and table["mcnemar_p"].between(0, 1).all()
        metrics = pd.read_parquet(folder / "metrics.parquet").set_index(["variant", "method", "selection"])["top1"]
        for row in table.itertuples():
            assert row.top1_a == metrics[row.variant_a, row.method_a, row.selection]
            assert row.top1_b == metrics[row.variant_b, row.method_b, row.selection]
            assert row.only_a - row.only_b == round(row.difference * row.images)


def test_rerun_with_nothing_changed_does_nothing(finished):
    result = run(["snakemake", "--cores", "2", "all"], finished)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_students_weight_reruns_it_and_downstream_only(finished):
    override = finished / "override.yaml"
    override.write_text(yaml.safe_dump({"stages": {"student_2": {"orth_weight": 0.05}}}))
    result = run(["snakemake", "--cores", "2", "all", "--dry-run", "--configfile", "config/config.yaml", str(override)],
                 finished)
    counts = job_counts(result.stdout)
    assert counts.get("train_variant") == 2  # student_2 and the aux-KD student that imitates it
    assert counts.get("predict") == 2
    assert counts.get("ensemble") == counts.get("attention") == counts.get("report") == 1
    assert not {"prepare", "synth", "train_shared"} & set(counts)
    outputs = re.findall(r"output: (\S+)", result.stdout)
    assert {"results/synthetic/resnet10/seed0/or/student_2/model.pt,", "results/synthetic/resnet10/seed0/or/auxkd/model.pt,"} <= set(outputs)
    assert not any("student_1/model.pt" in o or "teacher/model.pt" in o for o in outputs)


@pytest.mark.parametrize("override,first_line", [
    ({"train": {"epcohs": 3}}, "train: unknown key epcohs (allowed: backbone, pretrained,"),
    ({"students": 0}, "students: 0 is less than the minimum of 1"),
    ({"train": {"orth_weight": -1}}, "train.orth_weight: -1 is less than the minimum of 0"),
    ({"train": {"kd_temperature": 0}}, "train.kd_temperature: 0 is less than or equal to the minimum of 0"),
    ({"train": {"lr": float("nan")}}, "train.lr: must be a finite number, not NaN or infinity"),
    ({"stages": {"teacher": {"backbone_lr": float("inf")}}}, "stages.teacher.backbone_lr: must be a finite number"),
    ({"backbones": ["resnet5"]}, "backbones.0: 'resnet5' is not one of ['resnet10',"),
    ({"datasets": {"a/b": {"format": "cub", "raw": "x"}}}, "datasets: the name 'a/b' is not allowed (a folder name"),
    ({"datasets": {"x": {"format": "cub"}}}, "datasets.x: give exactly one of `raw`"),
    ({"method": "zz"}, "method/ablations: 'zz' is not defined under variants (or, lambda0)"),
    ({"datasets": {"cub": {"format": "cub", "raw": "data/raw/missing.tgz"}}, "run_datasets": ["cub"]},
     "datasets.cub.raw: data/raw/missing.tgz does not exist; put the official folder or archive there"),
    ({"datasets": {"..": {"format": "cub", "raw": "x"}}}, "datasets: the name '..' is not allowed"),
    ({"datasets": {"x": {"format": "cub", "raw": ""}}}, "datasets.x.raw: '' should be non-empty"),
    ({"backbones": ["resnet10", "resnet10"]}, "backbones: ['resnet10', 'resnet10'] has non-unique elements"),
    ({"backbone_train": {"resnet5": {"epochs": 2}}}, "backbone_train: the name 'resnet5' is not allowed"),
    ({"train": {"device": "gpu"}}, "train.device: 'gpu' does not match"),
    ({"stages": {"student_3": {"lr": 0.1}}}, "stages.student_3: there are only 2 students"),
    ({"variants": {"or": {"crop": 40}}}, "synthetic / or / student_1: crop (40) must not exceed resize (36)"),
    ({"train": {"preprocessing": "squash"}}, "train.preprocessing: 'squash' is not one of ['imagenet', 'official']"),
    ({"train": {"pretrained": "weights/{backbone}.pth"}},
     "synthetic / shared / teacher: pretrained: weights/resnet10.pth: no such file"),
    ({"train": {"pretrained": "w/{arch}.pth"}},
     "synthetic / shared / teacher: pretrained: 'w/{arch}.pth': {arch} is not a placeholder here; use {dataset},"),
    ({"stages": {"auxkd": {"pretrained": True, "init_from": "x.pt"}}},
     "synthetic / shared / auxkd_ce: pretrained (imagenet) and init_from (x.pt) are both set"),
    ({"datasets": {"synthetic": {"format": "cub", "synth": {"classes": 5, "identity_parts": 2}}}},
     "datasets.synthetic.synth: --classes 5 with --identity-parts 2: some part's marking would belong to one class"),
    ({"datasets": {"synthetic": {"format": "cub", "synth": {"classes": 4, "scale": [0.9, 0.8]}}}},
     "datasets.synthetic.synth: --scale 0.9 0.8: the object's length as a share of the image side, smallest then"),
    ({"datasets": {"synthetic": {"format": "cub", "synth": {"classes": 4, "part_scale": 2}}}},
     "datasets.synthetic.synth.part_scale: 2 is greater than the maximum of 1.5"),
    ({"datasets": {"synthetic": {"format": "cub", "synth": {"identity_parts": 9}}}},
     "datasets.synthetic.synth: --identity-parts 9: must be 2 to 4, the part slots"),
    ({"datasets": {"x": {"format": "cub", "synth": {"identity_parts": 2}}}, "run_datasets": ["x"]},
     "datasets.x.synth: 'classes' is a dependency of 'identity_parts'"),
    ({"datasets": {"x": {"format": "cub", "synth": {"classes": 4, "exclude_classes_of": ["synthetic", "y"]}}}},
     "datasets.x.synth.exclude_classes_of: 'y' is not another synthetic data set of this config (synthetic"),
    ({"datasets": {"x": {"format": "cub", "synth": {"classes": 4, "exclude_classes_of": ["x"]}}}},
     "datasets.x.synth.exclude_classes_of: 'x' is not another synthetic data set of this config"),
    ({"datasets": {"x": {"format": "cub", "synth": {"classes": 6, "identity_parts": 2,
                                                     "exclude_classes_of": ["synthetic"]}}}},
     "datasets.x.synth: exclude_classes_of works in the default mode only"),
    # Keys the experiment grid owns: ignored before (train.seed, train.backbone), or honoured against the folder's
    # name (a variant's seed: 7 trained inside seed0).
    ({"train": {"seed": 7}}, "train.seed: the experiment grid sets every run's seed (`seeds: [0]`)"),
    ({"variants": {"or": {"seed": 7}}}, "variants.or.seed: the experiment grid sets every run's seed"),
    ({"train": {"backbone": "resnet18"}}, "train.backbone: the experiment grid sets every run's backbone"),
    ({"datasets": {"synthetic": {"format": "cub", "synth": {"classes": 4}, "train": {"backbone": "resnet18"}}}},
     "datasets.synthetic.train.backbone: the experiment grid sets every run's backbone (`backbones: [resnet10]`)"),
    ({"backbone_train": {"resnet10": {"seed": 1}}}, "backbone_train.resnet10.seed: the experiment grid sets"),
    ({"stages": {"teacher": {"backbone": "resnet18"}}}, "stages.teacher.backbone: the experiment grid sets"),
    ({"ablations": ["or"]}, "ablations: 'or' is the method (method: or), which every report has already"),
    ({"train": {"amp": False}}, "train.amp: false is not one of ['auto', 'bf16', 'off']: YAML reads an unquoted"),
    ({"train": {"pretrained": 5}}, "train.pretrained: 5 is not allowed here (the trunk's start weights"),
    ({"train": {"init_from": "results/nothing/model.pt"}},
     "synthetic / shared / teacher: results/nothing/model.pt: under results/, but no job of this workflow makes it"),
    # A timm backbone: its spelling by the schema, its name, family, stride and crop by building it on the meta device.
    ({"backbones": ["timm/test_vit"]}, "backbones.0: 'timm/test_vit' is not one of ['resnet10', "),
    ({"backbones": ["timm-test_vit"]},
     "synthetic / shared / teacher: attention_stride 8 is not available for timm-test_vit; choose one of [16]"),
    ({"backbones": ["timm-test_vit"], "train": {"attention_stride": 16, "crop": 24, "resize": 36}},
     "synthetic / shared / teacher: crop 24 does not cut into timm-test_vit's patches of 16 px"),
])
def test_config_errors_are_one_line_before_any_job(tmp_path, override, first_line):
    project = project_copy(tmp_path / "project")
    (project / "bad.yaml").write_text(yaml.safe_dump(override))
    result = run(["snakemake", "--cores", "1", "all", "--configfile", "config/config.yaml", "bad.yaml"], project,
                 check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error: ")]
    assert len(errors) == 1 and errors[0].startswith("config error: " + first_line), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Failed validating" not in result.stderr  # no schema dump
    assert not {"data", "results", "logs"} & {p.name for p in project.iterdir()}  # no job started


def snakemake_all_outputs(project: Path) -> set[str]:
    result = run(["snakemake", "--cores", "1", "all", "--dry-run", "--forceall"], project)
    block = result.stdout.split("rule all:", 1)[1]
    inputs = re.search(r"input: (.*)", block).group(1)
    return {p.strip() for p in inputs.split(",")}


def test_dvc_outs_are_exactly_what_snakemake_all_produces(tmp_path):
    project = project_copy(tmp_path / "project")
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["fgkd"]
    declared = [next(iter(entry)) for key in ("outs", "metrics", "plots") for entry in stage[key]]
    produced = snakemake_all_outputs(project)
    covered = {p for p in produced if any(p == d or p.startswith(d + "/") for d in declared)}
    assert covered == produced
    for out in declared:
        assert any(p == out or p.startswith(out + "/") for p in produced), f"{out} is not produced by `all`"
    assert stage["cmd"] == "snakemake --cores all all"


def test_dvc_repro_and_an_experiment_with_its_metrics_and_plots(finished, tmp_path):
    """`dvc repro` runs the pipeline (here its last job: the networks, data and Snakemake's records are the finished
    run's, reports left out) and a second one has Snakemake find nothing to do; in a git clone, `dvc exp run -S`
    changes a config key (the aux-KD student's epochs: it and what reads it rerun, nothing else), and `dvc exp show` /
    `metrics diff` / `plots diff` compare it with the baseline; after `dvc exp apply main`, `dvc repro` retrains to
    match main again (before: DVC called the other experiment's models and metrics up to date)."""
    project = project_copy(tmp_path / "project")
    for name in ("data", "results", "logs", ".snakemake"):  # the run from scratch is `finished`'s; not again here
        shutil.copytree(finished / name, project / name, symlinks=True)
    shutil.rmtree(project / "results" / "reports")
    shutil.copy2(REPO / ".gitignore", project / ".gitignore")
    git = ["git", "-c", "user.name=fgkd", "-c", "user.email=fgkd@localhost"]
    run(["git", "init", "-q", "-b", "main"], project)
    run([*git, "add", "-A"], project)
    run([*git, "commit", "-qm", "project"], project)
    first = run(["dvc", "repro"], project)
    assert set(re.findall(r"^(?:local)?rule (\w+):$", first.stdout + first.stderr, re.M)) == {"report", "all"}
    assert (project / "results/reports/metrics.parquet").exists()
    baseline = (project / "results/reports/metrics.json").read_bytes()
    second = run(["dvc", "repro"], project)
    assert "Nothing to be done" in second.stdout + second.stderr  # DVC hands over; Snakemake decides
    assert (project / "results/reports/metrics.json").read_bytes() == baseline
    assert "synthetic/resnet10" in run(["dvc", "metrics", "show"], project).stdout
    assert "val_acc" in run(["dvc", "plots", "show", "--json"], project).stdout
    run([*git, "add", "dvc.lock"], project)
    run([*git, "commit", "-qm", "baseline"], project)
    # The key: the aux-KD student's epochs (the last network, so the fewest jobs rerun).
    student = project / "results/synthetic/resnet10/seed0/or/auxkd/history.parquet"
    kept = [project / f"results/synthetic/resnet10/seed0/{network}/model.pt" for network in ("teacher", "or/student_2")]
    assert len(pd.read_parquet(student)) == 1
    made = [model.stat().st_mtime_ns for model in kept]

    run(["dvc", "exp", "run", "-n", "twoepochs", "-S", "config/config.yaml:+stages.auxkd.epochs=2"], project)
    assert len(pd.read_parquet(student)) == 2  # retrained with the experiment's setting
    assert [model.stat().st_mtime_ns for model in kept] == made  # what the change does not touch is kept
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    rows = {row["name"] or row["rev"]: row for entry in shown
            for row in [entry, *[e for exp in entry.get("experiments") or [] for e in exp["revs"]]]}
    assert "twoepochs" in rows, list(rows)
    for name, epochs in (("main", None), ("twoepochs", 2)):
        data = rows[name]["data"]
        params = data["params"]["config/config.yaml"]["data"]
        assert params.get("stages", {}).get("auxkd", {}).get("epochs") == epochs
        metrics = data["metrics"]["results/reports/metrics.json"]["data"]
        assert {"synthetic/resnet10"} == set(metrics) and "teacher" in metrics["synthetic/resnet10"], name
    diff = json.loads(run(["dvc", "metrics", "diff", "main", "twoepochs", "--all", "--json"], project).stdout)
    assert "synthetic/resnet10.auxkd" in diff["results/reports/metrics.json"]
    plots = json.loads(run(["dvc", "plots", "diff", "main", "twoepochs", "--json"], project).stdout)
    revisions = {v["rev"] for p in plots["data"]["results/reports/curves.csv"] for v in p["content"]["data"]["values"]}
    assert revisions == {"main", "twoepochs"}

    run(["dvc", "exp", "apply", "main"], project)
    assert "stages" not in yaml.safe_load((project / "config/config.yaml").read_text())
    run(["dvc", "repro"], project)
    assert len(pd.read_parquet(student)) == 1  # retrained to main's setting
    assert (project / "results/reports/metrics.json").read_bytes() == baseline  # main's numbers, to the last digit


def test_raw_data_round_trips_through_dvc(tmp_path):
    from fixtures import make_cub

    project = project_copy(tmp_path / "project")
    run(["dvc", "config", "core.no_scm", "true"], project)
    run(["dvc", "remote", "modify", "local", "url", str(tmp_path / "remote")], project)
    make_cub(project / "data" / "raw" / "cub")
    before = {p.relative_to(project): p.read_bytes() for p in (project / "data/raw/cub").rglob("*") if p.is_file()}
    run(["dvc", "add", "data/raw/cub"], project)
    run(["dvc", "push", "data/raw/cub.dvc"], project)
    shutil.rmtree(project / "data" / "raw" / "cub")
    shutil.rmtree(project / ".dvc" / "cache")
    run(["dvc", "pull", "data/raw/cub.dvc"], project)
    after = {p.relative_to(project): p.read_bytes() for p in (project / "data/raw/cub").rglob("*") if p.is_file()}
    assert after == before


def report_contents(page: str) -> tuple[dict[str, tuple[str, bytes]], str]:
    """({path: (caption, file)} of the results a self-contained `snakemake --report` page embeds, its workflow
    description): both are JSON in its scripts, each file a base64 data URI."""
    results = json.loads(re.search(r'<script id="results">\s*var results = (.*?);\s*</script>', page, re.S).group(1))
    description = json.loads(re.search(r"var workflow_desc = (.*?);\n", page).group(1))
    return {path: (" ".join(item["caption"].split()), base64.b64decode(item["data_uri"].split(";base64,", 1)[1]))
            for path, item in results.items()}, description


@pytest.mark.parametrize("combine", ["logits", "probs"])
def test_html_report_has_the_figures_the_tables_and_the_configured_combine_rule(finished, combine):
    """The report of `ablations`: the figures and both reports' summary.html (summary.md's tables); every caption that
    speaks of the ensemble names the combine rule of the config it is made with (here the tables' own rule or the
    other: the captions follow the config)."""
    report = f"results/report_{combine}.html"
    run(["snakemake", "--report", report, "ablations", "--config", f"ensemble={{combine: {combine}}}"], finished)
    items, description = report_contents((finished / report).read_text())
    tables = ["results/reports/summary.html", "results/reports/ablations/summary.html"]
    figures = [f"results/reports/figures/{name}.png"
               for name in ("training_curves", "ensemble_members", "attention_synthetic_resnet10")]
    assert set(items) == {*tables, *figures}
    for path in [*tables, *figures]:
        assert items[path][1] == (finished / path).read_bytes()
    main, ablations = (items[path][1].decode() for path in tables)
    assert "<td>synthetic</td>\n<td>resnet10</td>" in main and "<td>ensemble (or)</td>\n<td>teacher</td>" in main
    assert "<td>resnet10</td>\n<td>lambda0</td>" in ablations
    assert "<td>ensemble (or)</td>\n<td>ensemble (lambda0)</td>" in ablations
    captions = [caption for caption, _ in items.values() if "ensemble" in caption]
    assert len(captions) == 3  # the ensemble figure and the two tables
    others = [rule.text for name, rule in COMBINES.items() if name != combine]
    for caption in captions:
        assert COMBINES[combine].text in caption and not any(text in caption for text in others), caption
    assert f"ensemble.combine: {combine}" in description


def test_paper_config_plans_three_datasets_by_two_backbones(tmp_path):
    project = project_copy(tmp_path / "project")
    shutil.copy2(REPO / "config" / "paper.yaml", project / "config" / "paper.yaml")
    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "CUB_200_2011.tgz").write_bytes(b"")
    (raw / "fgvc-aircraft-2013b.tar.gz").write_bytes(b"")
    (raw / "stanford_cars").mkdir()
    result = run(["snakemake", "all", "--dry-run", "--configfile", "config/paper.yaml"], project)
    counts = job_counts(result.stdout)
    runs = 3 * 2 * 3  # data sets x backbones x seeds
    assert counts == {"prepare": 3, "verify_data": 3, "train_shared": runs, "verify_shared": runs,
                      "train_variant": runs * (3 + 1), "verify_variant": runs * (3 + 1), "predict": runs * 5,
                      "ensemble": runs, "attention": runs, "report": 1, "all": 1}
    shutil.rmtree(raw / "stanford_cars")
    missing = run(["snakemake", "all", "--dry-run", "--configfile", "config/paper.yaml"], project, check=False)
    assert missing.returncode != 0 and "datasets.cars.raw" in missing.stdout + missing.stderr


def test_publish_results_writes_the_results_page(finished, tmp_path):
    page = tmp_path / "docs" / "results" / "synthetic.md"
    run(["fgkd", "publish-results", "--reports", str(finished / "results/reports"), "--page", str(page)], finished)
    text = page.read_text()
    assert text.startswith("# Results: synthetic\n\n<!-- Generated by `fgkd publish-results`")
    assert "| synthetic | resnet10 |" in text and "Per-part evidence" in text
    assert text.count("## Paired comparisons") == 2 and "| ensemble (or) | teacher |" in text
    assert "![ensemble_members](synthetic/ensemble_members.png)" in text
    assert (tmp_path / "docs/results/synthetic/training_curves.png").exists()


SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
BOOLEAN_OPTIONS = {f.name for f in dataclasses.fields(TrainConfig) if f.type == "bool"}
TRAIN_OPTIONS = {f.name for f in dataclasses.fields(TrainConfig)}


def shell_commands(dry_run_output: str, program: str) -> list[list[str]]:
    """The words of each `fgkd <program>` command a `snakemake -n -p` run prints, without the log redirection."""
    commands = []
    for line in dry_run_output.splitlines():
        if line.startswith(f"Shell command: fgkd {program} ") or line.startswith(f"Shell command: (fgkd {program} "):
            commands.append(shlex.split(line.split(": ", 1)[1].rsplit(" > ", 1)[0].strip("()")))
    return commands


def train_options_in(words: list[str]) -> dict[str, str | bool]:
    options, i = {}, 0
    while i < len(words):
        name = words[i][2:].replace("-", "_") if words[i].startswith("--") else None
        if name in BOOLEAN_OPTIONS:
            options[name] = True
        elif name and name.startswith("no_") and name[3:] in BOOLEAN_OPTIONS:
            options[name[3:]] = False
        elif name in TRAIN_OPTIONS:
            options[name] = words[i + 1]
            i += 1
        i += 1
    return options


def expected_train_options(config: dict, dataset: str, backbone: str, seed: str, variant: str | None, stage: str):
    """The layering the README documents: train, the backbone's train, the data set's train, backbone and seed
    from the path, the variant (students), the stage's overrides (the aux-KD baselines take auxkd's first)."""
    options = {**config["train"], **config.get("backbone_train", {}).get(backbone, {}),
               **config["datasets"][dataset].get("train", {}), "backbone": backbone, "seed": seed}
    if stage.startswith("student_"):
        options.update(config["variants"][variant])
    stages = config.get("stages", {})
    if stage in ("auxkd_ce", "auxkd_single"):
        options.update(stages.get("auxkd", {}))
    options.update(stages.get(stage, {}))
    return {k: v if isinstance(v, bool) else str(v) for k, v in options.items()}


def schema_default(*keys):
    return functools.reduce(lambda node, key: node["properties"][key], keys, SCHEMA)["default"]


def stand_in_raw_data(project: Path, config: dict) -> None:
    for spec in config["datasets"].values():
        if "raw" in spec:  # empty stand-ins: a dry run only checks that they exist
            raw = project / spec["raw"]
            raw.parent.mkdir(parents=True, exist_ok=True)
            raw.mkdir() if not raw.suffix else raw.write_bytes(b"")


@pytest.mark.parametrize("shipped", ["config.yaml", "tiny.yaml", "paper.yaml", "paper-vit.yaml", "cub-small.yaml"])
def test_every_shipped_configs_commands_carry_exactly_its_options_and_the_schema_defaults(tmp_path, shipped):
    """A --configfile is the whole experiment: nothing of config/config.yaml (head: gap, workers, the synthetic
    set, its variants) leaks into the paper's commands, and keys a config leaves out take the schema's defaults."""
    project = project_copy(tmp_path / "project", default_config="config.yaml")
    config = yaml.safe_load((REPO / "config" / shipped).read_text())
    stand_in_raw_data(project, config)
    args = ["snakemake", "--cores", "4", "ablations", "--dry-run", "--printshellcmds"]
    result = run(args + ([] if shipped == "config.yaml" else ["--configfile", f"config/{shipped}"]), project)

    trains = shell_commands(result.stdout, "train")
    variants = [config["method"], *config.get("ablations", [])]
    runs = len(config["run_datasets"]) * len(config["backbones"]) * len(config["seeds"])
    assert len(trains) == runs * (3 + len(variants) * config["students"] + 1)  # shared stages, students, auxkd
    for words in trains:
        out = Path(re.search(r"\$\(dirname (.+?/model\.pt)\)", " ".join(words)).group(1)).parent
        parts = out.relative_to("results").parts
        dataset, backbone, seed = parts[0], parts[1], parts[2].removeprefix("seed")
        variant, stage = (None, parts[3]) if len(parts) == 4 else parts[3:5]
        assert train_options_in(words) == expected_train_options(config, dataset, backbone, seed, variant, stage), out
    predicts = shell_commands(result.stdout, "predict")
    batch = config.get("predict", {}).get("batch_size", schema_default("predict", "batch_size"))
    assert predicts and {w[w.index("--batch-size") + 1] for w in predicts} == {str(batch)}
    combine = config.get("ensemble", {}).get("combine", schema_default("ensemble", "combine"))
    synthetic = any("synth" in config["datasets"][d] for d in config["run_datasets"])
    for program in ("ensemble", "report", *(["part-occlusion"] if synthetic else [])):
        words = shell_commands(result.stdout, program)
        assert words and {w[w.index("--combine") + 1] for w in words} == {combine}, program
    images = config.get("attention", {}).get("images", schema_default("attention", "images"))
    attention = shell_commands(result.stdout, "attention")
    assert {w[w.index("--images") + 1] for w in attention} == {str(images)}
    assert {w[w.index("--batch-size") + 1] for w in attention} == {str(batch)}


def test_the_vit_config_plans_the_papers_dag_with_vit_b16_at_448_px(tmp_path):
    """config/paper-vit.yaml: every network of the method and the ablations is a ViT-B/16 at 448 px with its one
    attention stride (the patch size) and TransFG's optimiser, in a results/ folder named after the backbone."""
    project = project_copy(tmp_path / "project", default_config="config.yaml")
    stand_in_raw_data(project, yaml.safe_load((REPO / "config" / "paper-vit.yaml").read_text()))
    plan = run(["snakemake", "--cores", "4", "ablations", "--dry-run", "--printshellcmds", "--configfile",
                "config/paper-vit.yaml"], project).stdout
    commands = {re.search(r"\$\(dirname (.+?/model\.pt)\)", " ".join(words)).group(1): train_options_in(words)
                for words in shell_commands(plan, "train")}
    assert len(commands) == 3 * 3 * (3 + 3 * 3 + 1)  # data sets x seeds x (shared 3; 3 variants x K; aux-KD)
    expected = {"backbone": "timm-vit_base_patch16_224", "crop": "448", "resize": "600", "attention_stride": "16",
                "pretrained": "imagenet", "preprocessing": "official", "batch_size": "16", "lr": "0.03",
                "backbone_lr": "0.03", "weight_decay": "0.0", "epochs": "30", "head": "gap"}
    for out, options in commands.items():
        assert Path(out).parts[2] == "timm-vit_base_patch16_224", out
        assert {key: options.get(key) for key in expected} == expected, out


def test_the_fair_configs_pretrained_regimes_start_every_network_from_a_teacher_of_other_classes(tmp_path):
    """config/fair.yaml: the pretraining set is generated without the classes of the two target sets, its teacher
    is trained once, first (`pretrain`), and every network of the two pretrained regimes, and none of the others,
    starts from it."""
    project = project_copy(tmp_path / "project")
    args = ["--cores", "2", "--dry-run", "--printshellcmds", "--configfile", "config/fair.yaml"]
    first = run(["snakemake", "pretrain", *args], project).stdout
    assert job_counts(first) == {"synth": 3, "prepare": 1, "verify_data": 1, "train_shared": 1, "verify_shared": 1,
                                 "pretrain": 1}
    (synth,) = [w for w in shell_commands(first, "synth") if "data/raw/pretraining" in w]
    excluded = [synth[i + 1] for i, word in enumerate(synth) if word == "--exclude-classes-of"]
    assert excluded == ["data/raw/parts_any", "data/raw/parts_all"]

    plan = run(["snakemake", "ablations", *args], project).stdout
    start = "results/pretraining/resnet10/seed0/teacher/model.pt"
    trains = shell_commands(plan, "train")
    outputs = [re.search(r"\$\(dirname (\S+)\)", " ".join(words)).group(1) for words in trains]
    assert outputs.count(start) == 1  # trained once
    for words, output in zip(trains, outputs):
        dataset = output.split("/")[1]
        init_from = words[words.index("--init-from") + 1] if "--init-from" in words else None
        assert init_from == (start if dataset.endswith("_pretrained") else None), words
    assert {w.split("/")[1] for w in re.findall(r"results/[^/ ]+/", plan)} >= {
        "parts_any", "parts_all", "parts_any_pretrained", "parts_all_pretrained"}


def test_command_line_config_overrides_keys_of_the_default_experiment(tmp_path):
    project = project_copy(tmp_path / "project", default_config="config.yaml")
    result = run(["snakemake", "--cores", "1", "all", "--dry-run", "--printshellcmds", "--config", "students=3"],
                 project)
    trains = [train_options_in(w) for w in shell_commands(result.stdout, "train")]
    assert {"--index", "3"} <= set(sum(shell_commands(result.stdout, "train"), []))
    assert {t["head"] for t in trains} == {"gap"}  # the rest of config/config.yaml still applies


def test_whole_numbers_written_as_floats_are_integers(tmp_path):
    """JSON Schema takes 2.0 for an integer: `students: 2.0` failed in range() with a traceback, `seeds: [0.0]` looked
    for a folder seed0.0, `epochs: 1.0` reached `fgkd train --epochs 1.0`, which refused it after the data was
    prepared."""
    project = project_copy(tmp_path / "project")
    (project / "floats.yaml").write_text(yaml.safe_dump({"students": 2.0, "seeds": [0.0], "predict": {"batch_size": 8.0},
                                                         "train": {"epochs": 1.0, "head_hidden": 32.0}}))
    result = run(["snakemake", "--cores", "1", "all", "--dry-run", "--printshellcmds", "--configfile",
                  "config/config.yaml", "floats.yaml"], project)
    trains = [train_options_in(w) for w in shell_commands(result.stdout, "train")]
    assert {(t["epochs"], t["head_hidden"], t["seed"]) for t in trains} == {("1", "32", "0")}
    assert all(w[w.index("--batch-size") + 1] == "8" for w in shell_commands(result.stdout, "predict"))
    assert "seed0.0" not in result.stdout


@pytest.mark.parametrize("overrides,expected", [
    # Snakemake reads a list or a mapping as YAML of strings only (['1'], {'epochs': '5'}): the schema refused them.
    (["seeds=[1]"], {"seed": {"1"}}),
    (["train={epochs: 5, lr: 1e-3}"], {"epochs": {"5"}, "lr": {"0.001"}, "head": {"gap"}}),  # merged into train
    (["seeds=[1, 2]", "train={channels_last: on, sync_batchnorm: false}", "train_processes=null"],
     {"seed": {"1", "2"}, "channels_last": {"on"}, "sync_batchnorm": {False}}),
    (["variants={or: {orth_weight: 0.5}}"], {"orth_weight": {"0.5"}}),
    (["train={epochs: 010, batch_size: 1_6}"], {"epochs": {"10"}, "batch_size": {"16"}}),  # decimal, not YAML 1.1
])
def test_the_documented_config_override_forms_reach_the_commands(tmp_path, overrides, expected):
    project = project_copy(tmp_path / "project", default_config="config.yaml")
    result = run(["snakemake", "--cores", "1", "all", "--dry-run", "--printshellcmds", "--config", *overrides],
                 project)
    trains = [train_options_in(w) for w in shell_commands(result.stdout, "train")]
    students = [t for w, t in zip(shell_commands(result.stdout, "train"), trains) if "student" in w]
    for key, values in expected.items():
        found = {t.get(key) for t in (students if key == "orth_weight" else trains)}
        assert found == values, (key, found)


def test_names_paths_and_values_reach_fgkd_verbatim_never_the_shell(tmp_path):
    """A data set whose name and raw path hold spaces and shell syntax is prepared and trained; nothing of them runs."""
    from fixtures import make_cub

    from torchvision.models.resnet import BasicBlock, ResNet

    project = project_copy(tmp_path / "project")
    name, raw = "my birds; touch INJECTED", "data/raw/cub birds $(touch INJECTED2) `touch INJECTED3`"
    make_cub(project / raw)
    weights = "weights/start {backbone} $(touch INJECTED4); x.pth"  # an option's value, filled per job
    filled = weights.format(backbone="resnet10")
    (project / filled).parent.mkdir()
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1]).state_dict(), project / filled)
    config = yaml.safe_load((project / "config" / "config.yaml").read_text())
    config["datasets"] = {name: {"format": "cub", "raw": raw, "resize": 48}}
    config["run_datasets"] = [name]
    config["train"]["pretrained"] = weights
    (project / "odd.yaml").write_text(yaml.safe_dump(config))
    plan = run(["snakemake", "--cores", "2", "ablations", "--dry-run", "--printshellcmds", "--configfile", "odd.yaml"],
               project).stdout
    trains = shell_commands(plan, "train")
    assert trains and all(words[words.index("--pretrained") + 1] == filled for words in trains)
    for line in plan.splitlines():  # every log path is one word after the redirection, whole
        if line.startswith("Shell command: fgkd "):
            log = shlex.split(line.rsplit(" > ", 1)[1])
            assert log[0].startswith("logs/") and log[1:] == ["2>&1"] and (name in log[0] or "report" in log[0]), line
    path_options = {"--root", "--out", "--data", "--model", "--earlier", "--raw", "--overlap", "--figure"}
    for program in ("prepare", "train", "predict", "ensemble", "attention", "report"):  # no synthetic set here
        commands = shell_commands(plan, program)
        assert commands, program
        for words in commands:
            paths = [words[i + 1] for i, w in enumerate(words[:-1]) if w in path_options]
            paths += [w for w in words if w.endswith(".parquet") and not w.startswith("-")]  # ensemble's inputs
            assert paths and all(name in p or raw in p or p == "results/reports" or
                                 p.startswith("results/reports/") for p in paths), (program, words)
            if program == "report":
                assert words.count(f"{name}/resnet10/0") == 1
    target = f"results/{name}/resnet10/seed0/teacher/model.pt"
    run(["snakemake", "--cores", "2", target, "--configfile", "odd.yaml"], project)
    assert load_model_metadata(project / target)["num_classes"] == 3
    assert not [p for p in project.rglob("INJECTED*")]


def load_model_metadata(path: Path) -> dict:
    return torch.load(path, weights_only=True)["metadata"]


def test_a_running_snakemakes_lock_is_kept_and_a_second_run_in_its_folder_refused(tmp_path):
    """Stale-lock removal must only remove the locks of runs that are gone (tests/test_faults.py kills one)."""
    project = project_copy(tmp_path / "project")
    config = project / "config" / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1", "epochs: 40"))
    target = "results/synthetic/resnet10/seed0/teacher/model.pt"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    first = subprocess.Popen(["snakemake", "--cores", "1", target], cwd=project, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_file(project / "results/synthetic/resnet10/seed0/teacher/checkpoint.pt", first)
        assert first.poll() is None, "the first run ended before the second could start"
        locks = sorted((project / ".snakemake" / "locks").iterdir())
        second = run(["snakemake", "--cores", "1", target], project, check=False)
        assert second.returncode != 0 and "removed a stale Snakemake lock" not in second.stderr
        assert "cannot be locked" in second.stdout + second.stderr
        assert sorted((project / ".snakemake" / "locks").iterdir()) == locks
        assert first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()



def test_a_partial_configfile_says_that_the_default_is_not_read_and_how_to_extend_it(tmp_path):
    project = project_copy(tmp_path / "project")
    (project / "overlay.yaml").write_text(yaml.safe_dump({"train": {"epochs": 2}}))
    alone = run(["snakemake", "--cores", "1", "all", "--dry-run", "--configfile", "overlay.yaml"], project, check=False)
    assert alone.returncode == 1
    assert "config/config.yaml is not read then; to extend it, give both: --configfile config/config.yaml" in alone.stderr
    both = run(["snakemake", "--cores", "1", "all", "--dry-run", "--printshellcmds", "--configfile",
                "config/config.yaml", "overlay.yaml"], project)
    assert {train_options_in(w)["epochs"] for w in shell_commands(both.stdout, "train")} == {"2"}


def test_start_weights_files_are_job_inputs_filled_per_job(tmp_path):
    """`pretrained: weights/{backbone}.pth`: each job gets its backbone's file as an input, so a new file retrains what
    starts from it. `init_from` may name a model this workflow trains (transfer from another data set): it plans."""
    from torchvision.models.resnet import BasicBlock, ResNet

    project = project_copy(tmp_path / "project")
    weights = project / "weights" / "resnet10.pth"
    weights.parent.mkdir()
    torch.manual_seed(1)
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1]).state_dict(), weights)
    (project / "start.yaml").write_text(yaml.safe_dump({"train": {"pretrained": "weights/{backbone}.pth"}}))
    args = ["--configfile", "config/config.yaml", "start.yaml"]
    teacher = "results/synthetic/resnet10/seed0/teacher/model.pt"
    run(["snakemake", "--cores", "2", teacher, *args], project)
    log = (project / "logs/train/synthetic/resnet10/seed0/teacher.log").read_text()
    assert "teacher starts from pretrained weights weights/resnet10.pth (sha256 " in log
    assert "Nothing to be done" in run(["snakemake", "-n", teacher, *args], project).stdout
    torch.manual_seed(2)
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1]).state_dict(), weights)
    replanned = run(["snakemake", "-n", teacher, *args], project).stdout
    assert job_counts(replanned) == {"train_shared": 1}
    assert "reason: Updated input files: weights/resnet10.pth" in replanned

    transfer = dict(yaml.safe_load((project / "config" / "config.yaml").read_text())["datasets"]["synthetic"])
    transfer["train"] = {"init_from": "results/synthetic/{backbone}/seed{seed}/teacher/model.pt"}
    (project / "transfer.yaml").write_text(yaml.safe_dump({"datasets": {"other": transfer},
                                                           "run_datasets": ["synthetic", "other"]}))
    target = "results/other/resnet10/seed0/teacher/model.pt"
    planned = run(["snakemake", "-n", "-p", "--forceall", target, "--configfile", "config/config.yaml",
                   "transfer.yaml"], project).stdout
    (command,) = [words for words in shell_commands(planned, "train") if target.rsplit("/", 1)[0] in " ".join(words)]
    assert command[command.index("--init-from") + 1] == teacher
    assert job_counts(planned)["train_shared"] == 2  # the synthetic teacher first, then the other's
