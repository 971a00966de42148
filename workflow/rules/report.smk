# Everything into results/reports: Parquet tables, summary.md, figures, DVC metrics and plots.


rule report:
    input:
        ensembles=[f"results/{d}/{b}/ensemble.parquet" for d, b in PAIRS],
        attention=[f"results/{d}/{b}/attention.parquet" for d, b in PAIRS],
        figures=[f"results/{d}/{b}/attention.png" for d, b in PAIRS],
        logits=[f"results/{d}/{b}/{s}/{f}" for d, b in PAIRS for s in STAGES for f in ("logits.parquet", "logits_last.parquet")],
        histories=[f"results/{d}/{b}/{s}/history.parquet" for d, b in PAIRS for s in STAGES],
    output:
        REPORTS,
    params:
        pairs=" ".join(f"--pair {d}/{b}" for d, b in PAIRS),
        stages=",".join(STAGES),
    log:
        "logs/report.log",
    shell:
        "fgkd report --results results {params.pairs} --stages {params.stages} --out results/reports > {log} 2>&1"
