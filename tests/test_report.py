"""Report numbers against an independent computation, from a results tree of real files read by the real CLI."""

import json
import math
import os
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import scipy.special
from click.testing import CliRunner
from PIL import Image

from fgkd.cli import main
from fgkd.ensemble import ensemble
from fgkd.metrics import COMBINES
from fgkd.paired import mcnemar_detectable, mean_detectable
from fgkd.report import COMPARISON_COLUMNS, GENERATED_MARK, comparison_table, provenance, summary_table
from artifacts import one_line_error, ranked_hits, save_model, write_logits

pytestmark = pytest.mark.unit

CLASSES, IMAGES, STUDENTS = 7, 60, 2
DISAGREE = slice(0, 12)  # images on which the two combine rules pick different classes
MEMBERS = ["teacher", *[f"student_{k}" for k in range(1, STUDENTS + 1)]]
NETWORKS = [*MEMBERS, "auxkd"]
BASELINES = ["auxkd_ce", "auxkd_single"]  # shared by the variants, read by the ablation report
CPU = {"torch": "2.14.1", "device": "cpu", "cpu": "Test CPU", "cpu_capability": "AVX512", "threads": 2,
       "cpu_flags": ["avx512f", "avx2"], "limits": {}}
GPU = {**CPU, "device": "cuda", "gpu": "Test GPU", "tf32_convolutions": True, "tf32_matmul": False}
# The plain networks trained on one CPU; the aux-KD ones started with one thread and oneDNN capped at AVX2, and were
# resumed on a GPU, twice (other CPU threads, which do not change a GPU's description: printed once).
ARITHMETIC = {"plain": ([CPU], "CPU Test CPU (avx512f, torch AVX512), 2 threads, torch 2.14.1"),
              "aux": ([{**CPU, "threads": 1, "limits": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}, GPU, {**GPU, "threads": 1}],
                      "CPU Test CPU (avx512f, torch AVX512; ONEDNN_MAX_CPU_ISA=AVX2), 1 thread, torch 2.14.1 + "
                      "CUDA Test GPU (TF32 convolutions), torch 2.14.1")}


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
    plain, plain_size = save_model(models / "plain" / "model.pt", CLASSES, arithmetic=ARITHMETIC["plain"][0])
    aux, aux_size = save_model(models / "aux" / "model.pt", CLASSES, aux_heads=STUDENTS + 1,
                               arithmetic=ARITHMETIC["aux"][0])
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
        other = np.random.default_rng(100 + seed)  # a second variant's students, for the ablation report
        for network in MEMBERS[1:]:
            folder = base / "lambda0" / network
            for selection, name in (("best", "logits.parquet"), ("last", "logits_last.parquet")):
                logits[seed, f"lambda0/{network}", selection] = member_logits(other, network, selection)
                write_logits(folder / name, logits[seed, f"lambda0/{network}", selection], labels)
            pd.DataFrame({"stage": network, "epoch": [1], "loss": [2.0], "train_acc": [0.3], "val_acc": [0.25],
                          "seconds": [1.0], "images_per_s": [100.0]}).to_parquet(folder / "history.parquet")
            os.link(plain, folder / "model.pt")
        pd.DataFrame({"model_a": ["teacher"], "model_b": ["student_1"], "overlap": [0.5]}).to_parquet(
            base / "lambda0" / "attention.parquet")
    return root, labels, logits, facts


def expected_ensemble(logits, seed, selection, combine, variant="or"):
    names = [m if variant == "or" or m == "teacher" else f"{variant}/{m}" for m in MEMBERS]
    members = [logits[seed, m, selection].astype(np.float64) for m in names]
    if combine == "logits":
        return np.sum(members, axis=0)
    return np.mean([scipy.special.softmax(m, axis=1) for m in members], axis=0)


def write_ensembles(root, combine, variants=("or",)):
    """Each seed's ensemble.parquet of each variant, written by the real `fgkd ensemble` command."""
    for seed in (0, 1):
        base = root / "synthetic" / "resnet10" / f"seed{seed}"
        for variant in variants:
            files = [base / "teacher" / "logits.parquet", *[base / variant / s / "logits.parquet" for s in MEMBERS[1:]]]
            result = CliRunner().invoke(main, ["ensemble", *map(str, files), "--names", ",".join(MEMBERS),
                                               "--combine", combine, "--out", str(base / variant / "ensemble.parquet")])
            assert result.exit_code == 0, result.output


def run_report(root, out, combine, *extra, variants="or"):
    return CliRunner().invoke(main, ["report", "--results", str(root), "--run", "synthetic/resnet10/0",
                                     "--run", "synthetic/resnet10/1", "--variants", variants, "--students",
                                     str(STUDENTS), "--combine", combine, "--out", str(out), *extra])


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
            assert row.arithmetic == ARITHMETIC["plain"][1]
        else:
            assert row.arithmetic == ARITHMETIC["aux" if row.method == "auxkd" else "plain"][1]
            scores = logits[row.seed, row.method, row.selection]
            assert pd.isna(row.combine) and row.parameters == facts[row.seed, row.method]["parameters"]
            assert row.train_seconds == pytest.approx(facts[row.seed, row.method]["train_seconds"])
        assert row.top1 == ranked_hits(scores, labels, 1).mean(), row
        assert row.top5 == ranked_hits(scores, labels, 5).mean(), row
    ensembles = pd.read_parquet(tmp_path / "reports" / "ensembles.parquet")
    assert set(ensembles["combine"]) == {combine} and set(ensembles["seed"]) == {0, 1}
    summary = (tmp_path / "reports" / "summary.md").read_text()
    assert {"logits": "(sum of logits)", "probs": "(mean of softmax probabilities)"}[combine] in summary
    # per seed: teacher and 2 students plain, auxkd aux
    assert (f"Trained with: {ARITHMETIC['plain'][1]} (6 networks); {ARITHMETIC['aux'][1]} (2 networks)."
            in summary.splitlines()[4]), summary


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


def test_the_report_leaves_no_figure_of_an_earlier_report_of_other_runs(results, tmp_path):
    """An earlier report over another data set left its attention figure in results/reports/figures: the next report,
    over other runs, must not show it as its own (publish-results publishes every figure there)."""
    root = results[0]
    write_ensembles(root, "logits")
    stale = tmp_path / "figures" / "attention_parts_any_resnet10.png"
    stale.parent.mkdir()
    Image.new("RGB", (8, 8)).save(stale)
    assert run_report(root, tmp_path, "logits").exit_code == 0
    assert sorted(f.name for f in (tmp_path / "figures").iterdir()) == [
        "attention_synthetic_resnet10.png", "ensemble_members.png", "training_curves.png"]


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


PARTS = ["head", "wing", "tail", "belly", "elsewhere"]
# Per network, its attention share on head, wing, tail and belly in seed 0; seed 1 moves 0.02 from the wing to the head.
SHARES = {"teacher": [0.10, 0.50, 0.05, 0.15], "student_1": [0.30, 0.20, 0.10, 0.10],
          "student_2": [0.05, 0.05, 0.40, 0.10]}
AREAS = [0.06, 0.10, 0.06, 0.06]


def write_part_attention(root, seed):
    rows = []
    for network, shares in SHARES.items():
        shares = [shares[0] + 0.02 * seed, shares[1] - 0.02 * seed, *shares[2:]]
        rows += [{"network": network, "part": part, "share": share, "area": area}
                 for part, share, area in zip(PARTS, [*shares, 1 - sum(shares)], [*AREAS, 1 - sum(AREAS)])]
    path = root / "synthetic" / "resnet10" / f"seed{seed}" / "or" / "part_attention.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_ablation_report_names_the_rule_and_refuses_occlusion_of_another(results, tmp_path):
    root, labels, logits, _ = results
    write_ensembles(root, "probs")
    for seed in (0, 1):
        rows = [{"network": n, "condition": c, "combine": "probs" if n == "ensemble" else None, "top1": 0.5}
                for c in ("as generated", "hidden:head") for n in (*MEMBERS, "ensemble")]
        pd.DataFrame(rows).to_parquet(root / "synthetic" / "resnet10" / f"seed{seed}" / "or" / "part_occlusion.parquet")
        write_part_attention(root, seed)
    result = run_report(root, tmp_path / "ablations", "probs", "--ablations")
    assert result.exit_code == 0, result.output
    metrics = pd.read_parquet(tmp_path / "ablations" / "metrics.parquet")
    assert set(metrics["method"]) == {*NETWORKS, *BASELINES, "ensemble"}
    for row in metrics[metrics.method == "ensemble"].itertuples():
        assert row.combine == "probs"
        assert row.top1 == ranked_hits(expected_ensemble(logits, row.seed, row.selection, "probs"), labels, 1).mean()
    summary = (tmp_path / "ablations" / "summary.md").read_text()
    assert summary.count("mean of softmax probabilities") == 2  # the ensemble table and the occlusion table
    # the attention table: each network's mean share over the seeds (%), and the areas
    section = summary[summary.index("## Per-part evidence"):]
    assert [row for row in markdown_rows(section) if row[0] not in ("condition", "as generated", "hidden:head")] == [
        ["attention (%)", *PARTS], ["teacher", "11.0", "49.0", "5.0", "15.0", "20.0"],
        ["student_1", "31.0", "19.0", "10.0", "10.0", "30.0"], ["student_2", "6.0", "4.0", "40.0", "10.0", "40.0"],
        ["area", "6.0", "10.0", "6.0", "6.0", "72.0"]]
    shares = pd.read_parquet(tmp_path / "ablations" / "part_attention.parquet")
    assert len(shares) == 2 * len(SHARES) * len(PARTS) and set(shares["seed"]) == {0, 1}
    assert {"dataset", "backbone", "seed", "variant", "network", "part", "share", "area"} <= set(shares.columns)
    # per seed: teacher and 2 students plain; auxkd, auxkd_ce and auxkd_single aux; a tie is in text order
    assert summary.splitlines()[4] == (f"Trained with: {ARITHMETIC['plain'][1]} (6 networks); "
                                       f"{ARITHMETIC['aux'][1]} (6 networks)."), summary

    attention = root / "synthetic" / "resnet10" / "seed1" / "or" / "part_attention.parquet"
    frame = pd.read_parquet(attention)
    for damage, culprit in ((lambda f: f.drop(columns="area"), "no column area"),
                            (lambda f: f[f.network != "student_2"], "no rows for student_2"),
                            (lambda f: f[f.part != "elsewhere"], "no rows for elsewhere")):
        damage(frame).to_parquet(attention)
        one_line_error(run_report(root, tmp_path / "again", "probs", "--ablations"), str(attention), culprit)
        assert not (tmp_path / "again").exists()
    attention.unlink()
    one_line_error(run_report(root, tmp_path / "again", "probs", "--ablations"), str(attention), "missing")
    write_part_attention(root, 1)

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


@pytest.mark.parametrize("extra,variants,culprit", [
    (["--run", "synthetic/resnet10/0"], "or", "run synthetic/resnet10/0 given twice"),
    ([], "or,or", "variant or given twice")])
def test_a_run_or_variant_given_twice_is_one_line_and_no_report(results, tmp_path, extra, variants, culprit):
    """Its seeds would count twice in the means and intervals of the comparisons."""
    root = results[0]
    write_ensembles(root, "logits")
    for ablations in ([], ["--ablations"]):
        result = run_report(root, tmp_path / "reports", "logits", *extra, *ablations, variants=variants)
        one_line_error(result, culprit)
        assert not (tmp_path / "reports").exists()


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


T_975_ONE_DF = 12.706204736174707  # Student t quantile 0.975 with 1 degree of freedom (two seeds)
CLAIMS = {("or", "ensemble", "or", "teacher"), ("lambda0", "ensemble", "lambda0", "teacher"),
          ("or", "ensemble", "lambda0", "ensemble"), ("or", "auxkd", "or", "auxkd_single"),
          ("or", "auxkd", "or", "auxkd_ce"), ("or", "auxkd_single", "or", "auxkd_ce")}


def independent_hits(logits, labels, seed, variant, network, selection, combine):
    if network == "ensemble":
        return ranked_hits(expected_ensemble(logits, seed, selection, combine, variant), labels, 1)
    key = f"lambda0/{network}" if variant == "lambda0" and network.startswith("student") else network
    return ranked_hits(logits[seed, key, selection], labels, 1)


def exact_mcnemar(b, c):
    """2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1; 1 without discordant images."""
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def results_without_occlusion(results, tmp_path):
    """A linked copy of the results tree without the part-occlusion files other tests leave in it."""
    root = tmp_path / "results"
    shutil.copytree(results[0], root, copy_function=os.link)
    for path in [*root.rglob("part_occlusion.parquet"), *root.rglob("part_attention.parquet")]:
        path.unlink()
    return root


def markdown_rows(text):
    """The cells of each row of the Markdown tables in ``text`` (header rows too, separator rows not), their bold and
    code marks dropped."""
    return [[cell.strip().replace("**", "").replace("`", "") for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]


class TableCells(HTMLParser):
    """The text of each cell of each table row of an HTML page, in ``rows``."""

    def __init__(self):
        super().__init__()
        self.rows, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def html_rows(page):
    parser = TableCells()
    parser.feed(page)
    return parser.rows


@pytest.mark.parametrize("combine", ["logits", "probs"])
def test_comparisons_equal_an_independent_paired_computation(results, tmp_path, combine):
    _, labels, logits, _ = results
    root = results_without_occlusion(results, tmp_path)
    write_ensembles(root, combine, ("or", "lambda0"))
    assert run_report(root, tmp_path / "reports", combine).exit_code == 0
    result = run_report(root, tmp_path / "ablations", combine, "--ablations", variants="or,lambda0")
    assert result.exit_code == 0, result.output
    main_table = pd.read_parquet(tmp_path / "reports" / "comparisons.parquet")
    table = pd.read_parquet(tmp_path / "ablations" / "comparisons.parquet")
    assert list(table.columns) == list(main_table.columns) == list(COMPARISON_COLUMNS)
    key = ["variant_a", "method_a", "variant_b", "method_b"]
    assert set(main_table[key].itertuples(index=False, name=None)) == {("or", "ensemble", "or", "teacher")}
    assert set(table[key].itertuples(index=False, name=None)) == CLAIMS
    assert len(main_table) == 1 * 2 * 2 and len(table) == len(CLAIMS) * 2 * 2  # x seeds x selections
    assert not table.duplicated([*key, "seed", "selection"]).any()
    pd.testing.assert_frame_equal(main_table, table[table[key].apply(tuple, axis=1) == ("or", "ensemble", "or",
                                                                                           "teacher")]
                                  .reset_index(drop=True))
    metrics = pd.read_parquet(tmp_path / "ablations" / "metrics.parquet").set_index(
        ["seed", "variant", "method", "selection"])["top1"]
    for row in table.itertuples():
        a = independent_hits(logits, labels, row.seed, row.variant_a, row.method_a, row.selection, combine)
        b = independent_hits(logits, labels, row.seed, row.variant_b, row.method_b, row.selection, combine)
        assert (row.images, row.top1_a, row.top1_b) == (IMAGES, a.mean(), b.mean()), row
        assert row.top1_a == metrics[row.seed, row.variant_a, row.method_a, row.selection]
        assert row.top1_b == metrics[row.seed, row.variant_b, row.method_b, row.selection]
        assert row.difference == pytest.approx(a.mean() - b.mean(), abs=1e-15)
        assert (row.only_a, row.only_b) == ((a & ~b).sum(), (~a & b).sum())
        assert row.mcnemar_p == pytest.approx(exact_mcnemar(row.only_a, row.only_b), rel=1e-12)
        both = table[(table[key].apply(tuple, axis=1) == (row.variant_a, row.method_a, row.variant_b, row.method_b))
                     & (table.selection == row.selection)]["difference"].to_numpy()
        assert row.seeds == 2 and row.mean_difference == pytest.approx(both.mean())
        # two seeds: sample std |d0 - d1| / sqrt(2), half width t * std / sqrt(2)
        half = T_975_ONE_DF * abs(both[0] - both[1]) / math.sqrt(2) / math.sqrt(2)
        assert (row.ci_low, row.ci_high) == (pytest.approx(both.mean() - half), pytest.approx(both.mean() + half))
        # per seed from its discordant images out of all, over seeds from the seeds' differences
        assert row.detectable == pytest.approx(mcnemar_detectable(row.only_a + row.only_b, IMAGES), nan_ok=True)
        assert row.detectable_mean == pytest.approx(mean_detectable(both), nan_ok=True)
    assert table["only_a"].sum() > 0 and table["only_b"].sum() > 0  # both directions occur: the test can tell them
    assert table["detectable"].notna().any() and table["detectable_mean"].notna().any()
    for folder, title in ((tmp_path / "reports", "## Paired comparisons"),
                          (tmp_path / "ablations", "## Paired comparisons: ensembles and aux KD")):
        text = (folder / "summary.md").read_text()
        assert title in text and "| synthetic | resnet10 | ensemble (or) | teacher |" in text
        # summary.html (what `snakemake --report` shows): every table row of summary.md, cell for cell
        page = (folder / "summary.html").read_text()
        assert html_rows(page) == markdown_rows(text) and len(markdown_rows(text)) >= 4
        assert ["synthetic", "resnet10", "ensemble (or)", "teacher"] in [row[:4] for row in html_rows(page)]
        assert COMBINES[combine].text in page
    # the main report's last table: its one comparison's detectable differences, in points, over seeds and per seed
    header, row = markdown_rows((tmp_path / "reports" / "summary.md").read_text())[-2:]
    best = main_table[main_table.selection == "best"].sort_values("seed")
    points = " / ".join("n/a" if np.isnan(d) else f"{100 * d:.1f}" for d in best["detectable"])
    assert header[6] == "detectable (80% power)"
    assert row[6] == f"±{100 * best['detectable_mean'].iloc[0]:.1f} ({points})"
    # per seed: the shared teacher once, 2 students of each variant plain; auxkd, auxkd_ce and auxkd_single aux
    assert (tmp_path / "ablations" / "summary.md").read_text().splitlines()[4] == (
        f"Trained with: {ARITHMETIC['plain'][1]} (10 networks); {ARITHMETIC['aux'][1]} (6 networks).")
    assert "| synthetic | resnet10 | auxkd (or) | auxkd_single |" in (tmp_path / "ablations" / "summary.md").read_text()


def test_comparison_table_marks_an_interval_excluding_zero_and_a_seed_with_mcnemar_p_below_005():
    rows = []
    # a - b: seeds 0.02, 0.03, 0.04 (mean 0.03, interval 0.03 +- 4.3027 * 0.01 / sqrt(3) = [0.0052, 0.0548]: > 0);
    # c - d: seeds 0.05, -0.01, 0.02 (interval contains 0). p values by seed; 0.01 and 0.04 are below 0.05.
    # Detectable: over seeds 3.264 times the std (0.01, 0.03), per seed as given (NaN: too few discordant images).
    for pair, differences, ps, detectable, over in (
            (("or", "ensemble", "or", "teacher"), (0.02, 0.03, 0.04), (0.2, 0.01, 0.5), (0.031, 0.0284, np.nan),
             0.0326),
            (("or", "ensemble", "lambda0", "ensemble"), (0.05, -0.01, 0.02), (0.04, 0.9, 0.3), (0.1, 0.12, 0.125),
             0.0979)):
        for seed, (d, p, x) in enumerate(zip(differences, ps, detectable)):
            rows.append(dict(zip(("variant_a", "method_a", "variant_b", "method_b"), pair), dataset="synthetic",
                             backbone="resnet10", selection="best", seed=seed, difference=d, mcnemar_p=p, seeds=3,
                             mean_difference=np.mean(differences), ci_low=0.0, ci_high=0.0, detectable=x,
                             detectable_mean=over))
    frame = pd.DataFrame(rows)
    frame.loc[:2, ["ci_low", "ci_high"]] = (0.03 - 4.302652729749462 * 0.01 / math.sqrt(3),
                                            0.03 + 4.302652729749462 * 0.01 / math.sqrt(3))
    frame.loc[3:, ["ci_low", "ci_high"]] = (-0.05, 0.09)
    lines = comparison_table(pd.concat([frame, frame.assign(selection="last", difference=0.5)]))
    assert lines[-2:] == [
        "| synthetic | resnet10 | ensemble (or) | teacher | +2.0 / +3.0* / +4.0 | **+3.0 [+0.5, +5.5]** | "
        "±3.3 (3.1 / 2.8 / n/a) | 0.2 / 0.01 / 0.5 |",
        "| synthetic | resnet10 | ensemble (or) | ensemble (lambda0) | +5.0* / -1.0 / +2.0 | +2.0 [-5.0, +9.0] | "
        "±9.8 (10.0 / 12.0 / 12.5) | 0.04 / 0.9 / 0.3 |"]
    assert lines[2] == ("| dataset | backbone | a | b | a − b per seed | mean [95% interval] | "
                        "detectable (80% power) | McNemar p per seed |")
    assert ('reads "no effect larger than this"' in lines[0] and "two-sided t-test at the seeds' observed spread"
            in lines[0] and "n/a where no split of so few gives p < 0.05" in lines[0])
    one_seed = comparison_table(frame[frame.seed == 0].assign(seeds=1, ci_low=np.nan, ci_high=np.nan,
                                                              detectable_mean=np.nan))
    assert "no interval (n/a) from one seed, or from seeds that all give the same difference" in one_seed[0]
    assert one_seed[-1].endswith("| +5.0* | +2.0 [n/a: one seed] | n/a (10.0) | 0.04 |")
    same = comparison_table(frame.assign(difference=0.02, mean_difference=0.02, mcnemar_p=1.0, ci_low=np.nan,
                                         ci_high=np.nan, detectable_mean=np.nan)[frame.index < 3])
    assert same[-1] == ("| synthetic | resnet10 | ensemble (or) | teacher | +2.0 / +2.0 / +2.0 | "
                        "+2.0 [n/a: no spread over seeds] | n/a (3.1 / 2.8 / n/a) | 1 / 1 / 1 |")


def test_comparison_of_networks_scored_on_other_images_is_one_line_and_no_report(results, tmp_path):
    root = results_without_occlusion(results, tmp_path)
    write_ensembles(root, "logits")
    victim = root / "synthetic" / "resnet10" / "seed1" / "auxkd_single" / "logits.parquet"
    frame = pd.read_parquet(victim)
    victim.unlink()
    frame.assign(image_id=frame["image_id"] + 1000).to_parquet(victim)
    one_line_error(run_report(root, tmp_path / "ablations", "logits", "--ablations"), str(victim), "differ")
    assert not (tmp_path / "ablations").exists()


def _reports(root, title, digest="c0ffee", top1=0.5):
    """A pair of reports as one workflow run makes them: summaries, provenance and the method's metrics rows."""
    (root / "ablations").mkdir(parents=True)
    (root / "figures").mkdir()
    (root / "summary.md").write_text(f"# fgkd results\n\nMade from: x\n\n## Main\n\n{title} main table\n")
    (root / "ablations" / "summary.md").write_text(f"# fgkd ablations\n\n## Variants\n\n{title} ablation table\n")
    Image.new("RGB", (4, 4), (200, 0, 0)).save(root / "figures" / "training_curves.png")
    row = {"dataset": "synthetic", "backbone": "resnet10", "seed": 0, "method": "teacher", "selection": "best",
           "variant": "or", "top1": 0.5, "top5": 0.9}
    pd.DataFrame([{**row, "top1": top1}]).to_parquet(root / "metrics.parquet")
    pd.DataFrame([row, {**row, "variant": "lambda0", "top1": 0.1}]).to_parquet(root / "ablations" / "metrics.parquet")
    for folder in (root, root / "ablations"):
        facts = provenance(digest, [("synthetic", "resnet10", 0)], ["or"], "logits")
        (folder / "provenance.json").write_text(json.dumps({**facts, "commit": "abc", "uncommitted_changes": False, "date": "2026-12-07 00:00 UTC"}))
    return root


def test_publish_results_writes_the_page_whole_with_its_figures_beside_it(tmp_path):
    page = tmp_path / "docs" / "results" / "fair.md"
    other = tmp_path / "docs" / "results" / "synthetic.md"
    other.parent.mkdir(parents=True)
    other.write_text("the default experiment's page\n")
    publish = ["publish-results", "--page", str(page), "--title", "Results: the fair test"]
    for title in ("first", "second"):
        result = CliRunner().invoke(main, [*publish, "--reports", str(_reports(tmp_path / title, title))])
        assert result.exit_code == 0, result.output
    text = page.read_text()
    assert text.startswith(f"# Results: the fair test\n\n{GENERATED_MARK}\n\nMade from: commit abc, config digest "
                           "c0ffee, fgkd ")
    assert "first" not in text and "second main table" in text and "## Variants\n\nsecond ablation table" in text
    assert "Made from: x" not in text  # each summary's own line gives way to the page's one
    assert "![training_curves](fair/training_curves.png)" in text
    assert (tmp_path / "docs/results/fair/training_curves.png").is_file()
    assert other.read_text() == "the default experiment's page\n"  # another page untouched
    assert not (tmp_path / "docs/results/training_curves.png").exists()


@pytest.mark.parametrize("page,culprit", [("notes.md", "not a page written by publish-results"),
                                          ("page.txt", "not a Markdown file")])
def test_publish_results_never_overwrites_a_page_it_did_not_write(tmp_path, page, culprit):
    target = tmp_path / page
    target.write_text("# My own notes\n")
    result = CliRunner().invoke(main, ["publish-results", "--page", str(target),
                                       "--reports", str(_reports(tmp_path / "r", "new"))])
    one_line_error(result, culprit)
    assert target.read_text() == "# My own notes\n"
    assert not (tmp_path / target.stem).exists()


def _mixed_digest(reports):
    facts = json.loads((reports / "provenance.json").read_text())
    (reports / "provenance.json").write_text(json.dumps({**facts, "config_digest": "other"}))


def _mixed_numbers(reports):
    frame = pd.read_parquet(reports / "metrics.parquet")
    frame.assign(top1=0.25).to_parquet(reports / "metrics.parquet")


def _no_provenance(reports):
    (reports / "ablations" / "provenance.json").unlink()


def _provenance_of_another_shape(reports):
    (reports / "provenance.json").write_text("[]")


def _empty_summary(reports):
    (reports / "ablations" / "summary.md").write_text("# fgkd ablations\n")


@pytest.mark.parametrize("mix,culprit", [
    (_mixed_digest, "made from other config digests (other and c0ffee): the tables would mix two runs"),
    (_mixed_numbers, "teacher of synthetic/resnet10/0 (best) has top-1 0.2500 in one and 0.5000 in the other"),
    (_no_provenance, "provenance.json: missing"),
    (_provenance_of_another_shape, "provenance.json: not a record of provenance"),
    (_empty_summary, "summary.md: no tables")])
def test_publish_results_refuses_tables_of_two_runs(tmp_path, mix, culprit):
    """Before: after `ablations`, an `all` under another config was published beside the older run's ablation
    tables."""
    page = tmp_path / "docs" / "page.md"
    reports = _reports(tmp_path / "reports", "new")
    mix(reports)
    result = CliRunner().invoke(main, ["publish-results", "--page", str(page), "--reports", str(reports)])
    one_line_error(result, culprit)
    assert not (tmp_path / "docs").exists()


def test_reports_of_another_combine_rule_and_config_are_not_published_together(results, tmp_path):
    """The issue's case end to end: the ablation report of one run, then the main report of a run with
    ensemble.combine probs (another config digest)."""
    root = results_without_occlusion(results, tmp_path)
    reports = tmp_path / "reports"
    write_ensembles(root, "logits", variants=("or", "lambda0"))
    assert run_report(root, reports / "ablations", "logits", "--ablations", "--config-digest", "aaaa",
                      variants="or,lambda0").exit_code == 0
    write_ensembles(root, "probs")
    assert run_report(root, reports, "probs", "--config-digest", "bbbb").exit_code == 0
    page = tmp_path / "page.md"
    page.write_text(f"# Results\n\n{GENERATED_MARK}\n\nOLD\n")
    result = CliRunner().invoke(main, ["publish-results", "--page", str(page), "--reports", str(reports)])
    one_line_error(result, "made from other config digests (bbbb and aaaa)")
    assert page.read_text() == f"# Results\n\n{GENERATED_MARK}\n\nOLD\n"
    write_ensembles(root, "logits")
    assert run_report(root, reports, "logits", "--config-digest", "aaaa").exit_code == 0  # one run: published
    result = CliRunner().invoke(main, ["publish-results", "--page", str(page), "--reports", str(reports)])
    assert result.exit_code == 0, result.output
    assert "config digest aaaa" in page.read_text() and "OLD" not in page.read_text()


def _publish(reports, page, *extra):
    return CliRunner().invoke(main, ["publish-results", "--reports", str(reports), "--page", str(page), *extra])


@pytest.mark.parametrize("title", ["A\n# B", "caf\udce9", " "])
def test_publish_results_refuses_a_title_that_is_not_one_printable_line(tmp_path, title):
    """A newline would make headings of its own in the page; a surrogate (non-UTF-8 bytes from the shell) cannot be
    written; an empty title is no heading."""
    one_line_error(_publish(_reports(tmp_path / "reports", "t"), tmp_path / "docs" / "page.md", "--title", title),
                   "--title")
    assert not (tmp_path / "docs").exists()


def test_publish_results_names_a_summary_that_is_not_utf8_and_writes_nothing(tmp_path):
    reports = _reports(tmp_path / "reports", "t")
    (reports / "ablations" / "summary.md").write_bytes(b"# fgkd ablations\n\n\xff table\n")
    one_line_error(_publish(reports, tmp_path / "docs" / "page.md"), "ablations/summary.md: cannot be read as UTF-8")
    assert not (tmp_path / "docs").exists()


def test_publish_results_refuses_a_figures_folder_of_other_files_and_a_linked_page(tmp_path):
    reports = _reports(tmp_path / "reports", "t")
    guides = tmp_path / "docs" / "guides"
    guides.mkdir(parents=True)
    (guides / "slurm.md").write_text("a guide\n")
    one_line_error(_publish(reports, tmp_path / "docs" / "guides.md"), f"{guides}: holds more than")
    assert sorted(p.name for p in guides.iterdir()) == ["slurm.md"] and not (tmp_path / "docs/guides.md").exists()
    assert _publish(reports, tmp_path / "docs" / "real.md").exit_code == 0
    (tmp_path / "docs" / "link.md").symlink_to(tmp_path / "docs" / "real.md")
    one_line_error(_publish(reports, tmp_path / "docs" / "link.md"), "a symbolic link")


def test_publish_results_replaces_the_figures_of_the_page_it_rewrites(tmp_path):
    page = tmp_path / "docs" / "page.md"
    first = _reports(tmp_path / "first", "first")
    Image.new("RGB", (4, 4)).save(first / "figures" / "attention_old_resnet10.png")
    assert _publish(first, page).exit_code == 0
    assert (tmp_path / "docs/page/attention_old_resnet10.png").is_file()
    assert _publish(_reports(tmp_path / "second", "second"), page).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "docs/page").iterdir()) == ["training_curves.png"]
    assert "attention_old" not in page.read_text()
