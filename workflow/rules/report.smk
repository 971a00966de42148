# Everything into results/reports: Parquet tables, summary.md, figures, DVC metrics and plots.


def report_figure(path):
    """Mark a figure for `snakemake --report`, with the caption of its kind."""
    kind = Path(path).stem.split("_attention")[0]
    kind = "attention" if kind.startswith("attention") else kind
    return report(path, caption=f"../report/{kind}.rst", category="Figures")


rule report:
    input:
        ensembles=[f"results/{d}/{b}/ensemble.parquet" for d, b in PAIRS],
        attention=[f"results/{d}/{b}/attention.parquet" for d, b in PAIRS],
        figures=[f"results/{d}/{b}/attention.png" for d, b in PAIRS],
        logits=[f"results/{d}/{b}/{s}/{f}" for d, b in PAIRS for s in STAGES for f in ("logits.parquet", "logits_last.parquet")],
        histories=[f"results/{d}/{b}/{s}/history.parquet" for d, b in PAIRS for s in STAGES],
    output:
        [report_figure(p) if p.endswith(".png") else p for p in REPORTS],
    params:
        pairs=" ".join(f"--pair {d}/{b}" for d, b in PAIRS),
        stages=",".join(STAGES),
    log:
        "logs/report.log",
    shell:
        "fgkd report --results results {params.pairs} --stages {params.stages} --out results/reports > {log} 2>&1"
