"""Test-set logits of a trained model, and ensembles computed from those cached logits alone."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import refuse_to_overwrite_inputs, require_utf8_name, write_parquet
from .data.dataset import load_split, make_loader
from .data.manifest import MANIFEST
from .errors import FgkdError, brief
from .metrics import check_combine, ensemble_scores, topk_accuracy
from .config import TrainConfig
from .modelfile import check_classes, input_sizes, load_model
from .train import evaluate, select_device

ALL_SUBSETS_UP_TO = 6  # members; beyond that only the prefixes (2^n grows fast)


def predict(model_path: str | Path, data: str | Path, out: str | Path, which: str = "best", batch_size: int = 64,
            workers: int = 0, device: str = "auto", out_last: str | Path | None = None) -> Path:
    """One pass over the test split: out is a Parquet file with image_id, label, logit_000... ``out_last``: also
    the last epoch's logits (``which`` must be best), in the same process: the workflow's predict job loads torch,
    the data and the model file once for both."""
    outputs = {which: out}
    if out_last is not None:
        if which != "best" or Path(out_last).resolve() == Path(out).resolve():
            raise FgkdError(f"--out-last {out_last}: the last epoch's logits go beside the best epoch's "
                            "(--which best) and need a file of their own")
        outputs["last"] = out_last
    for option, path in zip(("--out", "--out-last"), outputs.values()):
        require_utf8_name(path)
        refuse_to_overwrite_inputs(path, [model_path, Path(data) / MANIFEST], option)
    config = TrainConfig(device=device, workers=workers)
    target = select_device(config)
    # Both sets of weights checked before either file is written: never the best epoch's logits alone.
    models = {weights: load_model(model_path, None, target, weights) for weights in outputs}
    for weights, path in outputs.items():
        model, meta = models[weights]
        test_set = load_split(data, "test", input_sizes(meta))
        check_classes(model_path, meta, test_set.num_classes)
        if not len(test_set):
            raise FgkdError(f"{data}: its manifest has no test images, and predict scores the test split; "
                            "prepare a data set with a test split")
        result = evaluate(model, make_loader(test_set, batch_size, workers), target, config)
        frame = pd.DataFrame(result["logits"], columns=[f"logit_{c:03d}" for c in range(result["logits"].shape[1])])
        frame.insert(0, "label", result["labels"].astype("int64"))
        frame.insert(0, "image_id", result["image_ids"].astype("int64"))
        write_parquet(frame, path)
    return Path(out)


def read_logits(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image_ids, labels, logits) of a predict output: exactly image_id, label, logit_000 ... logit_{C-1},
    integer labels in [0, C), finite logits; anything else would be scored silently wrong."""
    path = Path(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as err:
        raise FgkdError(f"{path}: unreadable logits file ({brief(err)}); rerun `fgkd predict`") from None
    columns = [c for c in frame.columns if c not in ("image_id", "label")]
    expected = [f"logit_{c:03d}" for c in range(len(columns))]
    if not {"image_id", "label"} <= set(frame.columns) or not columns:
        raise FgkdError(f"{path}: not a logits file (needs image_id, label, logit_*); rerun `fgkd predict`")
    if columns != expected:
        culprit = next(c for c, e in zip(columns, expected) if c != e)
        raise FgkdError(f"{path}: unexpected column {culprit!r} (a logits file has image_id, label, logit_000 ... "
                        f"{expected[-1]} in order); rerun `fgkd predict`")
    labels = frame["label"].to_numpy()
    if not np.issubdtype(labels.dtype, np.integer):
        raise FgkdError(f"{path}: labels of type {labels.dtype}, not integers; rerun `fgkd predict`")
    outside = (labels < 0) | (labels >= len(columns))
    if outside.any():
        raise FgkdError(f"{path}: label {labels[outside][0]} (image_id {frame['image_id'][outside].iloc[0]}) is "
                        f"outside the {len(columns)} classes of its logits; rerun `fgkd predict` with the model "
                        "of this data set")
    logits = frame[columns].to_numpy(np.float32)
    if not np.isfinite(logits).all():
        raise FgkdError(f"{path}: non-finite logits; the model is broken, retrain it and rerun `fgkd predict`")
    return frame["image_id"].to_numpy(), labels, logits


def ensemble(logit_files: list[str | Path], names: list[str], combine: str = "logits",
             all_subsets: bool | None = None) -> pd.DataFrame:
    """Accuracy of every prefix (first member, first two, ...) and, for few members, of every subset.

    ``combine`` (see fgkd.metrics.ensemble_scores): ``logits``, the sum of logits (the official code), or
    ``probs``, the mean of softmax probabilities.
    """
    check_combine(combine)
    if len(names) != len(logit_files) or not names:
        raise FgkdError("give one name per logits file, and at least one file")
    loaded = [read_logits(p) for p in logit_files]
    ids, labels, first = loaded[0]
    for path, (other_ids, other_labels, logits) in zip(logit_files[1:], loaded[1:]):
        if not (np.array_equal(ids, other_ids) and np.array_equal(labels, other_labels)):
            raise FgkdError(f"{path}: its images or labels differ from {logit_files[0]}; predict all members on the same data")
        if logits.shape[1] != first.shape[1]:
            raise FgkdError(f"{path}: {logits.shape[1]} classes, {logit_files[0]} has {first.shape[1]}; "
                            "predict all members with models of the same data set")
    n = len(names)
    if all_subsets is None:
        all_subsets = n <= ALL_SUBSETS_UP_TO
    prefixes = [tuple(range(k)) for k in range(1, n + 1)]
    subsets = [s for k in range(1, n + 1) for s in itertools.combinations(range(n), k)] if all_subsets else []
    chosen = list(dict.fromkeys(prefixes + subsets))
    rows = []
    for members, combined in zip(chosen, ensemble_scores([logits for _, _, logits in loaded], combine, chosen)):
        rows.append({"members": "+".join(names[i] for i in members), "n_members": len(members),
                     "prefix": members in prefixes, "combine": combine,
                     "top1": topk_accuracy(combined, labels, 1), "top5": topk_accuracy(combined, labels, 5)})
    return pd.DataFrame(rows)
