"""Ensembles from cached logits: top-k scoring against a full sort, ties, combine rules, and bad logits files."""

import numpy as np
import pandas as pd
import pytest
import scipy.special
from click.testing import CliRunner

from fgkd.cli import main
from fgkd.ensemble import ensemble
from fgkd.errors import FgkdError
from fgkd.metrics import topk_accuracy
from artifacts import one_line_error, ranked_hits, write_logits

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("k", [1, 2, 5, 7])
def test_topk_matches_a_full_sort(k):
    rng = np.random.default_rng(k)
    scores = rng.standard_normal((500, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 500)
    ranked = np.argsort(-scores, axis=1)[:, :k]
    assert topk_accuracy(scores, labels, k) == pytest.approx((ranked == labels[:, None]).any(axis=1).mean())


def test_constant_scores_are_never_a_hit_below_k_equal_to_the_classes():
    scores, labels = np.zeros((10, 5), dtype=np.float32), np.arange(10) % 5
    assert [topk_accuracy(scores, labels, k) for k in range(1, 6)] == [0, 0, 0, 0, 1]


def test_ties_count_against_the_true_class():
    scores = np.array([[1, 1, 0], [2, 1, 1], [0, 3, 3], [5, 1, 1]], dtype=np.float32)
    labels = np.array([0, 1, 0, 0])
    # row 0: tied with one class; row 1: one above, one tied; row 2: two above; row 3: strictly first.
    assert [topk_accuracy(scores, labels, k) for k in (1, 2, 3)] == [1 / 4, 2 / 4, 1]


@pytest.mark.parametrize("k", [1, 2, 5, 7])
def test_topk_with_many_ties_matches_a_full_sort_that_ranks_the_truth_last_among_equals(k):
    rng = np.random.default_rng(k)
    scores = np.round(rng.standard_normal((500, 7))).astype(np.float32)  # about 5 distinct values per row
    labels = rng.integers(0, 7, 500)
    assert topk_accuracy(scores, labels, k) == ranked_hits(scores, labels, k).mean()


def test_every_subset_is_scored_from_the_summed_logits(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    members = [rng.standard_normal((200, 5)).astype(np.float32) for _ in range(3)]
    files = [write_logits(tmp_path / f"m{i}.parquet", m, labels) for i, m in enumerate(members)]
    table = ensemble(files, ["a", "b", "c"]).set_index("members")
    assert len(table) == 7 and table["prefix"].sum() == 3
    expected = ((members[0] + members[2]).argmax(1) == labels).mean()
    assert table.loc["a+c", "top1"] == pytest.approx(expected)


def test_non_finite_logits_are_refused_by_name(tmp_path):
    logits = np.zeros((4, 3), dtype=np.float32)
    logits[2, 1] = np.nan
    bad = write_logits(tmp_path / "bad.parquet", logits, np.zeros(4, dtype=int))
    good = write_logits(tmp_path / "good.parquet", np.ones((4, 3), dtype=np.float32), np.zeros(4, dtype=int))
    with pytest.raises(FgkdError, match="bad.parquet: non-finite logits"):
        ensemble([good, bad], ["good", "bad"])


def test_probs_is_the_mean_of_softmax_and_disagrees_with_summed_logits_where_built_to(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 100)
    a, b = (rng.standard_normal((100, 4)).astype(np.float32) for _ in range(2))
    a[:20], b[:20], labels[:20] = [3, 0, 0, 0], [0, 2.5, -100, -100], 1  # logits sum: class 0; softmax mean: class 1
    files = [write_logits(tmp_path / "a.parquet", a, labels), write_logits(tmp_path / "b.parquet", b, labels)]
    rows = {rule: ensemble(files, ["a", "b"], rule).set_index("members").loc["a+b"] for rule in ("logits", "probs")}
    mean_probs = np.mean([scipy.special.softmax(m.astype(np.float64), axis=1) for m in (a, b)], axis=0)
    assert rows["probs"]["top1"] == ranked_hits(mean_probs, labels, 1).mean()
    assert rows["logits"]["top1"] == ranked_hits(a + b, labels, 1).mean()
    assert ranked_hits(mean_probs, labels, 1)[:20].all() and not ranked_hits(a + b, labels, 1)[:20].any()
    assert rows["probs"]["top1"] != rows["logits"]["top1"]
    assert (rows["probs"]["combine"], rows["logits"]["combine"]) == ("probs", "logits")


def bad_logits(tmp_path, fault):
    """A logits file with one fault; returns (path, text the error must contain)."""
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((12, 4)).astype(np.float32), np.arange(12) % 4
    path = write_logits(tmp_path / "bad" / "logits.parquet", logits, labels)
    frame = pd.read_parquet(path)
    if fault == "extra column":
        frame.insert(3, "confidence", 1.0)
        culprit = "'confidence'"
    elif fault == "label = classes":
        frame.loc[5, "label"] = 4
        culprit = "label 4"
    elif fault == "negative label":
        frame.loc[7, "label"] = -1
        culprit = "label -1"
    elif fault == "columns out of order":
        frame = frame[["image_id", "label", "logit_001", "logit_000", "logit_002", "logit_003"]]
        culprit = "'logit_001'"
    else:  # other class count than the first member
        frame = frame.drop(columns="logit_003")
        culprit = "3 classes"
    frame.to_parquet(path)
    return path, culprit


@pytest.mark.parametrize("fault", ["extra column", "label = classes", "negative label", "columns out of order",
                                   "other class count"])
def test_a_bad_logits_file_is_one_line_naming_it_and_no_output(tmp_path, fault):
    rng = np.random.default_rng(1)
    good = write_logits(tmp_path / "good" / "logits.parquet", rng.standard_normal((12, 4)).astype(np.float32),
                        np.arange(12) % 4)
    bad, culprit = bad_logits(tmp_path, fault)
    out = tmp_path / "ensemble.parquet"
    inputs = [good, bad] if fault == "other class count" else [bad]  # alone, nothing else can be blamed
    result = CliRunner().invoke(main, ["ensemble", *map(str, inputs), "--out", str(out)])
    one_line_error(result, str(bad), culprit)
    assert not out.exists()


@pytest.mark.parametrize("spelling", ["same", "dot-dot", "symlinked folder"])
def test_ensemble_out_equal_to_an_input_is_refused_and_the_input_kept(tmp_path, spelling):
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 4
    files = [write_logits(tmp_path / name / "logits.parquet", rng.standard_normal((12, 4)).astype(np.float32), labels)
             for name in ("teacher", "student_1")]
    before = files[1].read_bytes()
    (tmp_path / "link").symlink_to(tmp_path / "student_1")
    out = {"same": files[1], "dot-dot": tmp_path / "teacher" / ".." / "student_1" / "logits.parquet",
           "symlinked folder": tmp_path / "link" / "logits.parquet"}[spelling]
    result = CliRunner().invoke(main, ["ensemble", *map(str, files), "--out", str(out)])
    one_line_error(result, str(out), "input")
    assert files[1].read_bytes() == before


def test_a_nan_score_is_never_a_hit_and_softmax_does_not_underflow_into_ties():
    from fgkd.metrics import combine_scores, topk_accuracy

    assert topk_accuracy(np.full((3, 4), np.nan, dtype=np.float32), np.array([0, 1, 2]), 1) == 0.0
    # Far-apart logits: in float32, exp(-110) and exp(-120) are both exactly 0 and would tie classes 2..6.
    a = np.array([[0, -50, -120, -130, -140, -150, -160]], dtype=np.float32)
    b = np.array([[0, -60, -110, -200, -200, -200, -200]], dtype=np.float32)
    probs = combine_scores([a, b], "probs")
    assert topk_accuracy(probs, np.array([2]), 3) == 1.0  # class 2 is third by the mean of softmax


def test_softmax_of_rows_far_apart_is_each_rows_own():
    """Each row is shifted by its own maximum: large logits do not overflow, and a row far below another does not
    underflow to 0 / 0."""
    from fgkd.metrics import softmax

    logits = np.array([[1000.0, 1001.0], [0.0, 1.0], [-1000.0, -999.0]], dtype=np.float32)
    expected = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    np.testing.assert_allclose(softmax(logits), np.tile(expected, (3, 1)), rtol=1e-12)


def test_six_members_are_scored_in_every_subset_and_seven_in_prefixes_only(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 20)
    files = [write_logits(tmp_path / f"m{i}.parquet", rng.standard_normal((20, 3)).astype(np.float32), labels)
             for i in range(7)]
    names = [f"n{i}" for i in range(7)]
    assert len(ensemble(files[:6], names[:6])) == 2**6 - 1
    assert len(ensemble(files, names)) == 7


@pytest.mark.parametrize("differs", ["labels", "image_ids"])
def test_a_member_of_other_images_or_labels_is_named_among_three(tmp_path, differs):
    """The second of three members differs in its labels alone, or its image ids alone: refused, naming it."""
    rng = np.random.default_rng(3)
    labels = np.arange(12) % 4
    files = [write_logits(tmp_path / f"m{i}" / "logits.parquet", rng.standard_normal((12, 4)).astype(np.float32),
                          labels) for i in range(3)]
    frame = pd.read_parquet(files[1])
    if differs == "labels":
        frame["label"] = (frame["label"] + 1) % 4
    else:
        frame["image_id"] = frame["image_id"] + 100
    frame.to_parquet(files[1])
    with pytest.raises(FgkdError, match=f"^{files[1]}: its images or labels differ"):
        ensemble(files, ["a", "b", "c"])


def test_names_not_one_per_file_and_a_file_without_labels_are_refused(tmp_path):
    rng = np.random.default_rng(4)
    files = [write_logits(tmp_path / f"m{i}.parquet", rng.standard_normal((8, 4)).astype(np.float32),
                          np.arange(8) % 4) for i in range(2)]
    with pytest.raises(FgkdError, match="one name per logits file"):
        ensemble(files, ["a"])
    pd.read_parquet(files[1]).drop(columns="label").to_parquet(files[1])
    with pytest.raises(FgkdError, match="not a logits file"):
        ensemble(files, ["a", "b"])
