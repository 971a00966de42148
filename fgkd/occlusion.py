"""Per-part evidence on the synthetic set: re-render each test image with one part hidden, or with
only one part visible, and see which networks still classify it.

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
from .data.dataset import fgvc_transform
from .data.images import open_rgb
from .data.manifest import read_manifest
from .data.prepare import JPEG_QUALITY
from .errors import FgkdError
from .metrics import check_combine, combine_scores, topk_accuracy
from .modelfile import load_model, shared_input_sizes


def _jpeg_round_trip(pixels: np.ndarray) -> torch.Tensor:
    image = Image.fromarray(pixels)
    for quality in (synth.SYNTH_JPEG_QUALITY, JPEG_QUALITY):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        image = open_rgb(io.BytesIO(buffer.getvalue()))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def conditions() -> list[tuple[str, list[bool] | None]]:
    """(name, occlusion pattern); None keeps the image as generated."""
    slots = [p.name for p in synth.PART_SLOTS]
    hide_one = [(f"hidden:{name}", [i == j for i in range(len(slots))]) for j, name in enumerate(slots)]
    only_one = [(f"only:{name}", [i != j for i in range(len(slots))]) for j, name in enumerate(slots)]
    return [("as generated", None), ("all visible", [False] * len(slots)), *hide_one, *only_one]


def rerender(raw: str | Path, image_ids: list[int], labels: list[int],
             occluded: list[bool] | None) -> list[torch.Tensor]:
    """Images of the `fgkd synth` data set in ``raw`` as `fgkd synth` + `fgkd prepare` made them (uint8, C x H x W),
    with the parts hidden as in ``occluded`` (None: as generated)."""
    meta_path = Path(raw) / "CUB_200_2011" / "synthetic.json"
    if not meta_path.is_file():
        raise FgkdError(f"{meta_path}: missing; part occlusion needs a data set made by `fgkd synth`")
    meta = json.loads(meta_path.read_text())
    fields = {f.name for f in dataclasses.fields(synth.SynthParams)}
    params = synth.SynthParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()
                                  if k in fields})
    codes = synth.class_codes(meta["classes"], synth.stream_rng(meta["seed"], synth.CODE_STREAM, 0),
                              meta.get("identity", {}).get("parts"))
    images = []
    for image_id, label in zip(image_ids, labels):
        nuisance = synth.sample_nuisance(synth.stream_rng(meta["seed"], synth.IMAGE_STREAM, int(image_id)),
                                         meta["size"], params, synth.free_slots(codes))
        if occluded is not None:
            nuisance = dataclasses.replace(nuisance, occluded=list(occluded))
        images.append(_jpeg_round_trip(synth.render(codes[int(label)], nuisance, meta["size"])[0]))
    return images


@torch.inference_mode()
def part_occlusion(raw: str | Path, prepared: str | Path, models: list[str | Path], out: str | Path,
                   batch_size: int = 128, combine: str = "logits") -> pd.DataFrame:
    """Top-1 of each network and of their ensemble (``combine``, see fgkd.metrics) under each occlusion
    condition; the ensemble rows name their combine rule."""
    check_combine(combine)
    test = read_manifest(prepared)
    test = test[test["split"] == "test"]
    if not len(test):
        raise FgkdError(f"{prepared}: its manifest has no test images to re-render; prepare the synthetic set again")
    loaded = [load_model(p) for p in models]
    names = [Path(p).parent.name for p in models]
    transform = fgvc_transform(shared_input_sizes(models, [meta for _, meta in loaded]), train=False)
    labels = test["label"].to_numpy()
    rows = []
    for condition, pattern in conditions():
        batch = torch.stack([transform(image) for image in rerender(raw, test["image_id"], labels, pattern)])
        members = []
        for name, (model, _) in zip(names, loaded):
            logits = torch.cat([model(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]).numpy()
            members.append(logits)
            rows.append({"network": name, "condition": condition, "combine": None,
                         "top1": topk_accuracy(logits, labels, 1)})
        rows.append({"network": "ensemble", "condition": condition, "combine": combine,
                     "top1": topk_accuracy(combine_scores(members, combine), labels, 1)})
    frame = pd.DataFrame(rows, columns=["network", "condition", "combine", "top1"])
    write_parquet(frame, out)
    return frame
