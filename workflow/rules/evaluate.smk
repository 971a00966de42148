# Test-split logits of each model (best-on-val and last epoch), ensembles from them, attention maps.


rule predict:
    input:
        data="data/prepared/{dataset}",
        model=f"{RESULT}/{{stage}}/model.pt",
    output:
        best=f"{RESULT}/{{stage}}/logits.parquet",
        last=f"{RESULT}/{{stage}}/logits_last.parquet",
    params:
        batch_size=config.get("predict", {}).get("batch_size", 64),
    threads: 2
    resources:
        gpu=config.get("gpus_per_job", 1),
        mem_mb=8000,
        runtime=60,
    log:
        f"logs/predict/{{dataset}}/{{backbone}}/{{stage}}.log",
    shell:
        "(fgkd predict --model {input.model} --data {input.data} --out {output.best} --which best"
        " --batch-size {params.batch_size} --workers {threads}"
        " && fgkd predict --model {input.model} --data {input.data} --out {output.last} --which last"
        " --batch-size {params.batch_size} --workers {threads}) > {log} 2>&1"


rule ensemble:
    input:
        [f"{RESULT}/{m}/logits.parquet" for m in MEMBERS],
    output:
        f"{RESULT}/ensemble.parquet",
    params:
        names=",".join(MEMBERS),
        combine=config.get("ensemble", {}).get("combine", "logits"),
    log:
        f"logs/ensemble/{{dataset}}/{{backbone}}.log",
    shell:
        "fgkd ensemble {input} --names {params.names} --combine {params.combine} --out {output} > {log} 2>&1"


rule attention:
    input:
        data="data/prepared/{dataset}",
        models=[f"{RESULT}/{m}/model.pt" for m in MEMBERS],
    output:
        overlap=f"{RESULT}/attention.parquet",
        figure=f"{RESULT}/attention.png",
    params:
        images=config.get("attention", {}).get("images", 8),
        models=lambda wc, input: " ".join(f"--model {m}" for m in input.models),
    resources:
        gpu=config.get("gpus_per_job", 1),
        mem_mb=8000,
        runtime=60,
    log:
        f"logs/attention/{{dataset}}/{{backbone}}.log",
    shell:
        "fgkd attention {params.models} --data {input.data} --images {params.images}"
        " --overlap {output.overlap} --figure {output.figure} > {log} 2>&1"
