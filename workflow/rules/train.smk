# Every network is one `fgkd train`. Stages shared by all variants (the CE teacher, the aux-KD
# baselines) live in the seed folder; the students and the aux-KD student of a variant below it.
# With train_processes (default: gpus_per_job) above 1, each job trains data-parallel: `fgkd train
# --processes N` starts N processes through torchrun inside the job, one per GPU.
# `cache: True`: with `--cache` and SNAKEMAKE_OUTPUT_CACHE, a network trained by another workflow with the same
# command, options, data and start weights is restored instead of trained (docs/guides/cache.md).
# Every network, trained here or restored, is then checked by `fgkd verify` (rules verify_shared, verify_variant)
# before any other job reads it.

TRAIN_RESOURCES = job_resources("train", gpus=config["gpus_per_job"])
# Each process feeds itself with its loader workers.
TRAIN_THREADS = max(2, TRAIN_PROCESSES * max(1, config["train"].get("workers", 0)))


rule train_shared:
    input:
        data="data/prepared/{dataset}",
        data_verified=data_verified,
        earlier=shared_earlier,
        earlier_verified=lambda wc: verified(shared_earlier(wc)),
        start=lambda wc: start_files(wc, wc.shared),
        start_verified=lambda wc: start_verified(wc, wc.shared),
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
        data_verified=data_verified,
        earlier=variant_earlier,
        earlier_verified=lambda wc: verified(variant_earlier(wc)),
        start=lambda wc: start_files(wc, wc.stage, wc.variant),
        start_verified=lambda wc: start_verified(wc, wc.stage, wc.variant),
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


# `fgkd verify`: the model.pt is the stage and configuration this job planned (the config hash the workflow computes),
# trained on this data from these earlier networks, with its history; links into the cache become private copies.
# Local jobs: a check of a few seconds is not worth a SLURM submission.
rule verify_shared:
    input:
        data="data/prepared/{dataset}",
        data_verified=data_verified,
        model=f"{SEED_DIR}/{{shared}}/model.pt",
        history=f"{SEED_DIR}/{{shared}}/history.parquet",
        earlier=shared_earlier,
        earlier_verified=lambda wc: verified(shared_earlier(wc)),
        start=lambda wc: start_files(wc, wc.shared),
    output:
        f"{SEED_DIR}/{{shared}}/verified.json",
    log:
        f"logs/verify/{{dataset}}/{{backbone}}/seed{{seed}}/{{shared}}.log",
    localrule: True
    conda:
        "../envs/fgkd.yaml"
    params:
        hash=lambda wc: expected_hash(wc.dataset, wc.backbone, wc.seed, wc.shared),
        earlier=earlier_flags,
        start=lambda wc: start_flag(wc, wc.shared),
    shell:
        "fgkd verify --data {input.data:q} --model {input.model:q} --stage {wildcards.shared} --config-hash"
        " {params.hash} {params.earlier} {params.start} --out {output:q} > {log:q} 2>&1"


rule verify_variant:
    input:
        data="data/prepared/{dataset}",
        data_verified=data_verified,
        model=f"{VARIANT_DIR}/{{stage}}/model.pt",
        history=f"{VARIANT_DIR}/{{stage}}/history.parquet",
        earlier=variant_earlier,
        earlier_verified=lambda wc: verified(variant_earlier(wc)),
        start=lambda wc: start_files(wc, wc.stage, wc.variant),
    output:
        f"{VARIANT_DIR}/{{stage}}/verified.json",
    log:
        f"logs/verify/{{dataset}}/{{backbone}}/seed{{seed}}/{{variant}}/{{stage}}.log",
    localrule: True
    conda:
        "../envs/fgkd.yaml"
    params:
        hash=lambda wc: expected_hash(wc.dataset, wc.backbone, wc.seed, wc.stage, wc.variant),
        earlier=earlier_flags,
        start=lambda wc: start_flag(wc, wc.stage, wc.variant),
    shell:
        "fgkd verify --data {input.data:q} --model {input.model:q} --stage {wildcards.stage} --config-hash"
        " {params.hash} {params.earlier} {params.start} --out {output:q} > {log:q} 2>&1"
