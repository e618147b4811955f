# Raw archives (downloaded, or synthetic stand-ins in the same format) -> one prepared .npz each.

if config["synthetic"]:

    rule synth:
        output:
            manifest="data/raw/{dataset}/manifest.json",
        log:
            "logs/synth/{dataset}.log",
        conda:
            "../../envs/data.yaml"
        params:
            flags=fetch_flags,
        shell:
            "python -m rdiunet.cli synth --dataset {wildcards.dataset} --out data/raw/{wildcards.dataset} "
            "{params.flags} > {log} 2>&1"

else:

    localrules:
        download,

    rule download:
        output:
            manifest="data/raw/{dataset}/manifest.json",
        log:
            "logs/download/{dataset}.log",
        conda:
            "../../envs/data.yaml"
        params:
            flags=fetch_flags,
        shell:
            "python -m rdiunet.cli download --dataset {wildcards.dataset} --out data/raw/{wildcards.dataset} "
            "{params.flags} > {log} 2>&1"


rule prepare:
    input:
        manifest="data/raw/{dataset}/manifest.json",
    output:
        data="data/prepared/{dataset}.npz",
        summary="data/prepared/{dataset}.json",
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "logs/timing/prepare/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 4
    params:
        size=lambda wildcards: dataset_config(wildcards)["size"],
        flags=prepare_flags,
    shell:
        "python -m rdiunet.cli prepare --dataset {wildcards.dataset} --raw data/raw/{wildcards.dataset} "
        "--out {output.data} --size {params.size} --workers {threads} {params.flags} > {log} 2>&1"
