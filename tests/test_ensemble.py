"""Ensembles from cached logits: top-k scoring against a full sort, ties, and bad logits files."""

import numpy as np
import pytest

from fgkd.ensemble import ensemble
from fgkd.errors import FgkdError
from fgkd.metrics import topk_accuracy
from artifacts import ranked_hits, write_logits


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
