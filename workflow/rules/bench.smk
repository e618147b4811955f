# Costs per dataset (its image size) and model: latency, throughput, FLOPs, memory and energy;
# and per dataset, the speed comparison: every model timed in interleaved sessions.


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


rule speed:
    output:
        "results/{dataset}/speed.json",
    log:
        "logs/speed/{dataset}.log",
    benchmark:
        "logs/timing/speed/{dataset}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["bench"]["threads"]
    resources:
        gpu=gpu_need("bench", whole_card=True),
    params:
        models=speed_models,
        flags=speed_flags,
    shell:
        "python -m rdiunet.cli speed --models-json {params.models} --out {output} --threads {threads} "
        "{params.flags} > {log} 2>&1"
