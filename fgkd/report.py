"""Attention maps of the trained networks, and the reports: Parquet tables, summary.md (and .html), figures.

Results live in results/{dataset}/{backbone}/seed{seed}/: the teacher and the aux-KD baselines
(auxkd_ce, auxkd_single) there, each variant's students, aux-KD student, ensemble and attention
maps in a folder of the variant's name below it."""

from __future__ import annotations

import datetime
import functools
import html
import itertools
import json
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402

from . import __version__, arithmetic  # noqa: E402
from .atomic import atomic_path, write_parquet  # noqa: E402
from .attention import attention_heat, blend  # noqa: E402
from .data.dataset import load_split, unnormalise  # noqa: E402
from .ensemble import ensemble, read_logits  # noqa: E402
from .errors import FgkdError, brief  # noqa: E402
from .losses import attention_energy, normalise_attention  # noqa: E402
from .metrics import COMBINES, check_combine, combine_scores, topk_accuracy, topk_hits  # noqa: E402
from .occlusion import ATTENTION_COLUMNS, PARTS  # noqa: E402
from .paired import ALPHA, LEVEL, POWER, compare, mean_detectable, mean_interval  # noqa: E402
from .stages import AUXKD_BASELINES, SHARED_STAGES  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .modelfile import load_model, read_model_file, shared_input_sizes  # noqa: E402
from .train import select_device  # noqa: E402

OVERLAP_IMAGES = 256
HISTORY_COLUMNS = ("stage", "epoch", "loss", "train_acc", "val_acc", "seconds", "images_per_s")
ENSEMBLE_COLUMNS = ("members", "n_members", "prefix", "combine", "top1", "top5")
OCCLUSION_COLUMNS = ("network", "condition", "combine", "top1")
SELECTIONS = (("best", "logits.parquet"), ("last", "logits_last.parquet"))  # model selection -> its logits file
PAIR_KEY = ("dataset", "backbone", "selection", "variant_a", "method_a", "variant_b", "method_b")
COMPARISON_COLUMNS = (*PAIR_KEY, "seed", "images", "top1_a", "top1_b", "difference", "only_a", "only_b", "mcnemar_p",
                      "detectable", "seeds", "mean_difference", "ci_low", "ci_high", "detectable_mean")


def _stage_of(path: str | Path) -> str:
    return Path(path).parent.name


@torch.inference_mode()
def attention(model_paths: list[str], data: str | Path, images: int, overlap_out: str | Path, figure_out: str | Path,
              batch_size: int = 64, device: str = "auto"):
    """Mean pairwise overlap of the networks' normalised attention maps on test images, and a figure.

    The images go through the networks ``batch_size`` at a time: in one batch, 256 test images at the paper's
    448 px took more memory than the workflow's job asks for (7.2 GB for 128 images and two ResNet-50s)."""
    target = select_device(TrainConfig(device=device))
    loaded = [load_model(p, None, target) for p in model_paths]
    models = [model for model, _ in loaded]
    sizes = shared_input_sizes(model_paths, [meta for _, meta in loaded])
    test_set = load_split(data, "test", sizes)
    count = min(len(test_set), OVERLAP_IMAGES)
    picks = np.linspace(0, len(test_set) - 1, count).round().astype(int)
    energies = [[] for _ in models]
    for start in range(0, count, batch_size):
        batch = torch.stack([test_set[int(i)][0] for i in picks[start:start + batch_size]]).to(target)
        for model, found in zip(models, energies):
            model(batch)
            found.append(attention_energy(model.attention_features).cpu())
    energies = [torch.cat(found) for found in energies]
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
    for row, index in enumerate(chosen):
        picture = unnormalise(test_set[int(picks[index])][0], sizes).permute(1, 2, 0).numpy()
        axes[row, 0].imshow(picture)
        for col, energy in enumerate(energies, 1):
            axes[row, col].imshow(blend(picture, attention_heat(energy[index], picture.shape[:2])))
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


def _model_facts(model_path: Path) -> tuple[int, str]:
    """(trainable parameters, the arithmetic it was trained with) of a model.pt."""
    saved = read_model_file(model_path)
    state, records = saved["state_dict"], saved["metadata"].get("arithmetic", [])
    parameters = int(sum(v.numel() for k, v in state.items() if v.is_floating_point() and "running_" not in k))
    return parameters, " + ".join(dict.fromkeys(map(arithmetic.describe, records or [arithmetic.UNRECORDED])))


def arithmetic_line(metrics: pd.DataFrame) -> str:
    """Which arithmetic the report's networks were trained with, counted once per network (a shared teacher
    appears in every variant's rows): on CPU, other thread counts or vector instructions give other numbers."""
    networks = metrics[(metrics.method != "ensemble") & (metrics.selection == "best")].assign(
        variant=lambda f: f.variant.where(~f.method.isin(SHARED_STAGES), "shared"))
    counts = networks.drop_duplicates(["dataset", "backbone", "seed", "variant", "method"])["arithmetic"].value_counts()
    counts = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if len(counts) == 1:
        return f"Trained with: {counts[0][0]} (all {counts[0][1]} networks)."
    return "Trained with: " + "; ".join(f"{text} ({n} networks)" for text, n in counts) + "."


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A Parquet file written by an earlier step, or one line naming it."""
    if not path.is_file():
        raise FgkdError(f"{path}: missing; run the step that writes it first (snakemake does)")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise FgkdError(f"{path}: unreadable ({brief(err)}); rerun the step that writes it (snakemake does)") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FgkdError(f"{path}: no column {', '.join(missing)} (written by another fgkd version); delete it and "
                        "rerun the step that writes it")
    return frame


def _part_attention_table(path: Path, networks: list[str]) -> pd.DataFrame:
    """A part_attention.parquet (written beside part_occlusion.parquet) with rows for every network and part."""
    table = _read_table(path, ATTENTION_COLUMNS)
    missing = [*(n for n in networks if n not in set(table["network"])),
               *(p for p in PARTS if p not in set(table["part"]))]
    if missing:
        raise FgkdError(f"{path}: no rows for {', '.join(missing)} (made for other networks); delete it and rerun the "
                        "step that writes it (snakemake does)")
    return table


def _check_combine(path: Path, rules: pd.Series, combine: str) -> None:
    """Ensemble numbers of another combine rule must never be mixed into a report."""
    found = sorted(set(rules))
    if found != [combine]:
        raise FgkdError(f"{path}: its ensembles were combined by {', '.join(map(str, found)) or 'nothing'}, the "
                        f"report asks for {combine}; delete it and rerun the step that writes it with "
                        f"--combine {combine}")


def _ensemble_table(path: Path, combine: str, expected: pd.Series) -> pd.DataFrame:
    """An ensemble.parquet that agrees with the full ensemble recomputed from the members' logits.parquet
    files: same combine rule, same members, same accuracy; a stale one would put other numbers in the figures."""
    table = _read_table(path, ENSEMBLE_COLUMNS)
    _check_combine(path, table["combine"], combine)
    row = table[table["members"] == expected["members"]]
    if len(row) != 1 or (row["top1"].iloc[0], row["top5"].iloc[0]) != (expected["top1"], expected["top5"]):
        raise FgkdError(f"{path}: its ensemble {expected['members']} disagrees with the members' logits.parquet "
                        "files (stale); delete it and rerun `fgkd ensemble`")
    return table


def _accuracies(folder: Path) -> dict[str, tuple[float, float]]:
    """selection -> (top1, top5) of one model's cached logits."""
    scores = {}
    for selection, name in SELECTIONS:
        _, labels, logits = read_logits(folder / name)
        scores[selection] = (topk_accuracy(logits, labels, 1), topk_accuracy(logits, labels, 5))
    return scores


def _networks(base: Path, variant: str, is_method: bool, students: int, aux_stages: list[str]) -> dict[str, Path]:
    """The folder of each network of ``variant`` in the run folder ``base``: the shared teacher, the variant's
    students and, for the method (the first variant) only, the aux stages."""
    names = ["teacher", *[f"student_{k}" for k in range(1, students + 1)], *(aux_stages if is_method else [])]
    return {name: base / name if name in SHARED_STAGES else base / variant / name for name in names}


def check_unique(runs: list[tuple[str, str, int]], variants: list[str]) -> None:
    """A run or variant given twice would count its seeds twice in the means and intervals."""
    for what, items in (("run", [f"{d}/{b}/{s}" for d, b, s in runs]), ("variant", variants)):
        repeated = sorted({item for item in items if items.count(item) > 1})
        if repeated:
            raise FgkdError(f"{what} {', '.join(repeated)} given twice: its seeds would count twice in the means and "
                            "intervals; give each once")


def collect(results: Path, runs: list[tuple[str, str, int]], variants: list[str], students: int,
            aux_stages: list[str], combine: str = "logits") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(metrics, ensembles, histories) of every run x variant; aux stages belong to the first variant.
    Ensembles are combined by ``combine`` (see fgkd.metrics), which their metrics rows name."""
    check_combine(combine)
    check_unique(runs, variants)
    for dataset, backbone, seed in runs:
        if not (results / dataset / backbone / f"seed{seed}").is_dir():
            raise FgkdError(f"{results / dataset / backbone / f'seed{seed}'}: no such folder for the run "
                            f"{dataset}/{backbone}/{seed}; check --results and --run")
    metrics, ensembles, histories = [], [], []
    student_names = [f"student_{k}" for k in range(1, students + 1)]
    read_history = functools.cache(lambda folder: _read_table(folder / "history.parquet", HISTORY_COLUMNS))
    facts = functools.cache(lambda folder: _model_facts(folder / "model.pt"))
    for dataset, backbone, seed in runs:
        base = results / dataset / backbone / f"seed{seed}"
        key = {"dataset": dataset, "backbone": backbone, "seed": seed}
        for stage in [s for s in ("teacher", *aux_stages) if s in SHARED_STAGES]:
            histories.append(read_history(base / stage).assign(**key, variant="shared"))
        for variant in variants:
            folder = base / variant
            networks = _networks(base, variant, variant == variants[0], students, aux_stages)
            for stage in [*student_names, *(["auxkd"] if "auxkd" in networks else [])]:
                histories.append(read_history(networks[stage]).assign(**key, variant=variant))
            for stage, path in networks.items():
                history = read_history(path)
                for selection, (top1, top5) in _accuracies(path).items():
                    metrics.append({**key, "variant": variant, "method": stage, "members": stage, "combine": None,
                                    "selection": selection, "top1": top1, "top5": top5,
                                    "parameters": facts(path)[0], "arithmetic": facts(path)[1],
                                    "train_seconds": float(history["seconds"].sum()),
                                    "images_per_s": float(history["images_per_s"].mean()),
                                    "attention_overlap": np.nan})
            members = ["teacher", *student_names]
            overlap = float(_read_table(folder / "attention.parquet", ("overlap",))["overlap"].mean())
            for selection, name in SELECTIONS:
                full = ensemble([networks[m] / name for m in members], members, combine, all_subsets=False).iloc[-1]
                if selection == "best":
                    table = _ensemble_table(folder / "ensemble.parquet", combine, full)
                    ensembles.append(table.assign(**key, variant=variant))
                metrics.append({**key, "variant": variant, "method": "ensemble", "members": full["members"],
                                "combine": combine, "selection": selection, "top1": full["top1"], "top5": full["top5"],
                                "parameters": sum(facts(networks[m])[0] for m in members),
                                "arithmetic": " | ".join(dict.fromkeys(facts(networks[m])[1] for m in members)),
                                "train_seconds": float(sum(read_history(networks[m])["seconds"].sum() for m in members)),
                                "images_per_s": np.nan, "attention_overlap": overlap})
    return pd.DataFrame(metrics), pd.concat(ensembles, ignore_index=True), pd.concat(histories, ignore_index=True)


def comparison_pairs(variants: list[str], aux_stages: list[str]) -> list[tuple[str, str, str, str]]:
    """(variant_a, method_a, variant_b, method_b) of each claim of the method: every variant's ensemble beats its
    teacher; the method's ensemble beats every other variant's; multi-teacher aux KD beats single-teacher KD,
    and both beat CE alone (the aux stages this report has)."""
    method = variants[0]
    pairs = [(v, "ensemble", v, "teacher") for v in variants]
    pairs += [(method, "ensemble", v, "ensemble") for v in variants[1:]]
    aux = [a for a in ("auxkd", "auxkd_single", "auxkd_ce") if a in aux_stages]
    return pairs + [(method, a, method, b) for a, b in itertools.combinations(aux, 2)]


def comparisons(results: Path, runs: list[tuple[str, str, int]], variants: list[str], students: int,
                aux_stages: list[str], combine: str = "logits") -> pd.DataFrame:
    """Paired statistics (fgkd.paired) of each comparison_pairs entry, per run and selection, from the cached
    logits: per-image top-1 hits (ties count against), ensembles combined by ``combine`` as everywhere."""
    logits = functools.cache(read_logits)
    members = ["teacher", *[f"student_{k}" for k in range(1, students + 1)]]

    def hits(networks: dict[str, Path], network: str, name: str) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
        """(first file, image ids, labels, top-1 hits) of one network or of the variant's ensemble."""
        files = [networks[m] / name for m in (members if network == "ensemble" else [network])]
        ids, labels, _ = logits(files[0])
        for path in files[1:]:
            _check_same_images(files[0], ids, labels, path, *logits(path)[:2])
        scores = combine_scores([logits(f)[2] for f in files], combine) if len(files) > 1 else logits(files[0])[2]
        return files[0], ids, labels, topk_hits(scores, labels, 1)

    rows = []
    for dataset, backbone, seed in runs:
        base = results / dataset / backbone / f"seed{seed}"
        folders = {v: _networks(base, v, v == variants[0], students, aux_stages) for v in variants}
        for variant_a, method_a, variant_b, method_b in comparison_pairs(variants, aux_stages):
            for selection, name in SELECTIONS:
                path_a, ids, labels, hits_a = hits(folders[variant_a], method_a, name)
                path_b, ids_b, labels_b, hits_b = hits(folders[variant_b], method_b, name)
                _check_same_images(path_a, ids, labels, path_b, ids_b, labels_b)
                rows.append({"dataset": dataset, "backbone": backbone, "selection": selection,
                             "variant_a": variant_a, "method_a": method_a, "variant_b": variant_b,
                             "method_b": method_b, "seed": seed, **compare(hits_a, hits_b)})
    frame = pd.DataFrame(rows).assign(seeds=0, mean_difference=np.nan, ci_low=np.nan, ci_high=np.nan,
                                      detectable_mean=np.nan)
    for index in frame.groupby(list(PAIR_KEY), sort=False).groups.values():
        frame.loc[index, "seeds"] = len(index)
        frame.loc[index, ["mean_difference", "ci_low", "ci_high"]] = mean_interval(frame.loc[index, "difference"])
        frame.loc[index, "detectable_mean"] = mean_detectable(frame.loc[index, "difference"])
    return frame[list(COMPARISON_COLUMNS)]


def _check_same_images(path: Path, ids: np.ndarray, labels: np.ndarray, other: Path, other_ids: np.ndarray,
                       other_labels: np.ndarray) -> None:
    """Paired statistics need the very same test images, in the same order."""
    if not (np.array_equal(ids, other_ids) and np.array_equal(labels, other_labels)):
        raise FgkdError(f"{other}: its test images or labels differ from {path}; rerun `fgkd predict` for both on the "
                        "same data (snakemake does)")


def _network_name(variant: str, method: str) -> str:
    """A shared network is the same in every variant, so it goes by its name alone."""
    return method if method in SHARED_STAGES else f"{method} ({variant})"


def comparison_table(frame: pd.DataFrame) -> list[str]:
    """Markdown lines: each comparison of the best-on-val models, per seed and over seeds, significance marked, and
    the difference each test detects, so that a difference not found significant reads "none larger than this"."""
    lines = [f"Top-1 of a minus top-1 of b in points, on the same test images (best-on-val models). Per seed: the "
             f"difference, with * where an exact McNemar test on the images only one of the two classifies correctly "
             f"gives p < {ALPHA} (two-sided; the p values in the last column). Over seeds: the mean with its "
             f"{LEVEL:.0%} interval (Student t); **bold** where the interval excludes 0; no interval (n/a) from one "
             f"seed, or from seeds that all give the same difference. Detectable ({POWER:.0%} power): the smallest "
             f"true difference a test finds significant with probability {POWER}, so that a difference not found "
             "significant reads \"no effect larger than this\": ± that of the interval over seeds (a two-sided t-test "
             "at the seeds' observed spread; n/a without an interval), and in brackets that of each seed's McNemar "
             "test given its number of images on which the two disagree (n/a where no split of so few gives "
             f"p < {ALPHA}).", "",
             f"| dataset | backbone | a | b | a − b per seed | mean [{LEVEL:.0%} interval] | "
             f"detectable ({POWER:.0%} power) | McNemar p per seed |",
             "|---|---|---|---|---|---|---|---|"]
    best = frame[frame["selection"] == "best"]
    for key, group in best.groupby(list(PAIR_KEY), sort=False):
        dataset, backbone, _, variant_a, method_a, variant_b, method_b = key
        group = group.sort_values("seed")
        per_seed = " / ".join(f"{100 * d:+.1f}" + ("*" if p < ALPHA else "")
                              for d, p in zip(group["difference"], group["mcnemar_p"]))
        first = group.iloc[0]
        mean = f"{100 * first['mean_difference']:+.1f}"
        if np.isnan(first["ci_low"]):
            interval = f"{mean} [n/a: {'one seed' if len(group) == 1 else 'no spread over seeds'}]"
        else:
            interval = f"{mean} [{100 * first['ci_low']:+.1f}, {100 * first['ci_high']:+.1f}]"
            interval = f"**{interval}**" if first["ci_low"] > 0 or first["ci_high"] < 0 else interval
        detectable = (f"{_points(first['detectable_mean'], '±')} ("
                      + " / ".join(_points(d) for d in group["detectable"]) + ")")
        lines.append(f"| {dataset} | {backbone} | {_network_name(variant_a, method_a)} | "
                     f"{_network_name(variant_b, method_b)} | {per_seed} | {interval} | {detectable} | "
                     + " / ".join(f"{p:.3g}" for p in group["mcnemar_p"]) + " |")
    return lines


def _points(difference: float, sign: str = "") -> str:
    """A detectable difference in points; n/a where none is."""
    return "n/a" if np.isnan(difference) else f"{sign}{100 * difference:.1f}"


def _mean_spread(values: pd.Series) -> str:
    """'mean ± std' in percent over seeds (std 0 for one seed)."""
    values = 100 * values.astype(float)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.1f} ± {spread:.1f}"


def _cell(frame: pd.DataFrame, **where) -> str:
    rows = frame
    for column, value in where.items():
        rows = rows[rows[column] == value]
    best, last = rows[rows.selection == "best"]["top1"], rows[rows.selection == "last"]["top1"]
    return f"{_mean_spread(best)} ({100 * last.mean():.1f})" if len(best) else "n/a"


def summary_table(metrics: pd.DataFrame, methods: list[str], variant: str) -> list[str]:
    """The paper-style table for one variant: per dataset x backbone, mean ± std over seeds."""
    seeds = metrics["seed"].nunique()
    lines = [f"Top-1 test accuracy (%), mean ± std over {seeds} seed(s), model of the best validation epoch; "
             "the last epoch's mean in brackets.", "",
             "| dataset | backbone | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for (dataset, backbone), group in metrics[metrics.variant == variant].groupby(["dataset", "backbone"], sort=False):
        lines.append(f"| {dataset} | {backbone} | " + " | ".join(_cell(group, method=m) for m in methods) + " |")
    return lines


PROVENANCE = "provenance.json"  # beside summary.md: which run and config the tables come from
PROVENANCE_KEYS = {"config_digest", "commit", "uncommitted_changes", "date", "fgkd", "runs", "variants", "combine"}


def provenance(config_digest: str | None, runs: list[tuple[str, str, int]], variants: list[str], combine: str) -> dict:
    """What a report was made from: the workflow config's digest, the checkout's commit (and whether tracked files
    had uncommitted changes), when, and its runs, variants and combine rule."""
    commit = _git("rev-parse", "HEAD")
    changed = _git("status", "--porcelain", "--untracked-files=no")
    return {"config_digest": config_digest, "commit": commit, "uncommitted_changes": bool(changed) if commit else None,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "fgkd": __version__, "runs": [f"{d}/{b}/{s}" for d, b, s in runs], "variants": list(variants),
            "combine": combine}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance_line(facts: dict) -> str:
    commit = "no git checkout" if not facts["commit"] else (
        f"commit {facts['commit'][:12]}" + (" with uncommitted changes" if facts["uncommitted_changes"] else ""))
    digest = f"config digest {facts['config_digest']}" if facts["config_digest"] else "no workflow config"
    return f"Made from: {commit}, {digest}, fgkd {facts['fgkd']}, on {facts['date']}."


def report(results: str | Path, runs: list[tuple[str, str, int]], variant: str, students: int,
           out: str | Path, combine: str = "logits", config_digest: str | None = None) -> None:
    """The main reports of one variant (the method) into ``out``, ensembles combined by ``combine``; ``config_digest``
    names the workflow config they were made under (see provenance)."""
    results, out = Path(results), Path(out)
    facts = provenance(config_digest, runs, [variant], combine)
    metrics, ensembles, histories = collect(results, runs, [variant], students, ["auxkd"], combine)
    paired = comparisons(results, runs, [variant], students, ["auxkd"], combine)
    figures = {results / d / b / f"seed{s}" / variant / "attention.png": out / "figures" / f"attention_{d}_{b}.png"
               for d, b, s in runs if s == runs[0][2]}
    for source in figures:
        if not source.is_file():
            raise FgkdError(f"{source}: missing; run `fgkd attention` (snakemake does) first")
    write_parquet(metrics, out / "metrics.parquet")
    write_parquet(ensembles, out / "ensembles.parquet")
    write_parquet(histories, out / "history.parquet")
    write_parquet(paired, out / "comparisons.parquet")
    methods = ["teacher", *[f"student_{k}" for k in range(1, students + 1)], "ensemble", "auxkd"]
    _write_summary(out, ["# fgkd results", "", provenance_line(facts), "",
                         f"Variant `{variant}`; ensemble = teacher + {students} students ({COMBINES[combine].text}). "
                         f"{arithmetic_line(metrics)}", "",
                         *summary_table(metrics, methods, variant), "", "## Paired comparisons", "",
                         *comparison_table(paired)])
    best = metrics[metrics["selection"] == "best"]
    summary = best.groupby(["dataset", "backbone", "method"], sort=False)["top1"].mean()
    _write_text(out / "metrics.json", json.dumps(
        {f"{d}/{b}": {m: round(float(summary[(d, b, m)]), 6) for m in methods}
         for d, b in best[["dataset", "backbone"]].drop_duplicates().itertuples(index=False)}, indent=1) + "\n")
    curves = (histories.groupby(["dataset", "backbone", "stage", "epoch"], sort=False)[["loss", "train_acc", "val_acc"]]
              .mean().reset_index())
    with atomic_path(out / "curves.csv") as tmp:
        curves.to_csv(tmp, index=False)
    written = {out / "figures" / "training_curves.png", out / "figures" / "ensemble_members.png", *figures.values()}
    _training_curves(curves, out / "figures" / "training_curves.png")
    _ensemble_members(ensembles, combine, out / "figures" / "ensemble_members.png")
    for source, target in figures.items():
        with atomic_path(target) as tmp:
            tmp.write_bytes(source.read_bytes())
    # an earlier report's figure of a data set or backbone no longer run would pass for this report's
    for stale in set((out / "figures").glob("*.png")) - written:
        stale.unlink()
    _write_text(out / PROVENANCE, json.dumps(facts, indent=1) + "\n")


def ablation_report(results: str | Path, runs: list[tuple[str, str, int]], variants: list[str], students: int,
                    out: str | Path, combine: str = "logits", config_digest: str | None = None) -> None:
    """Variants side by side, the aux-KD baselines, attention overlap, and part occlusion with the attention on each
    part, into ``out``."""
    results, out = Path(results), Path(out)
    facts = provenance(config_digest, runs, variants, combine)
    aux_stages = ["auxkd", *AUXKD_BASELINES]
    metrics, _, _ = collect(results, runs, variants, students, aux_stages, combine)
    paired = comparisons(results, runs, variants, students, aux_stages, combine)
    students_ = [f"student_{k}" for k in range(1, students + 1)]
    occlusion, shares = [], []
    for dataset, backbone, seed in runs:
        for variant in variants:
            path = results / dataset / backbone / f"seed{seed}" / variant / "part_occlusion.parquet"
            if path.exists():
                key = {"dataset": dataset, "backbone": backbone, "seed": seed, "variant": variant}
                table = _read_table(path, OCCLUSION_COLUMNS)
                _check_combine(path, table[table["network"] == "ensemble"]["combine"], combine)
                occlusion.append(table.assign(**key))
                shares.append(_part_attention_table(path.with_name("part_attention.parquet"),
                                                    ["teacher", *students_]).assign(**key))
    key_columns = ["dataset", "backbone", "seed", "variant"]
    occlusion = pd.concat(occlusion, ignore_index=True) if occlusion else pd.DataFrame(
        columns=[*OCCLUSION_COLUMNS, *key_columns])
    shares = pd.concat(shares, ignore_index=True) if shares else pd.DataFrame(
        columns=[*ATTENTION_COLUMNS, *key_columns])
    write_parquet(metrics, out / "metrics.parquet")
    write_parquet(occlusion, out / "part_occlusion.parquet")
    write_parquet(shares, out / "part_attention.parquet")
    write_parquet(paired, out / "comparisons.parquet")
    lines = ["# fgkd ablations", "", provenance_line(facts), "", arithmetic_line(metrics), "",
             "## Ensemble of teacher + students, by the students' loss", "",
             "Top-1 (%), mean ± std over seeds (best-on-val; last epoch's mean in brackets). `lambda0` trains "
             "the students with CE alone, each from its own seed: the plain ensemble of K+1 networks with the same "
             f"budget. Ensemble: {COMBINES[combine].text}. Attention overlap: mean pairwise dot product of the "
             "members' L2-normalised attention maps.", "",
             "| dataset | backbone | variant | " + " | ".join(students_) + " | ensemble | attention overlap |",
             "|---|---|---|" + "---|" * (len(students_) + 2)]
    for (dataset, backbone), group in metrics.groupby(["dataset", "backbone"], sort=False):
        for variant in variants:
            rows = group[group.variant == variant]
            overlap = rows[(rows.method == "ensemble") & (rows.selection == "best")]["attention_overlap"]
            lines.append(f"| {dataset} | {backbone} | {variant} | " +
                         " | ".join(_cell(rows, method=m) for m in [*students_, "ensemble"]) +
                         f" | {overlap.mean():.3f} ± {overlap.std(ddof=1) if len(overlap) > 1 else 0:.3f} |")
    lines += ["", "## Aux-KD student against its baselines (same architecture)", "",
              "| dataset | backbone | CE alone (auxkd_ce) | KD from the teacher (auxkd_single) | "
              "multi-teacher aux KD (auxkd) |", "|---|---|---|---|---|"]
    for (dataset, backbone), group in metrics[metrics.variant == variants[0]].groupby(["dataset", "backbone"], sort=False):
        lines.append(f"| {dataset} | {backbone} | " +
                     " | ".join(_cell(group, method=m) for m in ("auxkd_ce", "auxkd_single", "auxkd")) + " |")
    lines += ["", "## Paired comparisons: ensembles and aux KD", "", *comparison_table(paired)]
    if len(occlusion):
        lines += ["", "## Per-part evidence (synthetic sets)", "",
                  "Top-1 (%) on the test images re-rendered with one part hidden (`hidden:`) or with only one part "
                  f"visible (`only:`), mean over seeds; ensemble: {COMBINES[combine].text}.", "",
                  "Attention (%): the share of each network's spatial attention (its attention energy, upsampled to "
                  "the crop and scaled to sum 1) on each part's region of the test images with every part visible, "
                  "and elsewhere, mean over images and seeds; `area` is the share a uniform map would give, the "
                  "regions' share of the crop. Compare each student's row with the teacher's and with `area`.", ""]
        attention = {key: group for key, group in shares.groupby(["dataset", "backbone", "variant"])}
        for (dataset, backbone, variant), group in occlusion.groupby(["dataset", "backbone", "variant"], sort=False):
            table = group.groupby(["condition", "network"], sort=False)["top1"].mean().unstack("network")
            table = (100 * table[["teacher", *students_, "ensemble"]]).round(1)
            lines += [f"**{dataset} / {backbone} / {variant}**", "", "| condition | " + " | ".join(table.columns) + " |",
                      "|---|" + "---|" * len(table.columns)]
            lines += [f"| {c} | " + " | ".join(f"{v:.1f}" for v in row) + " |" for c, row in table.iterrows()]
            found = attention[dataset, backbone, variant]
            table = found.groupby(["network", "part"])["share"].mean().unstack("part").loc[["teacher", *students_]]
            table.loc["area"] = found.groupby("part")["area"].mean()
            lines += ["", "| attention (%) | " + " | ".join(PARTS) + " |", "|---|" + "---|" * len(PARTS)]
            lines += [f"| {n} | " + " | ".join(f"{100 * v:.1f}" for v in row[list(PARTS)]) + " |"
                      for n, row in table.iterrows()]
            lines.append("")
    _write_summary(out, lines)
    _write_text(out / PROVENANCE, json.dumps(facts, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


SUMMARY_STYLE = ("body { font-family: sans-serif; font-size: 14px; margin: 1em; } table { border-collapse: collapse; "
                 "margin: 0.5em 0 1.5em; } th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; } "
                 "th { background: #eee; } code { background: #f4f4f4; }")


def _write_summary(out: Path, lines: list[str]) -> None:
    """summary.md, and summary.html: the same Markdown as a web page, which Snakemake's HTML report (`snakemake
    --report`) shows with its tables (a CSV file there is only a download)."""
    text = "\n".join(lines) + "\n"
    _write_text(out / "summary.md", text)
    body = MarkdownIt("js-default").render(text)  # raw HTML in the text is escaped, tables are on
    _write_text(out / "summary.html", f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
                f'{html.escape(lines[0].lstrip("# "))}</title><style>{SUMMARY_STYLE}</style></head>\n'
                f'<body>\n{body}</body></html>\n')


def _training_curves(curves: pd.DataFrame, target: Path) -> None:
    pairs = curves.groupby(["dataset", "backbone"], sort=False)
    fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 3.2 * len(pairs)), squeeze=False)
    for row, ((dataset, backbone), group) in enumerate(pairs):
        for stage, curve in group.groupby("stage", sort=False):
            axes[row, 0].plot(curve["epoch"], curve["loss"], label=stage)
            axes[row, 1].plot(curve["epoch"], curve["val_acc"], label=stage)
        axes[row, 0].set(title=f"{dataset} / {backbone}: training loss (mean over seeds)", xlabel="epoch")
        axes[row, 1].set(title=f"{dataset} / {backbone}: validation top-1 (mean over seeds)", xlabel="epoch")
        axes[row, 1].legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, target)


def _ensemble_members(ensembles: pd.DataFrame, combine: str, target: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    prefixes = ensembles[ensembles["prefix"]]
    for (dataset, backbone), group in prefixes.groupby(["dataset", "backbone"], sort=False):
        stats = group.groupby("n_members")["top1"].agg(["mean", "std"]).fillna(0)
        ax.errorbar(stats.index, 100 * stats["mean"], yerr=100 * stats["std"], marker="o", capsize=3,
                    label=f"{dataset} / {backbone}")
    ax.set(xlabel="members (teacher, + student 1, + student 2, ...)", ylabel="top-1 (%)",
           title=f"Ensemble accuracy ({COMBINES[combine].text}) against the number of members")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, target)


GENERATED_MARK = ("<!-- Generated by `fgkd publish-results` from an experiment's reports: do not edit by hand. The "
                  "reading of these numbers is in index.md. -->")


def publish(reports: str | Path, page: str | Path, title: str | None = None) -> None:
    """Write ``page``, a results page of the documentation, whole from the reports: the provenance, the tables of both
    reports and the figures (in the folder named after the page, beside it, which holds nothing else). Both reports
    must come from one run: the same config digest, commit and combine rule, and the same numbers for the method's
    networks (the ablation report has them too). A page that this function did not write is never overwritten, and
    nothing is written unless everything checks out."""
    reports, page = Path(reports), Path(page)
    heading = f"Results: {page.stem}" if title is None else title
    if not heading.strip() or not heading.isprintable():
        raise FgkdError(f"--title {title!r}: give one line of printable text (it is the page's heading)")
    if page.suffix != ".md":
        raise FgkdError(f"--page {page}: not a Markdown file; give the results page to write, e.g. "
                        "docs/results/synthetic.md")
    if page.is_symlink():
        raise FgkdError(f"--page {page}: a symbolic link; give the page itself ({page.resolve()})")
    if page.exists() and GENERATED_MARK not in _read_utf8(page, "give another --page"):
        raise FgkdError(f"{page}: not a page written by publish-results (no generated-page mark), so it would be "
                        "lost; give a new page, or move it away first")
    figures = page.parent / page.stem
    if figures.is_dir() and any(not (f.is_file() and f.suffix == ".png") for f in figures.iterdir()):
        raise FgkdError(f"{figures}: holds more than a results page's figures, which publish-results replaces; give a "
                        "--page whose name no other folder beside it has")
    main, ablations = reports, reports / "ablations"
    facts = [_read_provenance(folder) for folder in (main, ablations)]
    for key in ("config_digest", "commit", "uncommitted_changes", "combine"):
        if facts[0][key] != facts[1][key]:
            raise FgkdError(f"{main / PROVENANCE} and {ablations / PROVENANCE}: made from other {key.replace('_', ' ')}s "
                            f"({facts[0][key]} and {facts[1][key]}): the tables would mix two runs; remake both from "
                            "one run: snakemake --cores all ablations --forcerun report report_ablations")
    _check_same_numbers(main, ablations, facts[0]["variants"][0])
    remake = "remake the reports: snakemake --cores all ablations --forcerun report report_ablations"
    blocks = []
    for folder in (main, ablations):
        lines = _read_utf8(folder / "summary.md", remake).splitlines()[1:]  # without the file's own title
        body = "\n".join(line for line in lines if not line.startswith("Made from: ")).strip()
        if not body:
            raise FgkdError(f"{folder / 'summary.md'}: no tables; {remake}")
        blocks.append(body)
    pngs = sorted(f for f in (reports / "figures").glob("*.png") if f.is_file())
    if not pngs:
        raise FgkdError(f"{reports / 'figures'}: no figures; {remake}")
    links = [f"![{png.stem}]({page.stem}/{png.name})" for png in pngs]
    text = "\n\n".join([f"# {heading}", GENERATED_MARK, provenance_line(facts[0]), *blocks, *links]) + "\n"
    with atomic_path(page) as tmp:  # the page is put in place last, after its figures
        tmp.write_text(text, encoding="utf-8")
        for png in pngs:
            with atomic_path(figures / png.name) as copy:
                copy.write_bytes(png.read_bytes())
        for stale in set(figures.glob("*.png")) - {figures / png.name for png in pngs}:
            stale.unlink()


def _read_utf8(path: Path, fix: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FgkdError(f"{path}: cannot be read as UTF-8 text ({brief(err)}); {fix}") from None


def _read_provenance(folder: Path) -> dict:
    for name in ("summary.md", PROVENANCE):
        if not (folder / name).is_file():
            raise FgkdError(f"{folder / name}: missing (made by an earlier fgkd, or not made); run `snakemake --cores "
                            "all ablations` first")
    try:
        facts = json.loads((folder / PROVENANCE).read_text())
    except ValueError as err:
        facts = f"unreadable ({err})"
    if not isinstance(facts, dict) or not PROVENANCE_KEYS <= facts.keys() or not (
            isinstance(facts["variants"], list) and facts["variants"]):
        raise FgkdError(f"{folder / PROVENANCE}: {facts if isinstance(facts, str) else 'not a record of provenance'}; "
                        "remake the reports: snakemake --cores all ablations --forcerun report report_ablations")
    if not facts.get("config_digest"):
        raise FgkdError(f"{folder / PROVENANCE}: made outside the workflow (no config digest), so nothing shows "
                        "which config its tables come from; make the reports with snakemake --cores all ablations")
    return facts


def _check_same_numbers(main: Path, ablations: Path, method: str) -> None:
    """The method's networks are in both reports: one run gives them the same top-1 and top-5 everywhere."""
    key = ["dataset", "backbone", "seed", "method", "selection"]
    ours = _read_table(main / "metrics.parquet", (*key, "top1", "top5"))
    theirs = _read_table(ablations / "metrics.parquet", (*key, "variant", "top1", "top5"))
    theirs = theirs[theirs["variant"] == method]
    joined = ours.merge(theirs, on=key, how="left", suffixes=("", "_ablations"))
    differs = joined[(joined["top1"] != joined["top1_ablations"]) | (joined["top5"] != joined["top5_ablations"])]
    if len(differs):
        row = differs.iloc[0]
        found = ("is missing from the other" if np.isnan(row["top1_ablations"]) else
                 f"has top-1 {row['top1']:.4f} in one and {row['top1_ablations']:.4f} in the other")
        raise FgkdError(f"{main / 'metrics.parquet'} and {ablations / 'metrics.parquet'}: {row['method']} of "
                        f"{row['dataset']}/{row['backbone']}/{row['seed']} ({row['selection']}) {found}: they come "
                        "from two runs; remake both: snakemake --cores all ablations --forcerun report report_ablations")
