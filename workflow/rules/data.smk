# Raw data (generated for synthetic sets, DVC-tracked folders or archives otherwise) -> prepared manifest.


rule synth:
    input:
        excluded=lambda wc: [f"data/raw/{d}" for d in excluded_sets(wc.dataset)],
    output:
        directory("data/raw/{dataset}"),
    log:
        "logs/synth/{dataset}.log",
    conda:
        "../envs/fgkd.yaml"
    resources:
        **job_resources("other"),
    params:
        flags=lambda wc: shlex.join(
            cli_flags({k: v for k, v in config["datasets"][wc.dataset]["synth"].items() if k != "exclude_classes_of"})
        ),
        exclude=lambda wc, input: " ".join(f"--exclude-classes-of {shlex.quote(d)}" for d in input.excluded),
    shell:
        "fgkd synth --out {output:q} {params.flags} {params.exclude} > {log:q} 2>&1"


rule prepare:
    input:
        raw_input,
    output:
        directory("data/prepared/{dataset}"),
    log:
        "logs/prepare/{dataset}.log",
    cache: True
    conda:
        "../envs/fgkd.yaml"
    threads: 4
    resources:
        **job_resources("prepare"),
    params:
        format=lambda wc: config["datasets"][wc.dataset]["format"],
        resize=lambda wc: config["datasets"][wc.dataset]["resize"],
        fgkd=FGKD_VERSION,  # the cache's key: prepare decodes images in fgkd's own way
    shell:
        "fgkd prepare {params.format} --root {input:q} --out {output:q} --resize {params.resize}"
        " --workers {threads} > {log:q} 2>&1"


# The prepared data set is the one `fgkd prepare` recorded (also when restored from the cache); links into the
# cache become private copies.
rule verify_data:
    input:
        "data/prepared/{dataset}",
    output:
        "data/verified/{dataset}.json",
    log:
        "logs/verify/{dataset}.log",
    localrule: True
    conda:
        "../envs/fgkd.yaml"
    shell:
        "fgkd verify --data {input:q} --out {output:q} > {log:q} 2>&1"
