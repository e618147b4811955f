# One training job per dataset x model x seed; it ends by evaluating the best weights on the test
# split. Only files written at the end are declared as outputs: Snakemake deletes the declared
# outputs of an incomplete job before rerunning it, and the checkpoint must survive for the rerun
# to resume (checkpoint.pt, best.pt, run.json and gpu.csv live beside them in the run folder).


rule train:
    input:
        data="data/prepared/{dataset}.npz",
    output:
        metrics="results/{dataset}/{model}/seed{seed}/metrics.json",
        per_image="results/{dataset}/{model}/seed{seed}/per_image.csv",
        history="results/{dataset}/{model}/seed{seed}/history.csv",
    log:
        "logs/train/{dataset}/{model}/seed{seed}.log",
    benchmark:
        "logs/timing/train/{dataset}/{model}/seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["training"]["threads"]
    resources:
        gpu=gpu_need("training"),
    params:
        model=base_model,
        out="results/{dataset}/{model}/seed{seed}",
        flags=train_flags,
        options=model_options,
    shell:
        "python -m rdiunet.cli train --data {input.data} --model {params.model} --seed {wildcards.seed} "
        "--out {params.out} --threads {threads} {params.flags} {params.options} > {log} 2>&1"
