# fgkd: teacher -> orthogonal students -> ensembles -> aux-KD student -> reports (`all`),
# plus the ablation study (`ablations`).
# `snakemake --cores all all` on one machine, `snakemake --profile slurm all` on a SLURM cluster.
from snakemake.utils import min_version

min_version("9.0")


# One experiment, one file: config/config.yaml is read only when no --configfile names another
# experiment, so nothing of the default leaks into it. Keys a config leaves out take the schema's
# defaults (workflow/schemas/config.schema.yaml); --config KEY=VALUE overrides keys of either.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
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


# The networks that other networks of this experiment start from (init_from: or pretrained: a path under results/,
# e.g. the pretrained-start regime of config/fair.yaml), checked; `all` and `ablations` make them first anyway.
rule pretrain:
    input:
        verified(START_MODELS),


# (Not on error: a link that failed its check still names the damaged cache entry for the next run's message.)
onsuccess:
    own_copies()
