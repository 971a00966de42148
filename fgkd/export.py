"""A trained network for deployment: the main head's logits as TorchScript or ONNX, and a model card beside it.

The export is checked before it is put in place: the written file, run by the runtime that deploys it (torch.jit.load,
onnxruntime on CPU), must give the network's logits on a test batch, or nothing is written."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_path, refuse_to_overwrite_inputs, require_utf8_name
from .data.recipes import PREPROCESSING
from .ensemble import read_logits
from .errors import FgkdError
from .metrics import topk_accuracy
from .models import FGVCNet
from .modelfile import file_digest, input_sizes, load_model

INPUT, OUTPUT = "images", "logits"  # the exported graph's input and output names
TOLERANCE = 1e-4  # largest difference to the network's logits, relative to the largest logit (at least 1)
ONNX_OPSET = 20  # fixed, so that a newer torch writes the same kind of file (20: torch 2.14's default)


def card_path(out: str | Path) -> Path:
    """The model card of an exported file: its name + .json, beside it."""
    return Path(f"{out}.json")


def export(model_path: str | Path, export_format: str, out: str | Path) -> tuple[Path, Path]:
    """Write the network of ``model_path`` (best-on-validation weights, main head) to ``out`` in ``export_format``,
    and its model card; returns both paths."""
    if export_format not in WRITERS:
        raise FgkdError(f"format {export_format!r} is not one of {', '.join(WRITERS)}")
    out, card = Path(out), card_path(out)
    for target in (out, card):
        require_utf8_name(target)
        refuse_to_overwrite_inputs(target, [model_path])
    network, meta = load_model(model_path, main_only=True)
    crop = input_sizes(meta).crop
    example = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = network(example).numpy()
    description = model_card(model_path, meta, network, export_format, out)
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():  # deprecation notes of torch.jit and the exporter's internals: not the user's
            warnings.simplefilter("ignore")
            exported = WRITERS[export_format](network, example, tmp)
        difference = float(np.abs(exported - expected).max())
        if difference > TOLERANCE * max(1.0, float(np.abs(expected).max())):
            raise FgkdError(f"{out}: the exported network's logits differ from the model's by {difference:.3g}; "
                            f"nothing written. Try the other --format and report this as a bug")
        description["check"] = {"inputs": f"{len(example)} seeded random input tensors",
                                "max_abs_logit_difference": difference}
        with atomic_path(card) as card_tmp:
            card_tmp.write_text(json.dumps(description, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return out, card


def _torchscript(network: FGVCNet, example: torch.Tensor, target: Path) -> np.ndarray:
    """Trace (the network has no data-dependent control flow), save, and run the saved file back."""
    with torch.no_grad():
        torch.jit.trace(network, example).save(str(target))
        return torch.jit.load(str(target)).eval()(example).numpy()


def _onnx(network: FGVCNet, example: torch.Tensor, target: Path) -> np.ndarray:
    """torch.onnx's exporter (torch.export based), any batch size, one self-contained file; run back on onnxruntime's
    CPU provider."""
    import onnxruntime

    torch.onnx.export(network, (example,), target, input_names=[INPUT], output_names=[OUTPUT],
                      opset_version=ONNX_OPSET, dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}},
                      external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: example.numpy()})[0]


WRITERS = {"torchscript": _torchscript, "onnx": _onnx}  # the choices of `fgkd export --format`


def model_card(model_path: str | Path, meta: dict, network: FGVCNet, export_format: str, out: Path) -> dict:
    """What a user of the exported file needs: classes, the exact preprocessing, input and output, where it came
    from and how well it did. Keys a model.pt of an earlier fgkd lacks are null."""
    sizes = input_sizes(meta)
    recipe = PREPROCESSING[sizes.preprocessing]
    classes = meta["num_classes"]
    return {
        "file": out.name,
        "format": export_format,
        "dataset": {"name": meta.get("dataset"), "digest": meta.get("data_digest"), "classes": classes},
        "class_names": meta.get("class_names"),
        "input": {"name": INPUT, "shape": ["batch", 3, sizes.crop, sizes.crop], "dtype": "float32",
                  "channels": "RGB"},
        "output": {"name": OUTPUT, "shape": ["batch", classes],
                   "meaning": "logits of the main head; softmax gives the class probabilities"},
        "preprocessing": {
            "name": sizes.preprocessing,
            "resize": sizes.resize,
            "resize_mode": "square: resize x resize, aspect not kept" if recipe.square
            else "short side to resize, aspect kept",
            "interpolation": "bilinear, antialiased, " + ("on the PIL image" if recipe.on_pil else "on uint8 pixels"),
            "crop": sizes.crop,
            "crop_mode": "centre",
            "scale": "pixel values / 255",
            "mean": list(recipe.mean),
            "std": list(recipe.std),
        },
        "network": {"backbone": meta["backbone"], "head": meta["head"], "head_hidden": meta["head_hidden"],
                    "stage": meta["stage"], "parameters": sum(p.numel() for p in network.parameters()),
                    "auxiliary_heads_left_out": meta["aux_heads"], "weights": "best validation epoch"},
        "metrics": run_metrics(model_path, meta),
        "identity": {"config_digest": meta["config_hash"], "model_file": str(model_path),
                     "model_sha256": file_digest(model_path)},
        "training_config": json.loads(meta["config"]),
        "trained_with": meta.get("arithmetic"),  # None: a model.pt of an earlier fgkd
        "software": {"torch": torch.__version__, **({"onnx_opset": ONNX_OPSET} if export_format == "onnx" else {})},
    }


def run_metrics(model_path: str | Path, meta: dict) -> dict:
    """Validation top-1 of the best epoch (the exported weights): from model.pt, else from the run's history.parquet.
    Test top-1/top-5: from the run's logits.parquet (`fgkd predict` of these weights), when it is not older than
    model.pt and has its classes. Null where the run has no such number."""
    run = Path(model_path).parent
    val, val_from = meta.get("best_val_acc"), "model.pt"
    if val is None:
        val, val_from = _history_val(run / "history.parquet", meta["best_epoch"]), "history.parquet"
    if val is None or not math.isfinite(val):
        val, val_from = None, None
    metrics = {"best_epoch": meta["best_epoch"], "epochs": meta["epochs"], "val_top1": val, "val_top1_from": val_from,
               "test_top1": None, "test_top5": None, "test_images": None, "test_from": None}
    logits_file = run / "logits.parquet"
    if logits_file.is_file() and logits_file.stat().st_mtime >= Path(model_path).stat().st_mtime:
        try:
            _, labels, logits = read_logits(logits_file)
        except FgkdError:
            return metrics
        if logits.shape[1] == meta["num_classes"]:
            metrics.update(test_top1=topk_accuracy(logits, labels, 1), test_top5=topk_accuracy(logits, labels, 5),
                           test_images=len(labels), test_from=logits_file.name)
    return metrics


def _history_val(path: Path, epoch: int) -> float | None:
    try:
        history = pd.read_parquet(path, columns=["epoch", "val_acc"])
    except (OSError, ValueError):  # missing, damaged, or without these columns (pyarrow's errors are ValueErrors)
        return None
    rows = history.loc[history["epoch"] == epoch, "val_acc"]
    return float(rows.iloc[0]) if len(rows) else None
