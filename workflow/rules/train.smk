# Every network is one `fgkd train`. Stages shared by all variants (the CE teacher, the aux-KD
# baselines) live in the seed folder; the students and the aux-KD student of a variant below it.
# With train_processes (default: gpus_per_job) above 1, each job trains data-parallel: `fgkd train
# --processes N` starts N processes through torchrun inside the job, one per GPU.
# `cache: True`: with `--cache` and SNAKEMAKE_OUTPUT_CACHE, a network trained by another workflow with the same
# command, options, data and start weights is restored instead of trained (README: sharing between experiments).

TRAIN_RESOURCES = dict(gpu=config["gpus_per_job"], mem_mb=16000, runtime=24 * 60)
# Each process feeds itself with its loader workers.
TRAIN_THREADS = max(2, TRAIN_PROCESSES * max(1, config["train"].get("workers", 0)))


rule train_shared:
    input:
        data="data/prepared/{dataset}",
        earlier=lambda wc: ([f"{SEED_DIR}/teacher/model.pt".format(**wc)] if wc.shared == "auxkd_single" else []),
        start=lambda wc: start_files(wc, wc.shared),
    output:
        model=f"{SEED_DIR}/{{shared}}/model.pt",
        history=f"{SEED_DIR}/{{shared}}/history.parquet",
    log:
        f"logs/train/{{dataset}}/{{backbone}}/seed{{seed}}/{{shared}}.log",
    cache: True
    conda:
        "../envs/fgkd.yaml"
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    params:
        stage=lambda wc: fgkd.stages.SHARED_STAGES[wc.shared],
        earlier=earlier_flags,
        flags=lambda wc: train_flags(wc, wc.shared),
        processes=TRAIN_PROCESSES,
        fgkd=FGKD_VERSION,
    shell:
        'fgkd train {params.stage} {params.earlier} --data {input.data:q} --out "$(dirname {output.model:q})"'
        " {params.flags} --processes {params.processes} --no-progress > {log:q} 2>&1"


rule train_variant:
    input:
        data="data/prepared/{dataset}",
        earlier=variant_earlier,
        start=lambda wc: start_files(wc, wc.stage, wc.variant),
    output:
        model=f"{VARIANT_DIR}/{{stage}}/model.pt",
        history=f"{VARIANT_DIR}/{{stage}}/history.parquet",
    log:
        f"logs/train/{{dataset}}/{{backbone}}/seed{{seed}}/{{variant}}/{{stage}}.log",
    cache: True
    conda:
        "../envs/fgkd.yaml"
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    params:
        stage=lambda wc: (
            "--stage auxkd" if wc.stage == "auxkd" else f"--stage student --index {wc.stage.split('_')[1]}"
        ),
        earlier=earlier_flags,
        flags=lambda wc: train_flags(wc, wc.stage, wc.variant),
        processes=TRAIN_PROCESSES,
        fgkd=FGKD_VERSION,
    shell:
        'fgkd train {params.stage} {params.earlier} --data {input.data:q} --out "$(dirname {output.model:q})"'
        " {params.flags} --processes {params.processes} --no-progress > {log:q} 2>&1"
