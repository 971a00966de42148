# Test-split logits of each model (best-on-val and last epoch), ensembles from them, attention
# maps, and (synthetic sets) accuracy with parts hidden.


rule predict:
    input:
        data=lambda wc: "data/prepared/" + wc.run.split("/")[0],
        model="results/{run}/model.pt",
    output:
        best="results/{run}/logits.parquet",
        last="results/{run}/logits_last.parquet",
    params:
        batch_size=config.get("predict", {}).get("batch_size", 64),
    threads: 2
    resources:
        gpu=EVAL_GPUS,
        mem_mb=8000,
        runtime=60,
    log:
        "logs/predict/{run}.log",
    shell:
        "(fgkd predict --model {input.model} --data {input.data} --out {output.best} --which best"
        " --batch-size {params.batch_size} --workers {threads}"
        " && fgkd predict --model {input.model} --data {input.data} --out {output.last} --which last"
        " --batch-size {params.batch_size} --workers {threads}) > {log} 2>&1"


rule ensemble:
    input:
        lambda wc: [f"{d}/logits.parquet" for d in member_dirs(wc.dataset, wc.backbone, wc.seed, wc.variant)],
    output:
        f"{VARIANT_DIR}/ensemble.parquet",
    params:
        names=",".join(MEMBERS),
        combine=config.get("ensemble", {}).get("combine", "logits"),
    log:
        "logs/ensemble/{dataset}/{backbone}/seed{seed}/{variant}.log",
    shell:
        "fgkd ensemble {input} --names {params.names} --combine {params.combine} --out {output} > {log} 2>&1"


rule attention:
    input:
        data="data/prepared/{dataset}",
        models=lambda wc: [f"{d}/model.pt" for d in member_dirs(wc.dataset, wc.backbone, wc.seed, wc.variant)],
    output:
        overlap=f"{VARIANT_DIR}/attention.parquet",
        figure=f"{VARIANT_DIR}/attention.png",
    params:
        images=config.get("attention", {}).get("images", 8),
        models=lambda wc, input: " ".join(f"--model {m}" for m in input.models),
    resources:
        gpu=EVAL_GPUS,
        mem_mb=8000,
        runtime=60,
    log:
        "logs/attention/{dataset}/{backbone}/seed{seed}/{variant}.log",
    shell:
        "fgkd attention {params.models} --data {input.data} --images {params.images}"
        " --overlap {output.overlap} --figure {output.figure} > {log} 2>&1"


rule part_occlusion:
    input:
        raw="data/raw/{dataset}",
        data="data/prepared/{dataset}",
        models=lambda wc: [f"{d}/model.pt" for d in member_dirs(wc.dataset, wc.backbone, wc.seed, wc.variant)],
    output:
        f"{VARIANT_DIR}/part_occlusion.parquet",
    params:
        models=lambda wc, input: " ".join(f"--model {m}" for m in input.models),
    resources:
        mem_mb=8000,
        runtime=60,
    log:
        "logs/part_occlusion/{dataset}/{backbone}/seed{seed}/{variant}.log",
    shell:
        "fgkd part-occlusion --raw {input.raw} --data {input.data} {params.models} --out {output} > {log} 2>&1"
