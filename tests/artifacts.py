"""Files as fgkd's commands write them (model.pt, logits), an independent top-k, and the one-line CLI check."""

import numpy as np
import pandas as pd
import torch

from fgkd.models import FGVCNet
from fgkd.modelfile import MODEL_FORMAT


def save_model(path, num_classes, aux_heads=0, bias=None, arithmetic=None):
    """A model.pt as `fgkd train` writes it, of an untrained resnet10; ``bias`` makes its logits that constant,
    ``arithmetic`` is its record of how it was trained (none: as an earlier fgkd wrote it).
    Returns (path, number of parameters)."""
    torch.manual_seed(0)
    model = FGVCNet("resnet10", num_classes, "official", 32, 8, aux_heads)
    if bias is not None:
        last = model.head.classifier[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor(bias))
    metadata = {"backbone": "resnet10", "num_classes": num_classes, "head": "official", "head_hidden": 32,
                "attention_stride": 8, "aux_heads": aux_heads, "stage": path.parent.name, "config_hash": "0" * 16,
                "resize": 36, "crop": 32, "best_epoch": 1, "epochs": 1, "processes": 1, "config": "{}"}
    if arithmetic is not None:
        metadata["arithmetic"] = arithmetic
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": MODEL_FORMAT, "metadata": metadata, "state_dict": model.state_dict(),
                "last_state_dict": model.state_dict()}, path)
    return path, sum(p.numel() for p in model.parameters())


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


def one_line_error(result, *culprits, exit_code=1):
    """The CLI failed with one `Error:` line naming every culprit, and no exception escaped."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and all(c in errors[0] for c in culprits), result.output
    assert "Traceback" not in result.output
    return errors[0]
