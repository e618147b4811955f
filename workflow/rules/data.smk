# Raw archives (downloaded, or synthetic stand-ins in the same format) per source -> one prepared
# .npz per dataset label.

if config["synthetic"]:

    rule synth:
        output:
            manifest="data/raw/{source}/manifest.json",
        log:
            "logs/synth/{source}.log",
        conda:
            "../../envs/data.yaml"
        params:
            flags=fetch_flags,
        shell:
            "python -m rdiunet.cli synth --dataset {wildcards.source} --out data/raw/{wildcards.source} "
            "{params.flags} > {log} 2>&1"

else:

    localrules:
        download,

    rule download:
        output:
            manifest="data/raw/{source}/manifest.json",
        log:
            "logs/download/{source}.log",
        conda:
            "../../envs/data.yaml"
        params:
            flags=fetch_flags,
        shell:
            "python -m rdiunet.cli download --dataset {wildcards.source} --out data/raw/{wildcards.source} "
            "{params.flags} > {log} 2>&1"


# A label prepares its source's archives (a variant reuses them: one download) by its own settings;
# a folder dataset prepares its own files where they are.
rule prepare:
    input:
        manifest=raw_manifest,
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
        data=data_arguments,
        size=lambda wildcards: dataset_config(wildcards)["size"],
        flags=prepare_flags,
    shell:
        "python -m rdiunet.cli prepare {params.data} "
        "--out {output.data} --size {params.size} --workers {threads} {params.flags} > {log} 2>&1"
