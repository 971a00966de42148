"""The `fgkd` command line: a thin click layer over the library."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from .config import DEVICE_HELP, DEVICES, registry_names
from .data.synth import SynthParams
from .errors import LAUNCHED_ERRORS, FgkdError, one_line
from .metrics import COMBINES


class RegistryChoice(click.Choice):
    """The names of a registry (module, attribute) as a click.Choice, read from it whenever they are needed: the
    registries of the networks import torch, which `fgkd --help` and the torch-free commands do without."""

    def __init__(self, module: str, attribute: str):
        self.registry = (module, attribute)
        self.case_sensitive = True

    @property
    def choices(self) -> tuple:
        return registry_names(*self.registry)


class BackboneName(RegistryChoice):
    """A torchvision backbone of fgkd.models.BACKBONES, or timm-<name> (checked against timm by TrainConfig.check:
    timm takes seconds to import)."""

    def __init__(self):
        super().__init__("fgkd.models", "BACKBONES")

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join((*self.choices, "timm-NAME")) + "]"

    def convert(self, value, param, ctx):
        from .timm_trunk import TIMM_PREFIX

        if value in self.choices or (isinstance(value, str) and value.startswith(TIMM_PREFIX)):
            return value
        hint = f" (write {TIMM_PREFIX}{value[5:]}: the name is a folder of results/)" if value.startswith("timm/") else ""
        self.fail(f"{value!r} is not one of {', '.join(map(repr, self.choices))}, or {TIMM_PREFIX}NAME for a model "
                  f"of timm{hint}", param, ctx)


COMBINE = RegistryChoice("fgkd.metrics", "COMBINES")
DEVICE_METAVAR = "[" + "|".join(DEVICES) + "]"
SYNTH_DEFAULTS = SynthParams()  # the embedded default data set's difficulty


def _friendly(command):
    """Report FgkdError as one line (`Error: ...`, exit 1) instead of a traceback; in a process of `--processes N`, to
    the launcher, which prints it once for all (distributed.launch)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FgkdError as err:
            folder = os.environ.get(LAUNCHED_ERRORS)
            if folder and "RANK" in os.environ:
                Path(folder, os.environ["RANK"]).write_text(one_line(err), encoding="utf-8")
                sys.exit(1)
            raise click.ClickException(one_line(err)) from None

    return wrapper


@click.group()
@click.version_option(package_name="fgkd")
def main():
    """Fine-grained classification by knowledge distillation.

    The usual entry point is the Snakemake workflow: each command below is one step of its pipeline, which runs them
    for every data set, backbone and seed. Run a command by hand to redo or inspect one step.

    \b
      snakemake --cores all all        # on this machine (config/config.yaml)
      snakemake --profile slurm all    # on a SLURM cluster, each step a job

    Documentation: README.md, config/README.md (every config key) and the guide in docs/ (`mkdocs serve` to read
    it, `mkdocs build` to build the site).
    """


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write CUB_200_2011/ into.")
@click.option("--classes", default=10, show_default=True, help="Number of classes.")
@click.option("--images-per-class", default=60, show_default=True, help="Images per class (train + test).")
@click.option("--size", default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--occlusion", default=SYNTH_DEFAULTS.occlusion_prob, show_default=True, help="Probability that each part is occluded.")
@click.option("--clutter", default=SYNTH_DEFAULTS.clutter, show_default=True,
              help="Muted background glyphs per image (distractors).")
@click.option("--rotation", default=SYNTH_DEFAULTS.max_rotation_deg, show_default=True,
              help="Largest rotation of the object either way, in degrees.")
@click.option("--scale", nargs=2, type=float, default=SYNTH_DEFAULTS.scale_range, show_default=True,
              help="Smallest and largest length of the object as a share of the image side.")
@click.option("--noise", default=SYNTH_DEFAULTS.noise_std, show_default=True,
              help="Largest standard deviation of the pixel noise (grey levels; each image draws its own up to it).")
@click.option("--part-scale", default=SYNTH_DEFAULTS.part_scale, show_default=True,
              help="Size of the part markings (1.5 at most: the wing's and the belly's would cover each other).")
@click.option("--test-fraction", default=0.5, show_default=True, help="Share of each class in the test split.")
@click.option("--identity-parts", type=int, default=None,
              help="N >= 2: a class is a combination of markings over N part slots, one part alone cannot tell it "
                   "(default: every slot identifies the class).")
@click.option("--exclude-classes-of", multiple=True, type=click.Path(),
              help="A set written by fgkd synth (repeatable) whose classes this one must not have: a pretraining set "
                   "of other classes.")
@_friendly
def synth(out, classes, images_per_class, size, seed, occlusion, clutter, rotation, scale, noise, part_scale,
          test_fraction, identity_parts, exclude_classes_of):
    """Generate the synthetic fine-grained data set in the CUB-200-2011 layout."""
    from .data.synth import generate

    params = SynthParams.from_options(occlusion=occlusion, clutter=clutter, rotation=rotation, scale=scale,
                                      noise=noise, part_scale=part_scale)
    root = generate(out, classes, images_per_class, size, seed, params, test_fraction, identity_parts,
                    exclude_classes_of)
    click.echo(f"wrote {classes * images_per_class} images in {classes} classes to {root}")


@main.command()
@click.argument("dataset", type=RegistryChoice("fgkd.data.sources", "LOADERS"))
@click.option("--root", required=True, type=click.Path(), help="The data set's folder or official archive.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for manifest.parquet and images/.")
@click.option("--resize", default=512, show_default=True, help="Short side of the stored copies (never upscaled).")
@click.option("--workers", default=None, type=int, help="Decoding processes (default: CPU count, at most 8).")
@_friendly
def prepare(dataset, root, out, resize, workers):
    """Check a raw data set of the layout given first and write its manifest and resized images."""
    from .data.prepare import prepare as run_prepare

    manifest = run_prepare(dataset, root, out, resize=resize, workers=workers)
    click.echo(f"wrote {manifest}")


def _config_options(command):
    """One --option per TrainConfig field, with the field's default and type, or its registry's choices."""
    import dataclasses

    from .config import CHOICES, CONFIG_HELP, TYPES, WEIGHT_KEYWORDS, TrainConfig, option_flag

    metavars = {**{key: "[" + "|".join((*words, "FILE")) + "]" for key, words in WEIGHT_KEYWORDS.items()},
                "device": DEVICE_METAVAR}
    for field in reversed(dataclasses.fields(TrainConfig)):
        flag = option_flag(field.name)
        if field.type == "bool":
            flag = f"{flag}/--no-{flag[2:]}"
        kind = (BackboneName() if field.name == "backbone" else RegistryChoice(*CHOICES[field.name])
                if field.name in CHOICES else TYPES[field.type])
        command = click.option(flag, field.name, type=kind, default=field.default, show_default=True,
                               metavar=metavars.get(field.name), help=CONFIG_HELP[field.name])(command)
    return command


def _device_option(command):
    return click.option("--device", default="auto", show_default=True, metavar=DEVICE_METAVAR,
                        help=f"{DEVICE_HELP}.")(command)


@main.command()
@click.option("--stage", required=True, type=RegistryChoice("fgkd.stages", "METHOD_STAGES"),
              help="What to train: teacher (cross-entropy), student (orthogonal student k, with --index k) or auxkd "
                   "(the aux-KD student of the --earlier networks).")
@click.option("--index", type=int, default=None, help="Student number k (students only).")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="A prepared data set.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for model.pt and history.parquet.")
@click.option("--earlier", multiple=True, type=click.Path(), help="Frozen model.pt files, teacher first (repeat).")
@click.option("--name", default=None, help="Run name (default: teacher, student_k or auxkd); seeds the run.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Per-epoch progress bar.")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(min=1),
              help="Data-parallel processes on this node, one per GPU (started through torchrun); "
                   "--batch-size is per process.")
@_config_options
@_friendly
def train(stage, index, data, out, earlier, name, progress, processes, **config):
    """Train one stage: the CE teacher, orthogonal student k, or the aux-KD student.

    Several GPUs of one node: --processes N, or torchrun --nproc-per-node N -m fgkd train ... yourself.
    """
    from .distributed import from_environment, launch
    from .train import TrainConfig, train as run_train

    if processes > 1 and "WORLD_SIZE" not in os.environ:
        launch(processes, sys.argv[1:])
    processes = from_environment()
    _log_to_stderr(processes.main)
    written = run_train(stage, data, out, TrainConfig(**config), list(earlier), index, progress, name, processes)
    if processes.main:
        click.echo(f"wrote {written}")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(), help="A model.pt from `fgkd train`.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="A prepared data set.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The logits Parquet file to write.")
@click.option("--which", type=RegistryChoice("fgkd.modelfile", "WEIGHTS"), default="best", show_default=True,
              help="Weights of the best validation epoch, or of the last epoch.")
@click.option("--out-last", type=click.Path(dir_okay=False),
              help="Also write the last epoch's logits here (with --which best), in the same process.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Test images per forward pass.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="DataLoader worker processes.")
@_device_option
@_friendly
def predict(model_path, data, out, which, out_last, batch_size, workers, device):
    """Write the test-split logits of a trained model."""
    from .ensemble import predict as run_predict

    run_predict(model_path, data, out, which, batch_size, workers, device, out_last)
    click.echo(f"wrote {out}" + (f" and {out_last}" if out_last else ""))


@main.command()
@click.argument("logits", nargs=-1, required=True, type=click.Path())
@click.option("--names", help="Comma-separated member names (default: the folder name of each file).")
@click.option("--combine", type=COMBINE, default="logits", show_default=True,
              help="; ".join(f"{name}: {rule.text}" for name, rule in COMBINES.items()) + ".")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The ensemble Parquet file to write.")
@_friendly
def ensemble(logits, names, combine, out):
    """Accuracy of the first member, the first two, ... (and every subset when few) from cached logits."""
    from pathlib import Path

    from .atomic import refuse_to_overwrite_inputs, write_parquet
    from .ensemble import ensemble as run_ensemble

    refuse_to_overwrite_inputs(out, logits)
    members = names.split(",") if names else [Path(p).parent.name for p in logits]
    frame = run_ensemble(list(logits), members, combine)
    write_parquet(frame, out)
    for row in frame[frame["prefix"]].itertuples():
        click.echo(f"{row.members:<60} top1 {row.top1:.4f}  top5 {row.top5:.4f}")


@main.command()
@click.argument("targets", metavar="IMAGE|DIR...", nargs=-1, required=True, type=click.Path())
@click.option("--model", "models", multiple=True, required=True, type=click.Path(),
              help="A model.pt from `fgkd train`; repeat it for their ensemble.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1),
              help="Classes shown per image (at most the model's classes).")
@click.option("--combine", type=COMBINE, default="logits", show_default=True,
              help="How an ensemble combines its networks (as `fgkd ensemble --combine`).")
@click.option("--overlay", type=click.Path(file_okay=False),
              help="Folder for one PNG per image (its name + .png): the image with the attention map on the part the "
                   "network sees; for an ensemble, the mean of the networks' maps.")
@click.option("--format", "output_format", type=RegistryChoice("fgkd.classify", "FORMATTERS"), default="table",
              show_default=True, help="A readable table, CSV with a header, or a JSON list of images.")
@_device_option
@_friendly
def classify(targets, models, top_k, combine, overlay, output_format, device):
    """Top classes with their probabilities for images, and for every image file in a folder (sorted).

    Preprocessing is the one saved in each model.pt. An image that cannot be read gets one line on stderr and the
    others are still classified; the exit status is then 1.
    """
    from .classify import FORMATTERS, check_overlay_folder, classify as run_classify, image_files, load_ensemble

    images = image_files(list(targets))
    if overlay is not None:
        check_overlay_folder(overlay, images)
    ensemble = load_ensemble(list(models), device)
    if ensemble.class_names is None:
        click.echo(f"note: {', '.join(map(str, ensemble.paths))} saved no class names (written by an earlier fgkd); "
                   "classes are shown by their index", err=True)
    results = []
    for result in run_classify(ensemble, images, top_k, combine, overlay):
        if result.error:
            click.echo(result.error, err=True)
        results.append(result)
    click.echo(FORMATTERS[output_format](results), nl=False)
    failed = sum(1 for r in results if r.error)
    if failed:
        raise click.ClickException(f"{failed} of {len(results)} images could not be read (named above); the others "
                                   "are classified")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(), help="A model.pt from `fgkd train`.")
@click.option("--format", "export_format", required=True, type=RegistryChoice("fgkd.export", "WRITERS"),
              help="TorchScript (torch.jit.load) or ONNX (onnxruntime and other runtimes).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The file to write; its model card goes beside it, as the same name + .json.")
@_friendly
def export(model_path, export_format, out):
    """The network (main head's logits, best-on-validation weights) for deployment, with a JSON model card: data set,
    class names, preprocessing, input size, the run's metrics, config digest."""
    from .export import export as run_export

    written, card = run_export(model_path, export_format, out)
    click.echo(f"wrote {written} and {card}")


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="A prepared data set.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="A model.pt to check (left out: the data set itself is checked).")
@click.option("--stage", help="The stage the model must be (teacher, student_1, ..., auxkd, auxkd_ce, auxkd_single).")
@click.option("--config-hash", help="The config hash the model must have (the workflow computes it from the config).")
@click.option("--earlier", multiple=True, type=click.Path(), help="The model.pt files it must have learnt from, in "
                                                                   "order (repeat).")
@click.option("--start", type=click.Path(), help="The start-weights file it must have started from (pretrained or "
                                                 "init_from); left out: none.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="A JSON record, written when all holds.")
@_friendly
def verify(data, model_path, stage, config_hash, earlier, start, out):
    """Check that a prepared data set, or a model.pt of it, is what a job expects, then replace links into
    Snakemake's output cache by private copies (the workflow runs this after every data set and network)."""
    from pathlib import Path

    from .atomic import refuse_to_overwrite_inputs
    from .verify import check_data, check_model, own_copy, write_stamp

    if Path(out).resolve().is_relative_to(Path(data).resolve()):
        raise FgkdError(f"--out {out}: inside the data set {data}, which holds what `fgkd prepare` wrote and nothing "
                        "else; choose a path outside it")
    inputs = [p for p in [model_path, *earlier, start] if p]
    if model_path:
        inputs.append(os.path.join(os.path.dirname(model_path), "history.parquet"))
    refuse_to_overwrite_inputs(out, inputs)
    if model_path is None:
        facts = {"data": data, "digest": check_data(data)}
        own_copy(data)
    else:
        if not (stage and config_hash):
            raise click.UsageError("--model needs --stage and --config-hash")
        meta = check_model(model_path, stage, config_hash, data, list(earlier), start)
        facts = {"model": model_path, "stage": stage, "config_hash": config_hash, "data_digest": meta["data_digest"],
                 "earlier": [entry["sha256"] for entry in meta["earlier"]]}
        own_copy(model_path)
        own_copy(os.path.join(os.path.dirname(model_path), "history.parquet"))
    write_stamp(out, facts)


def _log_to_stderr(main_process: bool = True):
    """Progress lines from one process only (under torchrun, the others log warnings and errors)."""
    import logging

    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")


@main.command()
@click.option("--model", "models", multiple=True, required=True, type=click.Path(), help="model.pt files (repeat).")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="A prepared data set.")
@click.option("--images", default=8, show_default=True, type=click.IntRange(min=1),
              help="Test images shown in the figure.")
@click.option("--overlap", required=True, type=click.Path(dir_okay=False), help="Pairwise overlap Parquet to write.")
@click.option("--figure", required=True, type=click.Path(dir_okay=False), help="Attention-map grid PNG to write.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Test images per forward pass (memory grows with it, not with the image count).")
@_device_option
@_friendly
def attention(models, data, images, overlap, figure, batch_size, device):
    """Attention maps of several networks over the same test images, and their mean pairwise overlap."""
    from .report import attention as run_attention

    run_attention(list(models), data, images, overlap, figure, batch_size, device)


def _parse_runs(ctx, param, runs):
    """dataset/backbone/seed, the seed an integer: the run's folder is results/dataset/backbone/seed{seed}."""
    parsed = []
    for run in runs:
        parts = run.split("/")
        if len(parts) != 3 or not all(parts) or not parts[2].isdigit():
            raise click.BadParameter(f"{run!r} is not dataset/backbone/seed with an integer seed (e.g. "
                                     "synthetic/resnet10/0, not a folder such as results/synthetic/resnet10/seed0)")
        parsed.append((parts[0], parts[1], int(parts[2])))
    return parsed


@main.command()
@click.option("--results", required=True, type=click.Path(exists=True, file_okay=False),
              help="The workflow's results folder, holding DATASET/BACKBONE/seedN of each --run.")
@click.option("--run", "runs", multiple=True, required=True, callback=_parse_runs,
              help="dataset/backbone/seed, e.g. synthetic/resnet10/0 (repeat).")
@click.option("--variants", required=True, help="Comma-separated variants; the first is the method.")
@click.option("--students", required=True, type=click.IntRange(min=1), help="Number of students K.")
@click.option("--combine", type=COMBINE, default="logits", show_default=True,
              help="How ensembles are combined; must match the ensemble.parquet files (fgkd ensemble --combine).")
@click.option("--ablations", is_flag=True, help="Write the ablation report (variants, aux-KD baselines, parts).")
@click.option("--config-digest", help="The workflow config's digest, recorded in provenance.json (the workflow "
                                      "passes it; publish-results requires it).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the tables, summary.md, figures and metrics.")
@_friendly
def report(results, runs, variants, students, combine, ablations, config_digest, out):
    """Collect all results into Parquet tables, summary.md, figures and DVC metrics."""
    from .report import ablation_report, check_unique, report as main_report

    names = variants.split(",")
    check_unique(runs, names)
    if ablations:
        ablation_report(results, runs, names, students, out, combine, config_digest)
    else:
        main_report(results, runs, names[0], students, out, combine, config_digest)
    click.echo(f"wrote {out}")


@main.command("part-occlusion")
@click.option("--raw", required=True, type=click.Path(exists=True, file_okay=False), help="The `fgkd synth` output.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Its prepared copy.")
@click.option("--model", "models", multiple=True, required=True, type=click.Path(), help="model.pt files (repeat).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The Parquet file to write.")
@click.option("--combine", type=COMBINE, default="logits", show_default=True,
              help="How the ensemble row combines the networks (as `fgkd ensemble --combine`).")
@click.option("--attention-out", type=click.Path(dir_okay=False),
              help="Also write each network's share of attention on each part (network, part, share, area) to this "
                   "Parquet file.")
@_friendly
def part_occlusion(raw, data, models, out, combine, attention_out):
    """Synthetic sets: top-1 of each network with one part hidden, or only one part visible; and where on the parts
    each network's attention falls."""
    from .occlusion import part_occlusion as run

    frame = run(raw, data, list(models), out, combine=combine, attention_out=attention_out)
    click.echo(frame.pivot(index="condition", columns="network", values="top1").round(3).to_string())


@main.command("publish-results", hidden=True)
@click.option("--reports", default="results/reports", show_default=True, type=click.Path(file_okay=False),
              help="The report folder `fgkd report` wrote (its ablations/ beside).")
@click.option("--page", required=True, type=click.Path(dir_okay=False),
              help="The results page to write, e.g. docs/results/synthetic.md; its figures go into the folder of "
                   "its name beside it (docs/results/synthetic/).")
@click.option("--title", help="The page's title  [default: Results: PAGE NAME]")
@_friendly
def publish_results(reports, page, title):
    """Write a results page of the documentation from the reports (after `snakemake --cores all ablations`)."""
    from .report import publish

    publish(reports, page, title)
    click.echo(f"wrote {page} and its figures")
