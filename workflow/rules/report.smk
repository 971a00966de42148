# Everything into results/reports: Parquet tables, summary.md and .html, figures, DVC metrics and plots;
# the ablation study into results/reports/ablations.


rule report:
    input:
        run_files([METHOD], ["ensemble.parquet", "attention.parquet", "attention.png"]),
    output:
        [report_item(p) for p in REPORTS],
    log:
        "logs/report.log",
    conda:
        "../envs/fgkd.yaml"
    resources:
        **job_resources("other"),
    params:
        combine=COMBINE_TEXT,
    shell:
        f"fgkd report --results results {RUN_FLAGS} --variants {METHOD} --students {config['students']}"
        f" --combine {COMBINE} --config-digest {CONFIG_DIGEST} --out results/reports > {{log:q}} 2>&1"


rule report_ablations:
    input:
        run_files(
            STUDIED_VARIANTS,
            ["ensemble.parquet", "attention.parquet"],
            aux=fgkd.stages.AUXKD_BASELINES,
        ),
        [
            f"{variant_dir(d, b, s, v)}/{name}"
            for d, b, s in RUNS
            if d in SYNTHETIC
            for v in STUDIED_VARIANTS
            for name in ("part_occlusion.parquet", "part_attention.parquet")
        ],
    output:
        [report_item(p) for p in ABLATION_REPORTS],
    log:
        "logs/report_ablations.log",
    conda:
        "../envs/fgkd.yaml"
    resources:
        **job_resources("other"),
    params:
        combine=COMBINE_TEXT,
    shell:
        f"fgkd report --ablations --results results {RUN_FLAGS} --variants {','.join(STUDIED_VARIANTS)}"
        f" --students {config['students']} --combine {COMBINE} --config-digest {CONFIG_DIGEST}"
        " --out results/reports/ablations > {log:q} 2>&1"
