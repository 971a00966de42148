# fgkd: teacher -> orthogonal students -> ensembles -> aux-KD student -> reports (`all`),
# plus the ablation study (`ablations`).
# `snakemake --cores all all` on one machine, `snakemake --profile slurm all` on a SLURM cluster.
from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/locks.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        REPORTS,


rule ablations:
    input:
        REPORTS,
        ABLATION_REPORTS,
