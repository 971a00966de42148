# Everything into results/reports: Parquet tables, summary.md, figures, DVC metrics and plots;
# the ablation study into results/reports/ablations.


def report_figure(path):
    """Mark a figure for `snakemake --report`, with the caption of its kind."""
    kind = Path(path).stem
    kind = "attention" if kind.startswith("attention") else kind
    return report(path, caption=f"../report/{kind}.rst", category="Figures")


MODEL_FILES = ("history.parquet", "logits.parquet", "logits_last.parquet")  # what a report reads of each network


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


rule report:
    input:
        run_files([METHOD], ["ensemble.parquet", "attention.parquet", "attention.png"]),
    output:
        [report_figure(p) if p.endswith(".png") else p for p in REPORTS],
    log:
        "logs/report.log",
    shell:
        f"fgkd report --results results {RUN_FLAGS} --variants {METHOD} --students {config['students']}"
        f" --combine {COMBINE} --out results/reports > {{log:q}} 2>&1"


rule report_ablations:
    input:
        run_files([METHOD, *ABLATIONS], ["ensemble.parquet", "attention.parquet"], aux=("auxkd_ce", "auxkd_single")),
        [f"{variant_dir(d, b, s, v)}/part_occlusion.parquet" for d, b, s in RUNS if d in SYNTHETIC for v in [METHOD, *ABLATIONS]],
    output:
        ABLATION_REPORTS,
    log:
        "logs/report_ablations.log",
    shell:
        f"fgkd report --ablations --results results {RUN_FLAGS} --variants {','.join([METHOD, *ABLATIONS])}"
        f" --students {config['students']} --combine {COMBINE} --out results/reports/ablations > {{log:q}} 2>&1"
