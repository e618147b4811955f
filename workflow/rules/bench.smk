# Latency, throughput, FLOPs, memory and energy per dataset (its image size) and model.


rule bench:
    output:
        "results/{dataset}/{model}/bench.json",
    log:
        "logs/bench/{dataset}/{model}.log",
    benchmark:
        "logs/timing/bench/{dataset}/{model}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["bench"]["threads"]
    resources:
        gpu=gpu_need("bench", whole_card=True),
    params:
        model=base_model,
        flags=bench_flags,
        options=model_options,
    shell:
        "python -m rdiunet.cli bench --model {params.model} --out {output} --threads {threads} "
        "{params.flags} {params.options} > {log} 2>&1"
