# Every stage is one `fgkd train`: the CE teacher, orthogonal student k, the aux-KD student.


rule train:
    input:
        data="data/prepared/{dataset}",
        earlier=earlier_models,
    output:
        model=f"{RESULT}/{{stage}}/model.pt",
        history=f"{RESULT}/{{stage}}/history.parquet",
    params:
        stage=lambda wc: "student --index " + wc.stage.split("_")[1] if wc.stage.startswith("student") else wc.stage,
        earlier=lambda wc, input: " ".join(f"--earlier {m}" for m in input.earlier),
        flags=lambda wc: cli_flags(train_options(wc.dataset, wc.backbone, wc.stage)),
    threads: 2
    resources:
        gpu=config.get("gpus_per_job", 1),
        mem_mb=16000,
        runtime=24 * 60,
    log:
        f"logs/train/{{dataset}}/{{backbone}}/{{stage}}.log",
    shell:
        "fgkd train --stage {params.stage} {params.earlier} --data {input.data}"
        " --out $(dirname {output.model}) {params.flags} --workers {threads} --no-progress > {log} 2>&1"
