"""Per-part evidence on the synthetic set: re-render each test image with one part hidden, or with
only one part visible, and see which networks still classify it; and how much of each network's attention
falls on each part, where the parts are known exactly.

The generator is a pure function of (class code, nuisance), and each image's nuisance is drawn from
its own seed, so the very test image can be re-rendered with another occlusion pattern. Images go
through the same JPEG encodings as `fgkd synth` + `fgkd prepare`, then the test transform.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .atomic import write_parquet
from .data import synth
from .attention import attention_distribution
from .data.dataset import fgvc_transform, unnormalise
from .data.images import open_rgb
from .data.manifest import read_manifest
from .data.prepare import JPEG_QUALITY
from .data.recipes import ImageSizes
from .errors import FgkdError
from .losses import attention_energy
from .metrics import check_combine, combine_scores, topk_accuracy
from .modelfile import load_model, shared_input_sizes


def _jpeg_round_trip(pixels: np.ndarray) -> torch.Tensor:
    image = Image.fromarray(pixels)
    for quality in (synth.SYNTH_JPEG_QUALITY, JPEG_QUALITY):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        image = open_rgb(io.BytesIO(buffer.getvalue()))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


ALL_VISIBLE = "all visible"  # the condition whose images the attention shares are measured on
ELSEWHERE = "elsewhere"  # attention outside every part's region
PARTS = (*(p.name for p in synth.PART_SLOTS), ELSEWHERE)
ATTENTION_COLUMNS = ("network", "part", "share", "area")


def conditions() -> list[tuple[str, list[bool] | None]]:
    """(name, occlusion pattern); None keeps the image as generated."""
    slots = [p.name for p in synth.PART_SLOTS]
    hide_one = [(f"hidden:{name}", [i == j for i in range(len(slots))]) for j, name in enumerate(slots)]
    only_one = [(f"only:{name}", [i != j for i in range(len(slots))]) for j, name in enumerate(slots)]
    return [("as generated", None), (ALL_VISIBLE, [False] * len(slots)), *hide_one, *only_one]


def scenes(raw: str | Path, image_ids: list[int],
           labels: list[int]) -> tuple[int, list[tuple[np.ndarray, synth.Nuisance]]]:
    """The image size of the `fgkd synth` data set in ``raw``, and each image's class code and nuisance as it drew
    them."""
    meta_path = Path(raw) / "CUB_200_2011" / "synthetic.json"
    if not meta_path.is_file():
        raise FgkdError(f"{meta_path}: missing; part occlusion needs a data set made by `fgkd synth`")
    meta = json.loads(meta_path.read_text())
    fields = {f.name for f in dataclasses.fields(synth.SynthParams)}
    params = synth.SynthParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()
                                  if k in fields})
    codes = synth.class_codes(meta["classes"], synth.stream_rng(meta["seed"], synth.CODE_STREAM, 0),
                              meta.get("identity", {}).get("parts"))
    return meta["size"], [(codes[int(label)],
                           synth.sample_nuisance(synth.stream_rng(meta["seed"], synth.IMAGE_STREAM, int(image_id)),
                                                 meta["size"], params, synth.free_slots(codes)))
                          for image_id, label in zip(image_ids, labels)]


def rerender(raw: str | Path, image_ids: list[int], labels: list[int],
             occluded: list[bool] | None) -> list[torch.Tensor]:
    """Images of the `fgkd synth` data set in ``raw`` as `fgkd synth` + `fgkd prepare` made them (uint8, C x H x W),
    with the parts hidden as in ``occluded`` (None: as generated)."""
    size, drawn = scenes(raw, image_ids, labels)
    images = []
    for code, nuisance in drawn:
        if occluded is not None:
            nuisance = dataclasses.replace(nuisance, occluded=list(occluded))
        images.append(_jpeg_round_trip(synth.render(code, nuisance, size)[0]))
    return images


def part_owners(nuisance: synth.Nuisance, size: int) -> np.ndarray:
    """Each pixel's part slot (H x W; -1: none): the slots' regions (synth.part_region) made disjoint, a pixel in
    several regions going to the slot whose centre is nearest (on a tie, the earlier slot)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    distances = []
    for slot in range(len(synth.PART_SLOTS)):
        x, y = synth.slot_centre(slot, nuisance)
        distances.append(np.where(synth.part_region(slot, nuisance, size), np.hypot(xs - x, ys - y), np.inf))
    distances = np.stack(distances)
    return np.where(np.isfinite(distances).any(axis=0), distances.argmin(axis=0), -1)


def carry_masks(masks: np.ndarray, sizes: ImageSizes) -> torch.Tensor:
    """Image masks (N x H x W bool) where the network sees them (N x crop x crop in [0, 1]): each put through the test
    transform as an image, 0 or 255 in every channel, and its normalisation undone; the same resize and crop as the
    images, soft at the edges where the resize blends pixels."""
    transform = fgvc_transform(sizes, train=False)
    return torch.stack([unnormalise(transform(torch.from_numpy(mask.astype(np.uint8) * 255).repeat(3, 1, 1)), sizes)[0]
                        for mask in masks])


def part_attention(raw: str | Path, image_ids: list[int], labels: list[int], energies: dict[str, torch.Tensor],
                   sizes: ImageSizes, batch_size: int = 128) -> pd.DataFrame:
    """Per network, the mean share of its attention on each part slot's region of the all-visible images, and
    elsewhere; ``area`` is the mean share of a uniform map: what a network that looks everywhere alike would give.

    ``energies``: network -> the images' attention energy (N x h x w, fgkd.losses.attention_energy), scaled to sum 1 at
    crop size (fgkd.attention.attention_distribution); share(part) = sum(map * mask), the part's mask from part_owners
    by carry_masks. An image whose map is zero everywhere has no attention to share: it is left out of the mean."""
    size, drawn = scenes(raw, image_ids, labels)
    slots = np.arange(len(synth.PART_SLOTS))
    shares, areas = {name: [] for name in energies}, []
    for start in range(0, len(drawn), batch_size):
        owners = np.stack([part_owners(nuisance, size) for _, nuisance in drawn[start:start + batch_size]])
        masks = carry_masks((owners[:, None] == slots[None, :, None, None]).reshape(-1, size, size), sizes)
        masks = masks.view(len(owners), len(slots), *masks.shape[-2:])
        areas.append(masks.mean(dim=(2, 3)))
        for name, energy in energies.items():
            maps = attention_distribution(energy[start:start + batch_size], tuple(masks.shape[-2:]))
            shares[name].append((maps[:, None] * masks).sum(dim=(2, 3)))

    def with_elsewhere(found: list[torch.Tensor]) -> torch.Tensor:
        parts = torch.cat(found).double()
        return torch.cat([parts, 1 - parts.sum(dim=1, keepdim=True)], dim=1)

    area = with_elsewhere(areas).mean(dim=0)
    rows = [{"network": name, "part": part, "share": float(share), "area": float(a)}
            for name, found in shares.items()
            for part, share, a in zip(PARTS, with_elsewhere(found).nanmean(dim=0), area)]
    return pd.DataFrame(rows, columns=list(ATTENTION_COLUMNS))


@torch.inference_mode()
def part_occlusion(raw: str | Path, prepared: str | Path, models: list[str | Path], out: str | Path,
                   batch_size: int = 128, combine: str = "logits",
                   attention_out: str | Path | None = None) -> pd.DataFrame:
    """Top-1 of each network and of their ensemble (``combine``, see fgkd.metrics) under each occlusion
    condition; the ensemble rows name their combine rule. With ``attention_out``, also each network's attention
    shares on the parts (part_attention), from the forward pass of the all-visible images."""
    check_combine(combine)
    if attention_out is not None and Path(attention_out).resolve() == Path(out).resolve():
        raise FgkdError(f"--attention-out {attention_out}: the same file as --out; give each table its own file")
    test = read_manifest(prepared)
    test = test[test["split"] == "test"]
    if not len(test):
        raise FgkdError(f"{prepared}: its manifest has no test images to re-render; prepare the synthetic set again")
    loaded = [load_model(p) for p in models]
    names = [Path(p).parent.name for p in models]
    sizes = shared_input_sizes(models, [meta for _, meta in loaded])
    transform = fgvc_transform(sizes, train=False)
    labels = test["label"].to_numpy()
    rows, energies = [], {}
    for condition, pattern in conditions():
        batch = torch.stack([transform(image) for image in rerender(raw, test["image_id"], labels, pattern)])
        members = []
        for name, (model, _) in zip(names, loaded):
            logits, energy = [], []
            for i in range(0, len(batch), batch_size):
                logits.append(model(batch[i:i + batch_size]))
                if condition == ALL_VISIBLE and attention_out is not None:
                    energy.append(attention_energy(model.attention_features))
            logits = torch.cat(logits).numpy()
            if energy:
                energies[name] = torch.cat(energy)
            members.append(logits)
            rows.append({"network": name, "condition": condition, "combine": None,
                         "top1": topk_accuracy(logits, labels, 1)})
        rows.append({"network": "ensemble", "condition": condition, "combine": combine,
                     "top1": topk_accuracy(combine_scores(members, combine), labels, 1)})
    frame = pd.DataFrame(rows, columns=["network", "condition", "combine", "top1"])
    if attention_out is not None:
        attention = part_attention(raw, test["image_id"].tolist(), labels.tolist(), energies, sizes, batch_size)
        write_parquet(attention, attention_out)
    write_parquet(frame, out)
    return frame
