# Raw data (generated for synthetic sets, DVC-tracked folders or archives otherwise) -> prepared manifest.


def raw_input(wildcards):
    spec = config["datasets"][wildcards.dataset]
    return f"data/raw/{wildcards.dataset}" if "synth" in spec else spec["raw"]


rule synth:
    cache: True
    output:
        directory("data/raw/{dataset}"),
    params:
        flags=lambda wc: cli_flags(config["datasets"][wc.dataset]["synth"]),
    log:
        "logs/synth/{dataset}.log",
    shell:
        "fgkd synth --out {output:q} {params.flags} > {log:q} 2>&1"


rule prepare:
    cache: True
    input:
        raw_input,
    output:
        directory("data/prepared/{dataset}"),
    params:
        format=lambda wc: config["datasets"][wc.dataset]["format"],
        resize=lambda wc: config["datasets"][wc.dataset]["resize"],
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        "logs/prepare/{dataset}.log",
    shell:
        "fgkd prepare {params.format} --root {input:q} --out {output:q} --resize {params.resize}"
        " --workers {threads} > {log:q} 2>&1"
