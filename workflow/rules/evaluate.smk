# Test-split logits of each model (best-on-val and last epoch), ensembles from them, attention
# maps, and (synthetic sets) accuracy with parts hidden.


rule predict:
    input:
        data=lambda wc: f"data/prepared/{wc.run.split('/')[0]}",
        model="results/{run}/model.pt",
        verified="results/{run}/verified.json",
    output:
        best="results/{run}/logits.parquet",
        last="results/{run}/logits_last.parquet",
    log:
        "logs/predict/{run}.log",
    conda:
        "../envs/fgkd.yaml"
    threads: 2
    resources:
        **job_resources("evaluate", gpus=EVAL_GPUS),
    params:
        batch_size=config["predict"]["batch_size"],
    shell:
        "fgkd predict --model {input.model:q} --data {input.data:q} --out {output.best:q} --which best"
        " --out-last {output.last:q} --batch-size {params.batch_size} --workers {threads} > {log:q} 2>&1"


rule ensemble:
    input:
        lambda wc: [f"{d}/logits.parquet" for d in member_dirs(wc.dataset, wc.backbone, wc.seed, wc.variant)],
    output:
        f"{VARIANT_DIR}/ensemble.parquet",
    log:
        "logs/ensemble/{dataset}/{backbone}/seed{seed}/{variant}.log",
    conda:
        "../envs/fgkd.yaml"
    resources:
        **job_resources("other"),
    params:
        names=",".join(MEMBERS),
        combine=config["ensemble"]["combine"],
    shell:
        "fgkd ensemble {input:q} --names {params.names} --combine {params.combine} --out {output:q} > {log:q} 2>&1"


rule attention:
    input:
        data="data/prepared/{dataset}",
        models=lambda wc: [f"{d}/model.pt" for d in member_dirs(wc.dataset, wc.backbone, wc.seed, wc.variant)],
        verified=lambda wc: [f"{d}/verified.json" for d in member_dirs(wc.dataset, wc.backbone, wc.seed, wc.variant)],
    output:
        overlap=f"{VARIANT_DIR}/attention.parquet",
        figure=f"{VARIANT_DIR}/attention.png",
    log:
        "logs/attention/{dataset}/{backbone}/seed{seed}/{variant}.log",
    conda:
        "../envs/fgkd.yaml"
    resources:
        **job_resources("evaluate", gpus=EVAL_GPUS),
    params:
        images=config["attention"]["images"],
        batch_size=config["predict"]["batch_size"],
        models=model_flags,
    shell:
        "fgkd attention {params.models} --data {input.data:q} --images {params.images}"
        " --batch-size {params.batch_size} --overlap {output.overlap:q} --figure {output.figure:q} > {log:q} 2>&1"


rule part_occlusion:
    input:
        raw="data/raw/{dataset}",
        data="data/prepared/{dataset}",
        models=lambda wc: [f"{d}/model.pt" for d in member_dirs(wc.dataset, wc.backbone, wc.seed, wc.variant)],
        verified=lambda wc: [f"{d}/verified.json" for d in member_dirs(wc.dataset, wc.backbone, wc.seed, wc.variant)],
    output:
        occlusion=f"{VARIANT_DIR}/part_occlusion.parquet",
        attention=f"{VARIANT_DIR}/part_attention.parquet",
    log:
        "logs/part_occlusion/{dataset}/{backbone}/seed{seed}/{variant}.log",
    conda:
        "../envs/fgkd.yaml"
    resources:
        **job_resources("evaluate"),  # on the CPU
    params:
        models=model_flags,
        combine=config["ensemble"]["combine"],
    shell:
        "fgkd part-occlusion --raw {input.raw:q} --data {input.data:q} {params.models} --combine {params.combine}"
        " --out {output.occlusion:q} --attention-out {output.attention:q} > {log:q} 2>&1"
