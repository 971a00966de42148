"""Report numbers against an independent computation, from a results tree of real files read by the real CLI."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.special
from click.testing import CliRunner
from PIL import Image

from fgkd.cli import main
from fgkd.ensemble import ensemble
from fgkd.report import summary_table
from artifacts import one_line_error, ranked_hits, save_model, write_logits

CLASSES, IMAGES, STUDENTS = 7, 60, 2
DISAGREE = slice(0, 12)  # images on which the two combine rules pick different classes
MEMBERS = ["teacher", *[f"student_{k}" for k in range(1, STUDENTS + 1)]]
NETWORKS = [*MEMBERS, "auxkd"]
BASELINES = ["auxkd_ce", "auxkd_single"]  # shared by the variants, read by the ablation report


def member_logits(rng, network, selection):
    """Random logits; the teacher's rounded to integers (ties), and on the DISAGREE images the members are
    built so that the sum of logits picks class 0 and the mean of softmax class 1 (the label)."""
    logits = rng.standard_normal((IMAGES, CLASSES)).astype(np.float32)
    if network == "teacher":
        logits = np.round(2 * logits)
    if selection == "best" and network in MEMBERS:
        crafted = {"teacher": [5, 0, 0, 0, 0, 0, 0], "student_1": [0, 4, -100, -100, -100, -100, -100],
                   "student_2": [0] * CLASSES}[network]
        logits[DISAGREE] = crafted
    return logits


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """results/synthetic/resnet10/seed{0,1}/... as the workflow lays it out; returns (root, logits, facts)."""
    root = tmp_path_factory.mktemp("report") / "results"
    models = tmp_path_factory.mktemp("models")
    plain, plain_size = save_model(models / "plain" / "model.pt", CLASSES)
    aux, aux_size = save_model(models / "aux" / "model.pt", CLASSES, aux_heads=STUDENTS + 1)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, IMAGES)
    labels[DISAGREE] = 1
    logits, facts = {}, {}
    for seed in (0, 1):
        base = root / "synthetic" / "resnet10" / f"seed{seed}"
        folders = {"teacher": base / "teacher", **{s: base / "or" / s for s in NETWORKS[1:]},
                   **{s: base / s for s in BASELINES}}
        for network, folder in folders.items():
            for selection, name in (("best", "logits.parquet"), ("last", "logits_last.parquet")):
                logits[seed, network, selection] = member_logits(rng, network, selection)
                write_logits(folder / name, logits[seed, network, selection], labels)
            seconds = rng.uniform(1, 9, 2)
            pd.DataFrame({"stage": network, "epoch": [1, 2], "loss": [2.0, 1.5], "train_acc": [0.3, 0.5],
                          "val_acc": [0.25, 0.4], "seconds": seconds, "images_per_s": [100.0, 120.0]}).to_parquet(
                folder / "history.parquet")
            os.link(aux if network.startswith("auxkd") else plain, folder / "model.pt")
            facts[seed, network] = {"parameters": aux_size if network.startswith("auxkd") else plain_size,
                                    "train_seconds": seconds.sum()}
        overlap = rng.uniform(0, 1, 3)
        pd.DataFrame({"model_a": ["teacher", "teacher", "student_1"], "overlap": overlap,
                      "model_b": ["student_1", "student_2", "student_2"]}).to_parquet(base / "or" / "attention.parquet")
        facts[seed, "overlap"] = overlap.mean()
        Image.new("RGB", (8, 8)).save(base / "or" / "attention.png")
    return root, labels, logits, facts


def expected_ensemble(logits, seed, selection, combine):
    members = [logits[seed, m, selection].astype(np.float64) for m in MEMBERS]
    if combine == "logits":
        return np.sum(members, axis=0)
    return np.mean([scipy.special.softmax(m, axis=1) for m in members], axis=0)


def write_ensembles(root, combine):
    """Each seed's ensemble.parquet, written by the real `fgkd ensemble` command."""
    for seed in (0, 1):
        base = root / "synthetic" / "resnet10" / f"seed{seed}"
        files = [base / "teacher" / "logits.parquet", *[base / "or" / s / "logits.parquet" for s in MEMBERS[1:]]]
        result = CliRunner().invoke(main, ["ensemble", *map(str, files), "--names", ",".join(MEMBERS),
                                           "--combine", combine, "--out", str(base / "or" / "ensemble.parquet")])
        assert result.exit_code == 0, result.output


def run_report(root, out, combine, *extra):
    return CliRunner().invoke(main, ["report", "--results", str(root), "--run", "synthetic/resnet10/0",
                                     "--run", "synthetic/resnet10/1", "--variants", "or", "--students", str(STUDENTS),
                                     "--combine", combine, "--out", str(out), *extra])


@pytest.mark.parametrize("combine", ["logits", "probs"])
def test_every_metrics_row_equals_an_independent_computation_from_the_files(results, tmp_path, combine):
    root, labels, logits, facts = results
    write_ensembles(root, combine)
    result = run_report(root, tmp_path / "reports", combine)
    assert result.exit_code == 0, result.output
    metrics = pd.read_parquet(tmp_path / "reports" / "metrics.parquet")
    assert len(metrics) == 2 * 2 * (len(NETWORKS) + 1)  # seeds x selections x (networks + ensemble)
    for row in metrics.itertuples():
        if row.method == "ensemble":
            scores = expected_ensemble(logits, row.seed, row.selection, combine)
            assert (row.members, row.combine) == ("+".join(MEMBERS), combine)
            assert row.parameters == sum(facts[row.seed, m]["parameters"] for m in MEMBERS)
            assert row.train_seconds == pytest.approx(sum(facts[row.seed, m]["train_seconds"] for m in MEMBERS))
            assert row.attention_overlap == pytest.approx(facts[row.seed, "overlap"])
        else:
            scores = logits[row.seed, row.method, row.selection]
            assert pd.isna(row.combine) and row.parameters == facts[row.seed, row.method]["parameters"]
            assert row.train_seconds == pytest.approx(facts[row.seed, row.method]["train_seconds"])
        assert row.top1 == ranked_hits(scores, labels, 1).mean(), row
        assert row.top5 == ranked_hits(scores, labels, 5).mean(), row
    ensembles = pd.read_parquet(tmp_path / "reports" / "ensembles.parquet")
    assert set(ensembles["combine"]) == {combine} and set(ensembles["seed"]) == {0, 1}
    summary = (tmp_path / "reports" / "summary.md").read_text()
    assert {"logits": "(sum of logits)", "probs": "(mean of softmax probabilities)"}[combine] in summary


def test_the_two_combine_rules_give_different_ensemble_rows(results, tmp_path):
    """The crafted images make the rules disagree, so a report that ignored --combine would fail above."""
    root = results[0]
    top1 = {}
    for combine in ("logits", "probs"):
        write_ensembles(root, combine)
        assert run_report(root, tmp_path / combine, combine).exit_code == 0
        metrics = pd.read_parquet(tmp_path / combine / "metrics.parquet")
        top1[combine] = metrics[(metrics.method == "ensemble") & (metrics.selection == "best")]["top1"].to_numpy()
    assert (top1["probs"] != top1["logits"]).all()


def test_an_ensemble_file_of_another_combine_rule_or_stale_is_refused(results, tmp_path):
    root, labels, _, _ = results
    write_ensembles(root, "logits")
    error = one_line_error(run_report(root, tmp_path / "reports", "probs"), "seed0/or/ensemble.parquet",
                           "combined by logits", "probs")
    assert "rerun" in error and not (tmp_path / "reports").exists()

    stale = root / "synthetic" / "resnet10" / "seed1" / "or" / "ensemble.parquet"
    other = [write_logits(tmp_path / f"m{i}" / "logits.parquet", np.eye(CLASSES)[labels], labels) for i in range(3)]
    ensemble(other, MEMBERS, "logits").to_parquet(stale)
    one_line_error(run_report(root, tmp_path / "reports", "logits"), "seed1/or/ensemble.parquet", "stale")
    assert not (tmp_path / "reports").exists()


def test_ablation_report_names_the_rule_and_refuses_occlusion_of_another(results, tmp_path):
    root, labels, logits, _ = results
    write_ensembles(root, "probs")
    for seed in (0, 1):
        rows = [{"network": n, "condition": c, "combine": "probs" if n == "ensemble" else None, "top1": 0.5}
                for c in ("as generated", "hidden:head") for n in (*MEMBERS, "ensemble")]
        pd.DataFrame(rows).to_parquet(root / "synthetic" / "resnet10" / f"seed{seed}" / "or" / "part_occlusion.parquet")
    result = run_report(root, tmp_path / "ablations", "probs", "--ablations")
    assert result.exit_code == 0, result.output
    metrics = pd.read_parquet(tmp_path / "ablations" / "metrics.parquet")
    assert set(metrics["method"]) == {*NETWORKS, *BASELINES, "ensemble"}
    for row in metrics[metrics.method == "ensemble"].itertuples():
        assert row.combine == "probs"
        assert row.top1 == ranked_hits(expected_ensemble(logits, row.seed, row.selection, "probs"), labels, 1).mean()
    summary = (tmp_path / "ablations" / "summary.md").read_text()
    assert summary.count("mean of softmax probabilities") == 2  # the ensemble table and the occlusion table

    stale = root / "synthetic" / "resnet10" / "seed1" / "or" / "part_occlusion.parquet"
    frame = pd.read_parquet(stale)
    frame.assign(combine=frame["combine"].replace("probs", "logits")).to_parquet(stale)
    one_line_error(run_report(root, tmp_path / "again", "probs", "--ablations"), str(stale), "combined by logits")
    assert not (tmp_path / "again").exists()


def test_summary_table_of_three_seeds_is_mean_sample_std_and_last_epoch_mean():
    rows = []
    for seed, (t_best, t_last, e_best, e_last) in enumerate([(0.50, 0.40, 0.80, 0.70), (0.60, 0.50, 0.90, 0.75),
                                                             (0.70, 0.45, 0.85, 0.80)]):
        for method, best, last in (("teacher", t_best, t_last), ("ensemble", e_best, e_last)):
            for selection, top1 in (("best", best), ("last", last)):
                rows.append({"dataset": "synthetic", "backbone": "resnet10", "seed": seed, "variant": "or",
                             "method": method, "selection": selection, "top1": top1})
    rows.append({"dataset": "synthetic", "backbone": "resnet10", "seed": 0, "variant": "lambda0",
                 "method": "teacher", "selection": "best", "top1": 0.0})  # another variant: not in this table
    lines = summary_table(pd.DataFrame(rows), ["teacher", "ensemble", "auxkd"], "or")
    # teacher: 50, 60, 70 -> mean 60, sample std 10; last 40, 50, 45 -> 45.
    # ensemble: 80, 90, 85 -> mean 85, sample std 5; last 70, 75, 80 -> 75. auxkd: no rows.
    assert lines[0].startswith("Top-1 test accuracy (%), mean ± std over 3 seed(s)")
    assert lines[2:] == ["| dataset | backbone | teacher | ensemble | auxkd |", "|---|---|---|---|---|",
                         "| synthetic | resnet10 | 60.0 ± 10.0 (45.0) | 85.0 ± 5.0 (75.0) | n/a |"]


@pytest.mark.parametrize("run", ["results/synthetic/resnet10/seed0", "synthetic", "synthetic/resnet10/seed0",
                                 "synthetic/resnet10/", "synthetic/resnet10/0/extra"])
def test_a_run_that_is_not_dataset_backbone_seed_is_one_line_saying_the_form(tmp_path, run):
    result = CliRunner().invoke(main, ["report", "--results", str(tmp_path), "--run", run, "--variants", "or",
                                       "--students", "2", "--out", str(tmp_path / "reports")])
    error = one_line_error(result, "--run", repr(run), "dataset/backbone/seed", exit_code=2)
    assert "synthetic/resnet10/0" in error and not (tmp_path / "reports").exists()


def test_a_run_without_results_is_one_line_naming_its_folder(results, tmp_path):
    root = results[0]
    result = CliRunner().invoke(main, ["report", "--results", str(root), "--run", "synthetic/resnet10/7",
                                       "--variants", "or", "--students", "2", "--out", str(tmp_path / "reports")])
    one_line_error(result, "seed7", "synthetic/resnet10/7")


def _remove(path):
    path.unlink()


def _truncate(path):
    data = path.read_bytes()
    path.unlink()  # a hard link shared with the other tests' tree
    path.write_bytes(data[:100])


def _drop_seconds(path):
    frame = pd.read_parquet(path)
    path.unlink()
    frame.drop(columns="seconds").to_parquet(path)


@pytest.mark.parametrize("relative, damage", [("or/attention.png", _remove), ("or/student_2/model.pt", _truncate),
                                              ("teacher/history.parquet", _drop_seconds),
                                              ("or/ensemble.parquet", _remove)],
                         ids=["attention.png missing", "model.pt truncated", "history without seconds",
                              "ensemble.parquet missing"])
def test_a_missing_or_damaged_input_is_one_line_naming_it_and_no_report(results, tmp_path, relative, damage):
    write_ensembles(results[0], "logits")
    root = tmp_path / "results"
    shutil.copytree(results[0], root, copy_function=os.link)
    victim = root / "synthetic" / "resnet10" / "seed0" / relative
    damage(victim)
    one_line_error(run_report(root, tmp_path / "reports", "logits"), str(victim))
    assert not (tmp_path / "reports").exists()
