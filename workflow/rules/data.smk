# Raw data (generated for synthetic sets, DVC-tracked folders or archives otherwise) -> prepared manifest.


rule synth:
    output:
        directory("data/raw/{dataset}"),
    log:
        "logs/synth/{dataset}.log",
    cache: True
    conda:
        "../envs/fgkd.yaml"
    params:
        flags=lambda wc: cli_flags(config["datasets"][wc.dataset]["synth"]),
    shell:
        "fgkd synth --out {output:q} {params.flags} > {log:q} 2>&1"


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
        mem_mb=4000,
        runtime=60,
    params:
        format=lambda wc: config["datasets"][wc.dataset]["format"],
        resize=lambda wc: config["datasets"][wc.dataset]["resize"],
    shell:
        "fgkd prepare {params.format} --root {input:q} --out {output:q} --resize {params.resize}"
        " --workers {threads} > {log:q} 2>&1"
