"""Ensembles from cached logits: top-k scoring against a full sort, and bad logits files."""

import numpy as np
import pandas as pd
import pytest

from fgkd.ensemble import ensemble, topk_accuracy
from fgkd.errors import FgkdError


def write_logits(path, logits, labels):
    frame = pd.DataFrame(logits, columns=[f"logit_{c:03d}" for c in range(logits.shape[1])])
    frame.insert(0, "label", labels)
    frame.insert(0, "image_id", np.arange(len(labels)))
    frame.to_parquet(path)
    return path


@pytest.mark.parametrize("k", [1, 2, 5, 7])
def test_topk_matches_a_full_sort(k):
    rng = np.random.default_rng(k)
    scores = rng.standard_normal((500, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 500)
    ranked = np.argsort(-scores, axis=1)[:, :k]
    assert topk_accuracy(scores, labels, k) == pytest.approx((ranked == labels[:, None]).any(axis=1).mean())


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
