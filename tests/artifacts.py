"""Files as fgkd's commands write them (logits) and an independent top-k."""

import numpy as np
import pandas as pd


def write_logits(path, logits, labels):
    """A logits file as `fgkd predict` writes it."""
    frame = pd.DataFrame(logits, columns=[f"logit_{c:03d}" for c in range(logits.shape[1])])
    frame.insert(0, "label", labels)
    frame.insert(0, "image_id", np.arange(len(labels)) + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    return path


def ranked_hits(scores, labels, k):
    """Top-k hits by a full sort in which the true class comes after every class tied with it."""
    is_true = np.arange(scores.shape[1])[None, :] == labels[:, None]
    order = np.lexsort((is_true, -scores), axis=-1)
    return (order[:, :k] == labels[:, None]).any(axis=1)
