# Helpers shared by the rules: names, paths, the CLI flags of each stage.
from pathlib import Path

STUDENTS = [f"student_{k}" for k in range(1, config["students"] + 1)]
MEMBERS = ["teacher", *STUDENTS]
SHARED_STAGES = ["teacher", "auxkd_ce", "auxkd_single"]  # do not depend on the students' variant
SEED_DIR = "results/{dataset}/{backbone}/seed{seed}"
VARIANT_DIR = SEED_DIR + "/{variant}"
METHOD = config["method"]
ABLATIONS = config.get("ablations", [])

for _name in [METHOD, *ABLATIONS]:
    if _name not in config["variants"]:
        raise ValueError(f"method/ablations: {_name!r} is not defined under variants ({', '.join(config['variants'])})")
for _name in config["run_datasets"]:
    if _name not in config["datasets"]:
        raise ValueError(f"run_datasets: {_name!r} is not defined under datasets ({', '.join(config['datasets'])})")
    _raw = config["datasets"][_name].get("raw")
    if _raw and not Path(_raw).exists():
        raise ValueError(
            f"datasets.{_name}.raw: {_raw} does not exist; put the official folder or archive there "
            "(or `dvc pull` it), or change the path"
        )

# Training jobs ask for gpus_per_job GPUs and run that many data-parallel processes (train_processes
# overrides it: several CPU processes on a CPU cluster); evaluation jobs need one GPU at most.
TRAIN_PROCESSES = config.get("train_processes") or max(1, config["gpus_per_job"])
EVAL_GPUS = min(1, config["gpus_per_job"])

RUNS = [(d, b, s) for d in config["run_datasets"] for b in config["backbones"] for s in config["seeds"]]
PAIRS = [(d, b) for d in config["run_datasets"] for b in config["backbones"]]
SYNTHETIC = [d for d in config["run_datasets"] if "synth" in config["datasets"][d]]


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
    "results/reports/ablations/summary.md",
]


wildcard_constraints:
    dataset="|".join(config["datasets"]),
    backbone="[A-Za-z0-9_]+",
    seed="[0-9]+",
    variant="|".join(config["variants"]),
    shared="|".join(SHARED_STAGES),
    stage="student_[0-9]+|auxkd",


def train_options(wildcards, stage, variant=None):
    """train, the data set's train, backbone and seed from the path, the variant (students only),
    then the stage's overrides (aux-KD baselines inherit the aux-KD student's)."""
    options = {**config["train"], **config["datasets"][wildcards.dataset].get("train", {})}
    options.update(backbone=wildcards.backbone, seed=int(wildcards.seed))
    if variant is not None and stage.startswith("student"):
        options.update(config["variants"][variant])
    stages = config.get("stages", {})
    if stage in ("auxkd_ce", "auxkd_single"):
        options.update(stages.get("auxkd", {}))
    options.update(stages.get(stage, {}))
    return options


def cli_flags(options):
    flags = []
    for key, value in sorted(options.items()):
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags.append(f"{flag} {value}")
    return " ".join(flags)
