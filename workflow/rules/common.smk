# The config, checked before any job starts, and the helpers shared by the rules: names, paths, the
# CLI flags of each stage.
import math
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

from jsonschema import ValidationError
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import fgkd
import fgkd.stages
from fgkd.config import (
    WEIGHT_KEYWORDS,
    TrainConfig,
    cli_flags,
)  # torch-free: the options of `fgkd train` and their checks
from fgkd.data.synth import check_identity_parts
from fgkd.errors import FgkdError
from fgkd.stale_lock import remove_stale_locks


def config_error(message):
    """A config mistake is the user's to fix: one line naming the key, no traceback, before any job."""
    print(f"config error: {message}", file=sys.stderr)
    sys.exit(1)


def describe_invalid(error):
    """One line for a schema violation: the key's path, what is wrong, and what is allowed there."""
    where = ".".join(str(p) for p in error.absolute_path) or "the config"
    if error.validator == "additionalProperties":
        allowed = ", ".join(error.schema.get("properties", {})) or "none"
        unexpected = ", ".join(sorted(set(error.instance) - set(error.schema.get("properties", {}))))
        return f"{where}: unknown key {unexpected} (allowed: {allowed})"
    if error.validator == "required" and not error.absolute_path:
        return (
            f"{error.message}. A --configfile is a whole experiment: config/config.yaml is not read then; to "
            "extend it, give both: --configfile config/config.yaml yours.yaml"
        )
    if error.validator == "oneOf":
        return f"{where}: give exactly one of `raw` (the folder or archive) and `synth` (generator settings)"
    if "propertyNames" in error.absolute_schema_path:
        return f"{where}: the name {error.instance!r} is not allowed ({error.schema.get('description', error.message)})"
    message = error.message if len(error.message) < 300 else f"{error.message[:300]}..."
    return f"{where}: {message}"


def non_finite_keys(value, where=""):
    """NaN and infinity pass JSON-schema bounds (every comparison with NaN is false): find them here."""
    if isinstance(value, dict):
        return [k for key, item in value.items() for k in non_finite_keys(item, f"{where}.{key}" if where else key)]
    if isinstance(value, list):
        return [k for i, item in enumerate(value) for k in non_finite_keys(item, f"{where}[{i}]")]
    return [where] if isinstance(value, float) and not math.isfinite(value) else []


try:
    validate(config, "../schemas/config.schema.yaml")  # also fills in the schema's defaults
except WorkflowError as err:
    invalid = err.__context__  # validate() raises while handling jsonschema's error
    config_error(describe_invalid(invalid) if isinstance(invalid, ValidationError) else str(err).splitlines()[0])
for _key in non_finite_keys(config):
    config_error(f"{_key}: must be a finite number, not NaN or infinity")

STUDENTS = [f"student_{k}" for k in range(1, config["students"] + 1)]
MEMBERS = ["teacher", *STUDENTS]
SHARED_STAGES = list(fgkd.stages.SHARED_STAGES)  # do not depend on the students' variant
SEED_DIR = "results/{dataset}/{backbone}/seed{seed}"
VARIANT_DIR = "results/{dataset}/{backbone}/seed{seed}/{variant}"
METHOD = config["method"]
ABLATIONS = config["ablations"]
STUDIED_VARIANTS = [METHOD, *ABLATIONS]  # the method and its ablations, in report order

for _name in STUDIED_VARIANTS:
    if _name not in config["variants"]:
        config_error(f"method/ablations: {_name!r} is not defined under variants ({', '.join(config['variants'])})")
for _name in config["run_datasets"]:
    if _name not in config["datasets"]:
        config_error(f"run_datasets: {_name!r} is not defined under datasets ({', '.join(config['datasets'])})")
    _raw = config["datasets"][_name].get("raw")
    if _raw and not Path(_raw).exists():
        config_error(
            f"datasets.{_name}.raw: {_raw} does not exist; put the official folder or archive there "
            "(or `dvc pull` it), or change the path"
        )

# Snakemake's between-workflow cache (--cache) keys a job by its rule's command, its params, the content of its input
# files and the same of every job upstream; fgkd's code is not among them, so its version is a param of the
# cached rules. Snakemake hashes files only: a raw data set given as a folder cannot be part of a key.
FGKD_VERSION = fgkd.__version__
if workflow.workflow_settings.cache is not None:
    for _name in config["run_datasets"]:
        _raw = config["datasets"][_name].get("raw")
        if _raw and Path(_raw).is_dir():
            config_error(
                f"datasets.{_name}.raw: {_raw} is a folder, and --cache keys jobs by the content of input files, "
                f"which Snakemake computes for files only; pack it (tar -cf {_raw}.tar -C {Path(_raw).parent} "
                f"{Path(_raw).name}) and set raw to the .tar, or run without --cache"
            )

for _stage in config["stages"]:
    if _stage.startswith("student_") and int(_stage.split("_")[1]) > config["students"]:
        config_error(f"stages.{_stage}: there are only {config['students']} students (students: {config['students']})")

# Training jobs ask for gpus_per_job GPUs and run that many data-parallel processes (train_processes
# overrides it: several CPU processes on a CPU cluster); evaluation jobs need one GPU at most.
TRAIN_PROCESSES = config["train_processes"] or max(1, config["gpus_per_job"])
EVAL_GPUS = min(1, config["gpus_per_job"])

RUNS = [(d, b, s) for d in config["run_datasets"] for b in config["backbones"] for s in config["seeds"]]
PAIRS = [(d, b) for d in config["run_datasets"] for b in config["backbones"]]
SYNTHETIC = [d for d in config["run_datasets"] if "synth" in config["datasets"][d]]


def excluded_sets(dataset):
    """The synthetic sets whose classes this one must not have (datasets.<name>.synth.exclude_classes_of)."""
    return config["datasets"][dataset].get("synth", {}).get("exclude_classes_of", [])


for _name, _spec in config["datasets"].items():
    if "synth" not in _spec:
        continue
    try:
        check_identity_parts(_spec["synth"].get("classes"), _spec["synth"].get("identity_parts"))
    except FgkdError as err:
        config_error(f"datasets.{_name}.synth: {err}")
    _excluded = excluded_sets(_name)
    if _excluded and "identity_parts" in _spec["synth"]:
        config_error(
            f"datasets.{_name}.synth: exclude_classes_of works in the default mode only (every slot identifies the "
            "class); leave out identity_parts"
        )
    for _other in _excluded:
        if _other == _name or "synth" not in config["datasets"].get(_other, {}):
            config_error(
                f"datasets.{_name}.synth.exclude_classes_of: {_other!r} is not another synthetic data set of this "
                f"config ({', '.join(n for n in config['datasets'] if n != _name and 'synth' in config['datasets'][n])})"
            )


def seed_dir(dataset, backbone, seed):
    return SEED_DIR.format(dataset=dataset, backbone=backbone, seed=seed)


def variant_dir(dataset, backbone, seed, variant):
    return VARIANT_DIR.format(dataset=dataset, backbone=backbone, seed=seed, variant=variant)


def member_dirs(dataset, backbone, seed, variant):
    """Teacher (shared by every variant) and the variant's students, in order."""
    return [f"{seed_dir(dataset, backbone, seed)}/teacher"] + [
        f"{variant_dir(dataset, backbone, seed, variant)}/{s}" for s in STUDENTS
    ]


REPORTS = [
    "results/reports/metrics.parquet",
    "results/reports/ensembles.parquet",
    "results/reports/history.parquet",
    "results/reports/comparisons.parquet",
    "results/reports/summary.md",
    "results/reports/metrics.json",
    "results/reports/curves.csv",
    "results/reports/figures/training_curves.png",
    "results/reports/figures/ensemble_members.png",
    *[f"results/reports/figures/attention_{d}_{b}.png" for d, b in PAIRS],
]
ABLATION_REPORTS = [
    "results/reports/ablations/metrics.parquet",
    "results/reports/ablations/part_occlusion.parquet",
    "results/reports/ablations/comparisons.parquet",
    "results/reports/ablations/summary.md",
]


wildcard_constraints:
    dataset="|".join(map(re.escape, config["datasets"])),
    backbone="[A-Za-z0-9_]+",
    seed="[0-9]+",
    variant="|".join(map(re.escape, config["variants"])),
    shared="|".join(SHARED_STAGES),
    stage="student_[0-9]+|auxkd",


WEIGHT_PLACEHOLDERS = ("dataset", "backbone", "seed")


def job_path(key, path, wildcards):
    """A start-weights path with {dataset}, {backbone} and {seed} filled from the job (a config may train several
    backbones, each from its own file)."""
    try:
        return path.format_map({name: str(getattr(wildcards, name)) for name in WEIGHT_PLACEHOLDERS})
    except KeyError as err:
        problem = f"{{{err.args[0]}}} is not a placeholder here"
    except (ValueError, IndexError) as err:  # a lone brace, {0}, a format spec
        problem = str(err)
    raise FgkdError(
        f"{key}: {path!r}: {problem}; use {', '.join(f'{{{n}}}' for n in WEIGHT_PLACEHOLDERS)} "
        "({{ and }} for a literal brace)"
    )


def train_options(wildcards, stage, variant=None):
    """train, the backbone's train, the data set's train, backbone and seed from the path, the variant
    (students only), then the stage's overrides (aux-KD baselines inherit the aux-KD student's); pretrained:
    true/false is imagenet/none, and the start-weights paths are filled for the job."""
    options = {
        **config["train"],
        **config["backbone_train"].get(wildcards.backbone, {}),
        **config["datasets"][wildcards.dataset].get("train", {}),
    }
    options.update(backbone=wildcards.backbone, seed=int(wildcards.seed))
    if variant is not None and stage.startswith("student"):
        options.update(config["variants"][variant])
    stages = config["stages"]
    if stage in fgkd.stages.AUXKD_BASELINES:
        options.update(stages.get("auxkd", {}))
    options.update(stages.get(stage, {}))
    if isinstance(options.get("pretrained"), bool):
        options["pretrained"] = "imagenet" if options["pretrained"] else "none"
    for key in WEIGHT_KEYWORDS:
        if key in options:
            options[key] = job_path(key, options[key], wildcards)
    return options


def start_files(wildcards, stage, variant=None):
    """The stage's start-weights files: inputs of its job, so that Snakemake retrains it when they change."""
    return list(TrainConfig(**train_options(wildcards, stage, variant)).weight_files().values())


def check_stage_options():
    """What the schema cannot say, for every network the config trains (e.g. a crop larger than its resize, a
    start-weights file that is not there): the checks of `fgkd train` itself, run while planning rather than after
    hours of data preparation. A file under results/ may be written by a job of this workflow (transfer from the
    model of another data set, the pretrained-start regime): those files are returned."""
    stages = [(stage, None) for stage in SHARED_STAGES] + [
        (stage, variant) for variant in STUDIED_VARIANTS for stage in [*STUDENTS, "auxkd"]
    ]
    made_here = set()
    for dataset, backbone, seed in RUNS:
        where = SimpleNamespace(dataset=dataset, backbone=backbone, seed=seed)
        for stage, variant in stages:
            try:
                options = TrainConfig(**train_options(where, stage, variant))
                options.check_values()
                made_later = tuple(p for p in options.weight_files().values() if Path(p).parts[:1] == ("results",))
                options.check_files(made_later=made_later)
                made_here.update(made_later)
            except FgkdError as err:
                config_error(f"{dataset} / {variant or 'shared'} / {stage}: {err}")
    return sorted(made_here)


START_MODELS = check_stage_options()  # the `pretrain` target


def train_flags(wildcards, stage, variant=None):
    """The stage's options as `fgkd train` flags, every value quoted for the shell."""
    return shlex.join(cli_flags(train_options(wildcards, stage, variant)))


remove_stale_locks()


# Inputs and flags of the rules (workflow/rules/*.smk).


def raw_input(wildcards):
    spec = config["datasets"][wildcards.dataset]
    return f"data/raw/{wildcards.dataset}" if "synth" in spec else spec["raw"]


def earlier_flags(wildcards, input):
    return " ".join(f"--earlier {shlex.quote(m)}" for m in input.earlier)


def variant_earlier(wc):
    """Student k learns against the teacher and students 1..k-1; the aux-KD student imitates all."""
    members = [f"{d}/model.pt" for d in member_dirs(wc.dataset, wc.backbone, wc.seed, wc.variant)]
    return members if wc.stage == "auxkd" else members[: int(wc.stage.split("_")[1])]


def model_flags(wildcards, input):
    return " ".join(f"--model {shlex.quote(m)}" for m in input.models)


def report_figure(path):
    """Mark a figure for `snakemake --report`, with the caption of its kind."""
    kind = Path(path).stem
    kind = "attention" if kind.startswith("attention") else kind
    return report(path, caption=f"../report/{kind}.rst", category="Figures")


MODEL_FILES = (
    "history.parquet",
    "logits.parquet",
    "logits_last.parquet",
)  # what a report reads of each network


def run_files(variants, names, aux=()):
    files = []
    for d, b, s in RUNS:
        for stage in ("teacher", *aux):
            files += [f"{seed_dir(d, b, s)}/{stage}/{n}" for n in MODEL_FILES]
        for v in variants:
            vd = variant_dir(d, b, s, v)
            stages = [*STUDENTS, *(["auxkd"] if v == METHOD else [])]
            files += [f"{vd}/{stage}/{n}" for stage in stages for n in MODEL_FILES]
            files += [f"{vd}/{n}" for n in names]
    return files


RUN_FLAGS = " ".join(f"--run {shlex.quote(f'{d}/{b}/{s}')}" for d, b, s in RUNS)
COMBINE = config["ensemble"]["combine"]
