# The config, checked before any job starts, and the helpers shared by the rules: names, paths, the
# CLI flags of each stage.
import functools
import hashlib
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

from jsonschema import ValidationError
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

import fgkd
import fgkd.stages
from fgkd.config import (
    WEIGHT_KEYWORDS,
    TrainConfig,
    cli_flags,
    config_hash,
)  # torch-free: the options of `fgkd train`, their checks and a run's identity
from fgkd.data.synth import SynthParams, check_identity_parts
from fgkd.errors import FgkdError
from fgkd.metrics import COMBINES
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
    if error.validator == "oneOf" and list(error.absolute_path)[:1] == ["datasets"] and len(error.absolute_path) == 2:
        return f"{where}: give exactly one of `raw` (the folder or archive) and `synth` (generator settings)"
    if "propertyNames" in error.absolute_schema_path:
        return f"{where}: the name {error.instance!r} is not allowed ({error.schema.get('description', error.message)})"
    if error.validator in ("oneOf", "anyOf"):
        named = [value for option in error.validator_value for value in option.get("enum", [])]
        listed = f"not one of {named}" if named else "not allowed here"
        return f"{where}: {error.instance!r} is {listed} ({error.schema.get('description', error.message)})"
    if error.validator == "enum" and isinstance(error.instance, bool) and {"on", "off"} & set(error.validator_value):
        return (
            f"{where}: {str(error.instance).lower()} is not one of {error.validator_value}: YAML reads an unquoted on "
            'or off as true or false; write it quoted ("on", "off")'
        )
    message = error.message if len(error.message) < 300 else f"{error.message[:300]}..."
    return f"{where}: {message}"


def non_finite_keys(value, where=""):
    """NaN and infinity pass JSON-schema bounds (every comparison with NaN is false): find them here."""
    if isinstance(value, dict):
        return [k for key, item in value.items() for k in non_finite_keys(item, f"{where}.{key}" if where else key)]
    if isinstance(value, list):
        return [k for i, item in enumerate(value) for k in non_finite_keys(item, f"{where}[{i}]")]
    return [where] if isinstance(value, float) and not math.isfinite(value) else []


SCHEMA = yaml.safe_load(Path(workflow.basedir, "workflow", "schemas", "config.schema.yaml").read_text())
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", type(None): "null", str: "string"}


def schema_types(schema):
    """The JSON types a schema node allows (through $ref, oneOf, type and enum)."""
    while "$ref" in schema:
        schema = SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    kinds = set([schema["type"]] if isinstance(schema.get("type"), str) else schema.get("type", []))
    kinds |= {JSON_TYPES[type(v)] for v in schema.get("enum", [])}
    for alternative in schema.get("oneOf", []):
        kinds |= schema_types(alternative)[0]
    return kinds, schema


WORDS = {
    "boolean": {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False},
    "null": {"null": None, "~": None, "": None},
}


def spelled(text, kinds):
    """The value a --config string spells, of the first type in integer, number, boolean, null that the schema allows
    (decimal only: YAML 1.1 would read 010 as 8 and 1:30 as 90); else the string itself."""
    for kind, parse in (("integer", lambda t: int(t, 10)), ("number", float)):
        if kind in kinds:
            try:
                return parse(text.strip())
            except ValueError:
                pass
    for kind in ("boolean", "null"):
        if kind in kinds and text.strip().lower() in WORDS[kind]:
            return WORDS[kind][text.strip().lower()]
    return text


def typed(value, schema, strings=True):
    """A config value with the types the schema gives its keys. Snakemake reads `seeds=[1]` and `train={epochs: 5}`
    given to --config as YAML whose every scalar is a string (['1'], {'epochs': '5'}), which the schema would refuse:
    ``strings`` turns each into the value it spells. And JSON Schema takes 2.0 for an integer, which a range() or an
    `fgkd train --epochs` would refuse after hours: a whole float where only an integer belongs becomes the integer."""
    kinds, schema = schema_types(schema)
    if isinstance(value, dict):
        known, other = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: typed(v, known.get(k, other if isinstance(other, dict) else {}), strings) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v, schema.get("items", {}), strings) for v in value]
    if isinstance(value, float) and value.is_integer() and "integer" in kinds and "number" not in kinds:
        return int(value)
    if isinstance(value, str) and strings:
        return spelled(value, kinds)
    return value


update_config(config, typed(dict(workflow.config_settings.config), SCHEMA))
config.update(typed(config, SCHEMA, strings=False))
try:
    validate(config, "../schemas/config.schema.yaml")  # also fills in the schema's defaults
except WorkflowError as err:
    invalid = err.__context__  # validate() raises while handling jsonschema's error
    config_error(describe_invalid(invalid) if isinstance(invalid, ValidationError) else str(err).splitlines()[0])
for _key in non_finite_keys(config):
    config_error(f"{_key}: must be a finite number, not NaN or infinity")

# The experiment grid sets each run's seed and backbone and names its folder after them: a `seed` or `backbone` key
# elsewhere would be ignored, or contradict the folder. (The aux-KD student may have a backbone of its own: its stage
# options, where the report's parameter counts show it.)
GRID_KEYS = {"seed": "seeds", "backbone": "backbones"}
OWN_BACKBONE = ("auxkd", *fgkd.stages.AUXKD_BASELINES)
_option_sets = [
    ("train", config["train"]),
    *((f"backbone_train.{b}", o) for b, o in config["backbone_train"].items()),
    *((f"datasets.{d}.train", s["train"]) for d, s in config["datasets"].items() if "train" in s),
    *((f"variants.{v}", o) for v, o in config["variants"].items()),
    *((f"stages.{s}", o) for s, o in config["stages"].items()),
]
for _where, _options in _option_sets:
    for _key, _grid in GRID_KEYS.items():
        if _key in _options and not (_key == "backbone" and _where in [f"stages.{s}" for s in OWN_BACKBONE]):
            config_error(
                f"{_where}.{_key}: the experiment grid sets every run's {_key} (`{_grid}: [{', '.join(map(str, config[_grid]))}]`) and names "
                f"its folder after it; list the {_grid} to run under `{_grid}:` and leave {_key} out here"
                + (
                    "; only the aux-KD stages (stages.auxkd, ...) may train another backbone"
                    if _key == "backbone"
                    else ""
                )
            )

STUDENTS = [f"student_{k}" for k in range(1, config["students"] + 1)]
MEMBERS = ["teacher", *STUDENTS]
SHARED_STAGES = list(fgkd.stages.SHARED_STAGES)  # do not depend on the students' variant
SEED_DIR = "results/{dataset}/{backbone}/seed{seed}"
VARIANT_DIR = "results/{dataset}/{backbone}/seed{seed}/{variant}"
METHOD = config["method"]
ABLATIONS = config["ablations"]
STUDIED_VARIANTS = [METHOD, *ABLATIONS]  # the method and its ablations, in report order

if METHOD in ABLATIONS:
    config_error(
        f"ablations: {METHOD!r} is the method (method: {METHOD}), which every report has already; a variant listed "
        "twice would count its seeds twice in the comparisons: leave it out of ablations"
    )
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
    if not os.environ.get("SNAKEMAKE_OUTPUT_CACHE"):
        config_error(
            "--cache needs the cache's folder in the environment variable SNAKEMAKE_OUTPUT_CACHE (e.g. export "
            "SNAKEMAKE_OUTPUT_CACHE=/shared/fgkd-cache), or run without --cache"
        )
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
# overrides it: several CPU processes on a CPU cluster); evaluation jobs need one GPU at most, none if
# resources.evaluate.gpus is 0.
TRAIN_PROCESSES = config["train_processes"] or max(1, config["gpus_per_job"])
_evaluate_gpus = config["resources"]["evaluate"]["gpus"]
EVAL_GPUS = min(1, config["gpus_per_job"]) if _evaluate_gpus is None else _evaluate_gpus

# What each kind of job asks SLURM for (config key resources). Partition, account, constraint, qos and extra sbatch
# options go into a job's resources only where the config sets them: else the profile's default-resources apply.
SLURM_CHOICES = ("cpus_per_task", "slurm_partition", "slurm_account", "constraint", "qos")
PREEMPTION_SIGNAL = "--signal=USR1@120"  # also slurm/config.yaml's default slurm_extra: training checkpoints on it


def sbatch_extra(kind, extra):
    """A kind's own sbatch options, after the time-limit signal unless they give their own --signal (a kind's
    slurm_extra replaces the profile's). Options the SLURM plugin sets itself, which it would refuse at the first
    submission, are refused here, before any job."""
    from snakemake_executor_plugin_slurm.validation import get_forbidden_slurm_options

    for pattern, option in get_forbidden_slurm_options().items():
        if re.search(pattern, extra):
            config_error(
                f"resources.{kind}.slurm_extra: {extra!r} sets the {option}, which the SLURM plugin sets itself: "
                f"use runtime, mem_mb, {', '.join(SLURM_CHOICES)} under resources.{kind} (GPUs: gpus_per_job, "
                "resources.evaluate.gpus)"
            )
    return extra if "--signal" in extra else f"{PREEMPTION_SIGNAL} {extra}"


def job_resources(kind, gpus=None):
    """What a job of this kind asks for: runtime, memory, its GPUs if it uses any, and what else the config sets."""
    spec = config["resources"][kind]
    resources = {"mem_mb": spec["mem_mb"], "runtime": spec["runtime"], **({} if gpus is None else {"gpu": gpus})}
    resources.update({key: spec[key] for key in SLURM_CHOICES if key in spec})
    if "slurm_extra" in spec:
        resources["slurm_extra"] = sbatch_extra(kind, spec["slurm_extra"])
    return resources


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
        SynthParams.from_config(_spec["synth"])
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
    "results/reports/summary.html",
    "results/reports/metrics.json",
    "results/reports/curves.csv",
    "results/reports/provenance.json",
    "results/reports/figures/training_curves.png",
    "results/reports/figures/ensemble_members.png",
    *[f"results/reports/figures/attention_{d}_{b}.png" for d, b in PAIRS],
]
ABLATION_REPORTS = [
    "results/reports/ablations/metrics.parquet",
    "results/reports/ablations/part_occlusion.parquet",
    "results/reports/ablations/part_attention.parquet",
    "results/reports/ablations/comparisons.parquet",
    "results/reports/ablations/summary.md",
    "results/reports/ablations/summary.html",
    "results/reports/ablations/provenance.json",
]


wildcard_constraints:
    dataset="|".join(map(re.escape, config["datasets"])),
    backbone="[A-Za-z0-9_-]+",
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


def start_verified(wildcards, stage, variant=None):
    """The checks of the start-weights files that this workflow makes (a model.pt under results/): a job starts only
    from a checked network."""
    return verified([p for p in start_files(wildcards, stage, variant) if Path(p).parts[:1] == ("results",)])


def start_flag(wildcards, stage, variant=None):
    return " ".join(f"--start {shlex.quote(p)}" for p in start_files(wildcards, stage, variant))


# The model.pt files the train rules can make: what a start-weights path under results/ must be.
MADE_HERE = re.compile(
    r"results/(?:{datasets})/[A-Za-z0-9_]+/seed[0-9]+/(?:(?:{shared})|(?:{variants})/(?:student_[0-9]+|auxkd))/model\.pt".format(
        datasets="|".join(map(re.escape, config["datasets"])),
        shared="|".join(SHARED_STAGES),
        variants="|".join(map(re.escape, config["variants"])),
    )
)


@functools.lru_cache(maxsize=None)
def checked_timm_trunk(backbone, attention_stride, crop):
    """timm's model of a backbone, checked once per backbone, stride and crop (timm imports in seconds: only then)."""
    from fgkd.timm_trunk import check_trunk

    check_trunk(backbone, attention_stride, crop)


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
                for path in made_later:
                    if not MADE_HERE.fullmatch(path):
                        raise FgkdError(
                            f"{path}: under results/, but no job of this workflow makes it (a model.pt of a data set "
                            "of this config: results/<data set>/<backbone>/seed<S>/<stage>/model.pt); give the path "
                            "of such a model, or of a file outside results/"
                        )
                options.check_files(made_later=made_later)
                if options.backbone.startswith("timm-"):
                    checked_timm_trunk(options.backbone, options.attention_stride, options.crop)
                made_here.update(made_later)
            except FgkdError as err:
                config_error(f"{dataset} / {variant or 'shared'} / {stage}: {err}")
    return sorted(made_here)


START_MODELS = check_stage_options()  # the `pretrain` target


def earlier_stages(stage):
    """The networks a stage learns from, in the order its job passes them: student k the teacher and students
    1..k-1, the aux-KD student all of them, its single-teacher baseline the teacher."""
    if stage.startswith("student_"):
        return MEMBERS[: int(stage.split("_")[1])]
    return {"auxkd": MEMBERS, "auxkd_single": ["teacher"]}.get(stage, [])


@functools.cache
def expected_hash(dataset, backbone, seed, stage, variant=None):
    """The config hash the model.pt of this job must have (fgkd.config.config_hash, as `fgkd train` computes it): what
    `fgkd verify` checks a trained or cache-restored network against."""
    where = SimpleNamespace(dataset=dataset, backbone=backbone, seed=seed)
    variant = None if stage in SHARED_STAGES else variant
    options = TrainConfig(**train_options(where, stage, variant))
    earlier = [expected_hash(dataset, backbone, seed, name, variant) for name in earlier_stages(stage)]
    return config_hash(options, stage, earlier, TRAIN_PROCESSES)


def train_flags(wildcards, stage, variant=None):
    """The stage's options as `fgkd train` flags, every value quoted for the shell."""
    return shlex.join(cli_flags(train_options(wildcards, stage, variant)))


remove_stale_locks()


def own_copies():
    """After a run with --cache, whatever its targets: no link into the cache is left under data/ and results/ (a
    link that no `fgkd verify` job has replaced yet, e.g. of a model.pt given as the target), so that writing onto a
    results file never writes into the cache."""
    if workflow.workflow_settings.cache is None:
        return
    from fgkd.verify import own_copy

    for folder in ("data", "results"):
        for root, folders, files in os.walk(folder):
            for name in folders + files:
                if os.path.islink(os.path.join(root, name)):
                    own_copy(os.path.join(root, name))


# Inputs and flags of the rules (workflow/rules/*.smk).


def raw_input(wildcards):
    spec = config["datasets"][wildcards.dataset]
    return f"data/raw/{wildcards.dataset}" if "synth" in spec else spec["raw"]


def earlier_flags(wildcards, input):
    return " ".join(f"--earlier {shlex.quote(m)}" for m in input.earlier)


def shared_earlier(wc):
    """The aux-KD baseline of single-teacher KD learns from the teacher; the other shared stages from nothing."""
    return [f"{seed_dir(wc.dataset, wc.backbone, wc.seed)}/teacher/model.pt"] if wc.shared == "auxkd_single" else []


def variant_earlier(wc):
    """Student k learns against the teacher and students 1..k-1; the aux-KD student imitates all."""
    members = [f"{d}/model.pt" for d in member_dirs(wc.dataset, wc.backbone, wc.seed, wc.variant)]
    return members if wc.stage == "auxkd" else members[: int(wc.stage.split("_")[1])]


def verified(models):
    """The record `fgkd verify` writes beside each model.pt once it holds: what a job that reads the model waits for."""
    return [str(Path(m).parent / "verified.json") for m in models]


def data_verified(wildcards):
    return f"data/verified/{wildcards.dataset}.json"


def model_flags(wildcards, input):
    return " ".join(f"--model {shlex.quote(m)}" for m in input.models)


def report_item(path):
    """A report file, marked for `snakemake --report` with the caption of its kind if the HTML report shows it: the
    figures, and summary.html (the tables of summary.md) of the main and the ablation report."""
    name = Path(path).name
    if name.endswith(".png"):
        kind = "attention" if name.startswith("attention") else Path(name).stem
        return report(path, caption=f"../report/{kind}.rst", category="Figures")
    if name == "summary.html":
        ablations = Path(path).parent.name == "ablations"
        caption = "../report/ablations.rst" if ablations else "../report/summary.rst"
        return report(path, caption=caption, category="Tables", labels={"report": "ablations" if ablations else "main"})
    return path


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


# What the reports record as the config they were made under (fgkd publish-results refuses tables of two configs).
# Not the SLURM resources: where and how long the jobs ran is no part of what they computed.
CONFIG_DIGEST = hashlib.sha256(
    json.dumps({k: v for k, v in config.items() if k != "resources"}, sort_keys=True, default=str).encode()
).hexdigest()[:16]
RUN_FLAGS = " ".join(f"--run {shlex.quote(f'{d}/{b}/{s}')}" for d, b, s in RUNS)
COMBINE = config["ensemble"]["combine"]
COMBINE_TEXT = COMBINES[COMBINE].text  # the rule in words, for the captions of `snakemake --report` (params.combine)
