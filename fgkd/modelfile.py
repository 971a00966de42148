"""model.pt, the file `fgkd train` writes and every other command reads (predict, classify, export, attention, part
occlusion, the earlier networks of a student, init_from), and the digests that tie it to its data and inputs.

Everything read back is checked against what it claims to be before a number is computed from it: a file that is not
a model.pt, a missing metadata key, a missing, unexpected, mis-shaped or non-finite weight is one line naming the file
and what to do, never a traceback and never a silently different network."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data.recipes import PREPROCESSING, ImageSizes
from .errors import FgkdError, brief, some

if TYPE_CHECKING:
    from .models import FGVCNet

MODEL_FORMAT = 1
# The metadata a network is built from, and what else every reader relies on (by type). Keys that an earlier fgkd
# did not write (preprocessing, class_names, dataset, best_val_acc, arithmetic, data_digest, earlier,
# history_sha256, content_sha256) are optional and read with .get.
BUILD_KEYS = {"backbone": str, "num_classes": int, "head": str, "head_hidden": int, "attention_stride": int,
              "aux_heads": int}
REQUIRED_KEYS = {**BUILD_KEYS, "stage": str, "config_hash": str, "resize": int, "crop": int, "best_epoch": int,
                 "epochs": int, "config": str}
WEIGHTS = {"best": "state_dict", "last": "last_state_dict"}
# The first bytes of files that are sometimes given for a model by mistake.
ZIP = b"PK\x03\x04"  # how every file of torch.save begins
SIGNATURES = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
              b"%PDF": "a PDF document"}


def cache_note(path: str | Path) -> str:
    """Where a file really is, when it is a symbolic link (Snakemake's between-workflow cache restores outputs as
    links to its entries): deleting the link alone would restore the same entry again."""
    path = Path(path)
    if not path.is_symlink():
        return ""
    return (f" (it is a link to {path.resolve()}, e.g. an entry of Snakemake's output cache, shared by every "
            "workflow that uses it: delete that entry too, or the next run restores it again)")


def _damaged(path: Path, what: str) -> FgkdError:
    return FgkdError(f"{path}: {what}; delete it and retrain that stage{cache_note(path)}")


def _not_a_model(path: Path, what: str) -> FgkdError:
    return FgkdError(f"{path}: {what}, not a model.pt written by `fgkd train`; give the model.pt of a trained stage "
                     "(results/<data set>/<backbone>/seed<S>/.../model.pt)")


def read_model_file(path: str | Path) -> dict:
    """The saved dictionary of a model.pt, checked: its container, every metadata key a reader relies on (type and
    meaning), and that its weights are sets of named tensors."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise FgkdError(f"{path}: a link to {os.readlink(path)}, which is not there (a deleted cache entry?); delete "
                        "the link and rerun")
    if not path.is_file():
        raise FgkdError(f"{path}: no such model; train that stage first")
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError as err:
        raise FgkdError(f"{path}: cannot be read ({err.strerror})") from None
    kind = next((name for signature, name in SIGNATURES.items() if head.startswith(signature)), None)
    if kind:
        raise _not_a_model(path, kind)
    if not head.startswith(ZIP):  # torch.save writes a zip archive; an older torch or pickle.dump write pickles
        raise _not_a_model(path, "a Python pickle" if head[:1] == b"\x80" else "not a PyTorch file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of many kinds; torch's hint about weights_only misleads here
        if "weights_only" in str(err).lower():
            raise _not_a_model(path, "a PyTorch file holding Python objects other than tensors and plain values "
                                     "(fgkd never loads those: they can run code)") from None
        raise _damaged(path, f"a damaged or truncated PyTorch file ({brief(err)})") from None
    if not isinstance(saved, dict) or type(saved.get("format")) is not int or saved["format"] != MODEL_FORMAT:
        raise _not_a_model(path, f"a PyTorch file of another kind (no fgkd model format {MODEL_FORMAT})")
    meta = saved.get("metadata")
    if not isinstance(meta, dict):
        raise _damaged(path, "no metadata")
    problem = _metadata_problem(meta)
    if problem:
        raise _damaged(path, problem)
    for key in WEIGHTS.values():
        weights = saved.get(key)
        if not (isinstance(weights, dict) and all(isinstance(k, str) and _plain_tensor(v)
                                                  for k, v in weights.items())):
            raise _damaged(path, f"its {key} is not a set of named dense tensors")
    return saved


def _plain_tensor(value) -> bool:
    """A tensor as `fgkd train` saves one: dense, with its values in memory (not sparse, meta, quantized or a
    conjugate view, whose bytes content_digest could not read as they are)."""
    return (isinstance(value, torch.Tensor) and value.layout == torch.strided and not value.is_meta
            and not value.is_quantized and not value.is_conj())


def _metadata_problem(meta: dict) -> str | None:
    """What is wrong with a model.pt's metadata, if anything: what `fgkd train` writes, in type and meaning (a crop
    larger than the resize, a class list of another length or a best epoch outside the run would be used as is)."""
    try:
        json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError):
        return "metadata holds values other than text, numbers, lists and text-keyed tables"
    for key, kind in REQUIRED_KEYS.items():
        if key not in meta:
            return f"no metadata key {key!r} (every model.pt of `fgkd train` has one)"
        if type(meta[key]) is not kind:
            return f"metadata {key} is {meta[key]!r}, not of type {kind.__name__}"
    for key in ("num_classes", "head_hidden", "resize", "crop", "epochs"):
        if meta[key] < 1:
            return f"metadata {key} is {meta[key]}, not a positive number"
    if meta["aux_heads"] < 0:
        return f"metadata aux_heads is {meta['aux_heads']}, below 0"
    if meta["crop"] > meta["resize"]:
        return f"metadata crop {meta['crop']} exceeds resize {meta['resize']}"
    if not 1 <= meta["best_epoch"] <= meta["epochs"]:
        return f"metadata best_epoch {meta['best_epoch']} is outside the run's epochs 1..{meta['epochs']}"
    try:
        config = json.loads(meta["config"])
    except ValueError:
        config = None
    if not isinstance(config, dict):
        return "metadata config is not the JSON of the run's options"
    preprocessing = meta.get("preprocessing", "imagenet")
    if preprocessing not in PREPROCESSING:
        return f"metadata preprocessing is {preprocessing!r}, not one of {', '.join(PREPROCESSING)}"
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == meta["num_classes"]
                                  and all(isinstance(n, str) for n in names)):
        return f"metadata class_names is not a list of {meta['num_classes']} names"
    accuracy = meta.get("best_val_acc")
    if accuracy is not None and not (type(accuracy) in (int, float) and (math.isnan(accuracy) or 0 <= accuracy <= 1)):
        return f"metadata best_val_acc is {accuracy!r}, not a share between 0 and 1"
    earlier = meta.get("earlier", [])
    if not (isinstance(earlier, list) and all(isinstance(e, dict) and isinstance(e.get("sha256"), str)
                                               and isinstance(e.get("stage"), str) for e in earlier)):
        return "metadata earlier is not a list of the earlier networks (stage, config_hash, sha256)"
    start = meta.get("start")
    if start is not None and not (isinstance(start, dict) and {"source", "file", "sha256"} <= start.keys()):
        return "metadata start is not a record of the start weights (source, file, sha256)"
    return None


def load_model(path: str | Path, num_classes: int | None = None, device: torch.device | str = "cpu",
               which: str = "best", main_only: bool = False) -> tuple[FGVCNet, dict]:
    """A trained network and its metadata; refuses files of another format or class count, and weights that do not
    fit the network the metadata describes. ``main_only``: without the auxiliary heads of an aux-KD student (what a
    deployment runs)."""
    from .models import FGVCNet  # torchvision: not for the commands that only read a model.pt (fgkd verify)

    path = Path(path)
    saved = read_model_file(path)
    meta = saved["metadata"]
    if num_classes is not None:
        check_classes(path, meta, num_classes)
    weights = saved[WEIGHTS[which]]
    if main_only:
        weights = {k: v for k, v in weights.items() if not k.startswith("aux.")}
    # Built on the meta device, then given the saved tensors: initialising weights that are overwritten at once cost
    # seconds per network (VGG-16's unused 120M-parameter torchvision classifier), in every job that loads one.
    def build():
        return FGVCNet(meta["backbone"], meta["num_classes"], meta["head"], meta["head_hidden"],
                       meta["attention_stride"], 0 if main_only else meta["aux_heads"], image_size=meta["crop"])

    try:
        with torch.device("meta"):
            model = build()
    except FgkdError as err:
        raise _damaged(path, f"its metadata describes no network fgkd can build ({err})") from None
    check_weights(path, model.state_dict(), weights)
    model.load_state_dict(weights, assign=True)
    if any(buffer.is_meta for buffer in model.buffers()):
        # Buffers a constructor computes and the file does not hold (Swin's relative-position index): built for real.
        model = build()
        model.load_state_dict(weights)
    return model.to(device).eval(), meta


def check_weights(path: Path, expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    """Every parameter and buffer the network has, of its shape and type, no other, all finite."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} {tuple(weights[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in expected if k in weights and weights[k].shape != expected[k].shape]
    types = [f"{k} {weights[k].dtype} (expected {expected[k].dtype})"
             for k in expected if k in weights and weights[k].dtype != expected[k].dtype]
    problems = [f"{what}: {some(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes), ("wrong type", types))
                if keys]
    if problems:
        raise _damaged(path, f"its weights do not fit the network its metadata describes ({'; '.join(problems)})")
    broken = non_finite_weights(weights)
    if broken:
        raise FgkdError(f"{path}: non-finite weights ({some(broken)}); the model is broken, retrain that stage"
                        f"{cache_note(path)}")


def non_finite_weights(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors (parameters and buffers) holding a NaN or an infinity."""
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    if not floats:
        return []
    flags = torch.stack([torch.isfinite(v).all() for v in floats.values()]).cpu()  # one device sync
    return [k for k, finite in zip(floats, flags) if not finite]


def check_classes(path: str | Path, meta: dict, num_classes: int) -> None:
    if meta["num_classes"] != num_classes:
        raise FgkdError(f"{path}: trained for {meta['num_classes']} classes, the data set has {num_classes}; "
                        "it belongs to another data set, retrain it")


def input_sizes(meta: dict) -> ImageSizes:
    """The inputs a model was trained on (a model.pt of an earlier fgkd has no preprocessing key: imagenet's)."""
    return ImageSizes(meta["resize"], meta["crop"], meta.get("preprocessing", "imagenet"))


def describe_inputs(sizes: ImageSizes) -> str:
    return f"preprocessing {sizes.preprocessing}, resize {sizes.resize}, crop {sizes.crop}"


def shared_input_sizes(paths: list[str | Path], metas: list[dict]) -> ImageSizes:
    """The one input recipe of several models shown the same images (attention maps, part occlusion)."""
    first = input_sizes(metas[0])
    for path, meta in zip(paths[1:], metas[1:]):
        if input_sizes(meta) != first:
            raise FgkdError(f"{path}: trained on {describe_inputs(input_sizes(meta))}, {paths[0]} on "
                            f"{describe_inputs(first)}; give models trained on the same inputs")
    return first


def content_digest(saved: dict) -> str:
    """sha256 of a model.pt's metadata (but this digest) and of every tensor of its weights (name, type, shape, bytes):
    recorded by `fgkd train` as metadata content_sha256, so that `fgkd verify` proves a file whole and unchanged
    without building its network."""
    meta = {key: value for key, value in saved["metadata"].items() if key != "content_sha256"}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for key in WEIGHTS.values():
        for name, tensor in sorted(saved[key].items()):
            digest.update(f"\n{key}/{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: an earlier model retrained on other data keeps its config hash, not its bytes."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()[:16]
