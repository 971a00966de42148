"""Attention maps of the trained networks, and the reports: Parquet tables, summary.md, figures."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .atomic import atomic_path, write_parquet  # noqa: E402
from .data.dataset import IMAGENET_MEAN, IMAGENET_STD, ImageSizes, load_split  # noqa: E402
from .ensemble import ensemble, read_logits, topk_accuracy  # noqa: E402
from .losses import attention_energy, normalise_attention  # noqa: E402
from .train import load_model  # noqa: E402

OVERLAP_IMAGES = 256


def _stage_of(path: str | Path) -> str:
    return Path(path).parent.name


@torch.inference_mode()
def attention(model_paths: list[str], data: str | Path, images: int, overlap_out: str | Path, figure_out: str | Path):
    """Mean pairwise overlap of the networks' normalised attention maps on test images, and a figure."""
    loaded = [load_model(p) for p in model_paths]
    models, meta = [model for model, _ in loaded], loaded[0][1]
    test_set = load_split(data, "test", ImageSizes(meta["resize"], meta["crop"]))
    count = min(len(test_set), OVERLAP_IMAGES)
    picks = np.linspace(0, len(test_set) - 1, count).round().astype(int)
    batch = torch.stack([test_set[int(i)][0] for i in picks])
    energies = []
    for model in models:
        model(batch)
        energies.append(attention_energy(model.attention_features))
    size = min(tuple(e.shape[-2:]) for e in energies)
    maps = [normalise_attention(e, size) for e in energies]
    rows = []
    names = [_stage_of(p) for p in model_paths]
    for (i, a), (j, b) in itertools.combinations(enumerate(maps), 2):
        rows.append({"model_a": names[i], "model_b": names[j], "overlap": float((a * b).sum(dim=1).mean())})
    write_parquet(pd.DataFrame(rows, columns=["model_a", "model_b", "overlap"]), overlap_out)

    shown = picks[np.linspace(0, count - 1, min(images, count)).round().astype(int)]
    chosen = np.searchsorted(picks, shown)
    fig, axes = plt.subplots(len(chosen), len(models) + 1, figsize=(1.6 * (len(models) + 1), 1.6 * len(chosen)),
                             squeeze=False)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for row, index in enumerate(chosen):
        picture = (batch[index] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        axes[row, 0].imshow(picture)
        for col, energy in enumerate(energies, 1):
            heat = F.interpolate(energy[index][None, None], size=picture.shape[:2], mode="bilinear")[0, 0]
            heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-12)
            axes[row, col].imshow(picture)
            axes[row, col].imshow(heat.numpy(), cmap="jet", alpha=0.45)
    for col, title in enumerate(["image", *names]):
        axes[0, col].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    _save_figure(fig, figure_out)


def _save_figure(fig, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _parameters(model_path: Path) -> int:
    state = torch.load(model_path, map_location="cpu", weights_only=True)["state_dict"]
    return int(sum(v.numel() for k, v in state.items() if v.is_floating_point() and "running_" not in k))


def report(results: str | Path, pairs: list[str], stages: list[str], out: str | Path) -> None:
    """Collect every (dataset, backbone) result into results/reports."""
    results, out = Path(results), Path(out)
    metrics, ensembles, histories = [], [], []
    members = [s for s in stages if s != "auxkd"]
    for pair in pairs:
        dataset, backbone = pair.split("/")
        base = results / dataset / backbone
        overlap = pd.read_parquet(base / "attention.parquet")
        history = {s: pd.read_parquet(base / s / "history.parquet") for s in stages}
        for stage in stages:
            histories.append(history[stage].assign(dataset=dataset, backbone=backbone))
            for selection, name in (("best", "logits.parquet"), ("last", "logits_last.parquet")):
                _, labels, logits = read_logits(base / stage / name)
                metrics.append({
                    "dataset": dataset, "backbone": backbone, "method": stage, "members": stage,
                    "selection": selection, "top1": topk_accuracy(logits, labels, 1),
                    "top5": topk_accuracy(logits, labels, 5), "parameters": _parameters(base / stage / "model.pt"),
                    "train_seconds": float(history[stage]["seconds"].sum()),
                    "images_per_s": float(history[stage]["images_per_s"].mean()), "attention_overlap": np.nan})
        table = pd.read_parquet(base / "ensemble.parquet").assign(dataset=dataset, backbone=backbone)
        ensembles.append(table)
        for selection, name in (("best", "logits.parquet"), ("last", "logits_last.parquet")):
            full = ensemble([base / m / name for m in members], members).iloc[len(members) - 1]
            metrics.append({
                "dataset": dataset, "backbone": backbone, "method": "ensemble", "members": full["members"],
                "selection": selection, "top1": full["top1"], "top5": full["top5"],
                "parameters": sum(_parameters(base / m / "model.pt") for m in members),
                "train_seconds": float(sum(history[m]["seconds"].sum() for m in members)),
                "images_per_s": np.nan, "attention_overlap": float(overlap["overlap"].mean())})
    metrics = pd.DataFrame(metrics)
    ensembles = pd.concat(ensembles, ignore_index=True)
    histories = pd.concat(histories, ignore_index=True)
    write_parquet(metrics, out / "metrics.parquet")
    write_parquet(ensembles, out / "ensembles.parquet")
    write_parquet(histories, out / "history.parquet")
    _write_text(out / "summary.md", summary_table(metrics, stages))
    best = metrics[metrics["selection"] == "best"]
    _write_text(out / "metrics.json", json.dumps(
        {f"{r.dataset}/{r.backbone}": {m: float(best[(best.dataset == r.dataset) & (best.backbone == r.backbone)
                                                     & (best.method == m)]["top1"].iloc[0])
                                       for m in [*stages, "ensemble"]}
         for r in best.drop_duplicates(["dataset", "backbone"]).itertuples()}, indent=1) + "\n")
    curves = histories[["dataset", "backbone", "stage", "epoch", "loss", "train_acc", "val_acc"]]
    with atomic_path(out / "curves.csv") as tmp:
        curves.to_csv(tmp, index=False)
    _training_curves(histories, out / "figures" / "training_curves.png")
    _ensemble_members(ensembles, out / "figures" / "ensemble_members.png")
    for pair in pairs:
        dataset, backbone = pair.split("/")
        source = results / dataset / backbone / "attention.png"
        with atomic_path(out / "figures" / f"attention_{dataset}_{backbone}.png") as tmp:
            tmp.write_bytes(source.read_bytes())


def summary_table(metrics: pd.DataFrame, stages: list[str]) -> str:
    """The paper-style table: top-1 (best-on-val epoch; last epoch in brackets) per dataset x backbone."""
    columns = [s for s in stages if s != "auxkd"] + ["ensemble", "auxkd"]
    lines = ["# fgkd results", "",
             "Top-1 test accuracy (%): model of the best validation epoch, last epoch in brackets.", "",
             "| dataset | backbone | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for (dataset, backbone), group in metrics.groupby(["dataset", "backbone"], sort=False):
        cells = []
        for column in columns:
            best = group[(group.method == column) & (group.selection == "best")]["top1"].iloc[0]
            last = group[(group.method == column) & (group.selection == "last")]["top1"].iloc[0]
            cells.append(f"{100 * best:.1f} ({100 * last:.1f})")
        lines.append(f"| {dataset} | {backbone} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _training_curves(histories: pd.DataFrame, target: Path) -> None:
    pairs = histories.groupby(["dataset", "backbone"], sort=False)
    fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 3.2 * len(pairs)), squeeze=False)
    for row, ((dataset, backbone), group) in enumerate(pairs):
        for stage, curve in group.groupby("stage", sort=False):
            axes[row, 0].plot(curve["epoch"], curve["loss"], label=stage)
            axes[row, 1].plot(curve["epoch"], curve["val_acc"], label=stage)
        axes[row, 0].set(title=f"{dataset} / {backbone}: training loss", xlabel="epoch")
        axes[row, 1].set(title=f"{dataset} / {backbone}: validation top-1", xlabel="epoch")
        axes[row, 1].legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, target)


def _ensemble_members(ensembles: pd.DataFrame, target: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for (dataset, backbone), group in ensembles[ensembles["prefix"]].groupby(["dataset", "backbone"], sort=False):
        ax.plot(group["n_members"], 100 * group["top1"], marker="o", label=f"{dataset} / {backbone}")
    ax.set(xlabel="members (teacher, + student 1, + student 2, ...)", ylabel="top-1 (%)",
           title="Ensemble accuracy against the number of members")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, target)
