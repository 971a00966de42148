from pathlib import Path

# Helpers shared by the rules: stage names, the CLI flags of each stage, resources.

STUDENTS = [f"student_{k}" for k in range(1, config["students"] + 1)]
MEMBERS = ["teacher", *STUDENTS]
STAGES = [*MEMBERS, "auxkd"]
RESULT = "results/{dataset}/{backbone}"
for _name in config["run_datasets"]:
    if _name not in config["datasets"]:
        raise ValueError(f"run_datasets: {_name!r} is not defined under datasets ({', '.join(config['datasets'])})")
    _raw = config["datasets"][_name].get("raw")
    if _raw and not Path(_raw).exists():
        raise ValueError(
            f"datasets.{_name}.raw: {_raw} does not exist; put the official folder or archive there "
            "(or `dvc pull` it), or change the path"
        )
PAIRS = [(d, b) for d in config["run_datasets"] for b in config["backbones"]]
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


wildcard_constraints:
    dataset="|".join(config["datasets"]),
    backbone="[A-Za-z0-9_]+",
    stage="teacher|student_[0-9]+|auxkd",


def train_options(dataset, backbone, stage):
    """config train, then the data set's train, the wildcard's backbone, then the stage's overrides
    (a stage may choose its own backbone: a smaller aux-KD student)."""
    options = {**config["train"], **config["datasets"][dataset].get("train", {}), "backbone": backbone}
    options.update(config.get("stages", {}).get(stage, {}))
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


def earlier_models(wildcards):
    """The frozen networks a stage learns from: students look back at all before them, aux KD at all."""
    if wildcards.stage == "teacher":
        return []
    before = MEMBERS if wildcards.stage == "auxkd" else MEMBERS[: int(wildcards.stage.split("_")[1])]
    return [f"results/{wildcards.dataset}/{wildcards.backbone}/{m}/model.pt" for m in before]
