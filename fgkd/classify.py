"""A user's own images through a trained model or an ensemble: top-k classes with probabilities, and the image with
the networks' attention on top.

Images are decoded and transformed exactly as `fgkd predict` does with the data set's (decode_rgb and the test
transform of the recipe saved in model.pt), so a prepared image gets the very probabilities of predict's logits."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_path
from .attention import attention_heat, blend
from .data.dataset import centre_crop_box, decode_rgb, fgvc_transform
from .data.recipes import ImageSizes
from .data.images import DECODE_ERRORS
from .errors import DataError, FgkdError, brief
from .losses import attention_energy
from .metrics import combined_probabilities
from .models import FGVCNet
from .config import TrainConfig
from .modelfile import load_model, shared_input_sizes
from .train import select_device

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
BATCH = 32  # images per forward pass


@dataclass(frozen=True)
class Ensemble:
    """One or several trained networks that see the same inputs and name the same classes."""

    paths: list[Path]
    networks: list[FGVCNet]
    sizes: ImageSizes
    class_names: list[str] | None  # None: every model.pt was written by an fgkd that did not save them
    device: torch.device


@dataclass(frozen=True)
class Prediction:
    rank: int
    class_index: int
    class_name: str | None
    probability: float


@dataclass(frozen=True)
class Result:
    """One image: its top-k predictions, or why it could not be read."""

    image: Path
    predictions: list[Prediction]
    error: str | None = None


def load_ensemble(model_paths: list[str | Path], device: str = "auto") -> Ensemble:
    """The networks of ``model_paths``; models of other inputs or other classes cannot be combined."""
    target = select_device(TrainConfig(device=device))
    paths = [Path(p) for p in model_paths]
    loaded = [load_model(p, None, target) for p in paths]
    metas = [meta for _, meta in loaded]
    sizes = shared_input_sizes(paths, metas)
    named = [(path, meta["class_names"]) for path, meta in zip(paths, metas) if meta.get("class_names")]
    for path, meta in zip(paths[1:], metas[1:]):
        if meta["num_classes"] != metas[0]["num_classes"]:
            raise FgkdError(f"{path}: {meta['num_classes']} classes, {paths[0]} has {metas[0]['num_classes']}; "
                            "give models trained on the same data set")
    for path, names in named[1:]:
        if names != named[0][1]:
            differ = next(i for i, (a, b) in enumerate(zip(names, named[0][1])) if a != b)
            raise FgkdError(f"{path}: class {differ} is {names[differ]!r}, in {named[0][0]} {named[0][1][differ]!r}; "
                            "give models trained on the same data set")
    return Ensemble(paths, [model for model, _ in loaded], sizes, named[0][1] if named else None, target)


def image_files(targets: list[str | Path]) -> list[Path]:
    """The images of ``targets`` in their order: a file itself, a folder's image files (by suffix, not its subfolders)
    sorted; each image once."""
    found = []
    for target in map(Path, targets):
        if target.is_file():
            found.append(target)
            continue
        if not target.is_dir():
            raise FgkdError(f"{target}: no such file or folder; give images or folders of images")
        images = sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FgkdError(f"{target}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder; give images or "
                            "folders of images")
        found += images
    unique = {}
    for image in found:  # the first spelling of each file
        unique.setdefault(image.resolve(), image)
    return list(unique.values())


def check_overlay_folder(overlay: str | Path, images: list[Path]) -> None:
    """One overlay per image, named after it, in a folder that is not an input: overlays written among the images
    would be classified by the next run over that folder, and two images of one name would share one overlay."""
    folder = Path(overlay).resolve()
    for image in images:
        if folder in (image.parent.resolve(), image.resolve().parent):  # a link's folder, and its target's
            raise FgkdError(f"--overlay {overlay}: the folder of {image}, so its overlays would be classified next "
                            "time; choose a folder of their own")
    named = {}
    for image in images:
        other = named.setdefault(image.name, image)
        if other != image:
            raise FgkdError(f"{other} and {image}: both would have the overlay {Path(overlay) / (image.name + '.png')}; "
                            "classify them in two runs with two --overlay folders")


def classify(ensemble: Ensemble, images: list[Path], top_k: int = 5, combine: str = "logits",
             overlay: str | Path | None = None) -> Iterator[Result]:
    """Each image's ``top_k`` classes by the ensemble's probabilities (``combine``, see
    fgkd.metrics.combined_probabilities), in the order of ``images``; an unreadable image is a Result with an
    error and does not stop the others. ``overlay``: a folder for one PNG per image (see write_overlay)."""
    transform = fgvc_transform(ensemble.sizes, train=False)
    for start in range(0, len(images), BATCH):
        decoded: dict[Path, torch.Tensor] = {}
        for path in images[start:start + BATCH]:
            try:
                decoded[path] = decode_rgb(path)
            except (*DECODE_ERRORS, DataError) as err:
                yield Result(path, [], f"{path}: not a readable image ({brief(err)}); skipped it, check or remove "
                                       "the file")
        if not decoded:
            continue
        probabilities, heat_sources = _forward(ensemble, torch.stack([transform(image) for image in decoded.values()]),
                                               combine)
        for row, (path, image) in enumerate(decoded.items()):
            if overlay is not None:
                write_overlay(Path(overlay) / f"{path.name}.png", image, [energy[row] for energy in heat_sources],
                              ensemble.sizes)
            yield Result(path, _top(probabilities[row], top_k, ensemble.class_names))


@torch.inference_mode()
def _forward(ensemble: Ensemble, batch: torch.Tensor, combine: str) -> tuple[np.ndarray, list[torch.Tensor]]:
    """The ensemble's class probabilities of a batch, and each network's attention energy (B x h x w)."""
    logits, energies = [], []
    for network in ensemble.networks:
        out = network(batch.to(ensemble.device))
        logits.append((out[0] if isinstance(out, tuple) else out).float().cpu().numpy())
        energies.append(attention_energy(network.attention_features).cpu())
    return combined_probabilities(logits, combine), energies


def _top(probabilities: np.ndarray, top_k: int, names: list[str] | None) -> list[Prediction]:
    order = np.argsort(-probabilities, kind="stable")[:top_k]  # ties: the lower class index first
    return [Prediction(rank, int(c), names[c] if names else None, float(probabilities[c]))
            for rank, c in enumerate(order, 1)]


def write_overlay(target: Path, image: torch.Tensor, energies: list[torch.Tensor], sizes: ImageSizes) -> None:
    """The image (3 x H x W uint8) at its own size with the attention heat map on the part the networks see (the
    centre crop); with several networks, the mean of their heat maps. Outside the crop the image is unchanged."""
    picture = image.permute(1, 2, 0).numpy() / 255.0
    left, top, right, bottom = centre_crop_box(sizes, picture.shape[1], picture.shape[0])
    heat = np.mean([attention_heat(energy, (bottom - top, right - left)) for energy in energies], axis=0)
    picture[top:bottom, left:right] = blend(picture[top:bottom, left:right], heat)
    with atomic_path(target) as tmp:
        Image.fromarray(np.round(picture * 255).astype(np.uint8)).save(tmp, format="PNG")


def _rows(results: list[Result]) -> Iterator[tuple[Result, Prediction]]:
    return ((result, p) for result in results for p in result.predictions)


def as_table(results: list[Result]) -> str:
    """One line per (image, rank), the image named on its first line; an unnamed class by its index."""
    lines = [(str(r.image) if p.rank == 1 else "", str(p.rank), f"{p.probability:.4f}",
              p.class_name if p.class_name is not None else str(p.class_index)) for r, p in _rows(results)]
    width = max([len("image")] + [len(line[0]) for line in lines])
    header = f"{'image':<{width}}  rank  probability  class"
    return "\n".join([header] + [f"{i:<{width}}  {k:>4}  {p:>11}  {c}" for i, k, p, c in lines]) + "\n"


def as_csv(results: list[Result]) -> str:
    """image, rank, class_index, class_name (empty when unknown), probability: one row per (image, rank)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "rank", "class_index", "class_name", "probability"])
    writer.writerows([str(r.image), p.rank, p.class_index, p.class_name or "", p.probability]
                     for r, p in _rows(results))
    return buffer.getvalue()


def as_json(results: list[Result]) -> str:
    """A list of {image, predictions: [{rank, class_index, class_name (null when unknown), probability}]}."""
    return json.dumps([{"image": str(r.image), "predictions": [asdict(p) for p in r.predictions]}
                       for r in results if not r.error], indent=2, ensure_ascii=False) + "\n"


FORMATTERS = {"table": as_table, "csv": as_csv, "json": as_json}  # the choices of `fgkd classify --format`
