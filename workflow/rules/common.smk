# Configuration checks, wildcard constraints and target helpers shared by every rule file.

import json
import os
import shlex
import sys

from snakemake.logging import logger

# The workflow reads a few dependency-free facts from the package (figure kinds, the readings'
# plan); the checkout is importable whatever environment Snakemake itself runs in.
sys.path.insert(0, workflow.basedir)

from rdiunet.configuration import check_config
from rdiunet.data.folder import FOLDER
from rdiunet.errors import UserError
from rdiunet.nvidia_smi import local_gpu_count
from rdiunet.readings import WORKFLOW_KEYS, ConfigError, resolve


# Validated against workflow/schemas/config.schema.yaml, defaults filled in, the first problem in
# one line (snakemake.utils.validate prints the whole schema for an unknown key).
try:
    check_config(config)
except UserError as error:
    sys.exit(f"Error: {error}")
try:
    PLAN = resolve(config, WORKFLOW_KEYS)
except ConfigError as error:
    sys.exit(f"Error in the configuration: {error}")

# Each model's name and options against its builder's signature, and that it builds and takes the
# image sides of the datasets it is trained on (a model whose optional package is missing is said
# so here, and by the jobs that need it).
from rdiunet.models import check_models, missing_packages
from rdiunet.models.registry import install_hint

try:
    check_models(
        PLAN.models,
        {label: {PLAN.datasets[d]["size"] for d, m in PLAN.pairs if m == label} for label in PLAN.models},
    )
except UserError as error:
    sys.exit(f"Error in the configuration: {error}")
for label in dict.fromkeys(model for _, model in PLAN.pairs):
    if needs := missing_packages(PLAN.base(label)):
        logger.warning(
            f"models.{label} needs {', '.join(needs)}, which this Python lacks: {install_hint(needs)} "
            "(with --use-conda, envs/train.yaml has it); its jobs stop without it"
        )


# Absolute, relative to the Snakefile's folder: remote (Slurm) jobs start inside the working
# directory already, and a relative path would be applied a second time there.
workdir: os.path.join(workflow.basedir, config["workdir"])


# Labels: what the results tree, tables and figures are keyed by. Sources: the registered
# datasets whose archives are fetched once and prepared by every label that uses them.
DATASETS = PLAN.datasets_trained()
MODELS = list(PLAN.models)
# A folder dataset (source: folder) is read where its files are: nothing to fetch, and its paths
# are made absolute here, relative to where snakemake was started, before `workdir:` moves on.
SOURCES = sorted({PLAN.source(dataset) for dataset in DATASETS} - {FOLDER})
for settings in PLAN.datasets.values():
    if settings["source"] == FOLDER:
        for key in ("images", "masks"):
            settings[key] = os.path.abspath(os.path.expanduser(settings[key]))
SEEDS = [int(seed) for seed in config["seeds"]]

# Every rule calls the package's CLI as `python -m rdiunet.cli`. PYTHONPATH makes the checkout
# importable inside the conda environments (which hold only the dependencies); a venv with
# rdiunet installed needs nothing.
# (The prefix is formatted like a shell command: braces meant for bash are doubled.)
shell.prefix(
    f"set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(str(workflow.basedir))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


# GPUs. Snakemake counts `gpu` against a limit only when one is set, so on a workstation (local
# execution, no --resources gpu=N given) the limit is this machine's GPUs times gpu_slots: a
# training takes one slot, a benchmark a whole card's worth. The jobs also claim their card
# themselves (rdiunet/gpu.py), which decides which card. Cluster jobs each ask for one GPU.
# Cluster runs are told apart as Snakemake itself does: they have a job count (`nodes`), also in
# a dry run, where the executor is replaced.
GPU_SLOTS = config["training"]["gpu_slots"]
ON_CLUSTER = workflow.nodes is not None or not workflow.local_exec
LOCAL_GPUS = None
if not (ON_CLUSTER or workflow.remote_exec or workflow.subprocess_exec):
    if "gpu" not in workflow.global_resources:
        LOCAL_GPUS = local_gpu_count()
        workflow.register_resource("gpu", LOCAL_GPUS * GPU_SLOTS)
        if LOCAL_GPUS:
            logger.info(
                f"GPU limit {LOCAL_GPUS * GPU_SLOTS}: {LOCAL_GPUS} GPU(s) here x {GPU_SLOTS} "
                "training slot(s) each; a benchmark takes a whole card (--resources gpu=N overrides)"
            )


def gpu_need(section, whole_card=False):
    """What a train (or, whole_card, a bench) job counts against the `gpu` resource: a bench
    takes a whole card's slots, or all of a smaller limit given with --resources."""
    if config[section]["device"] == "cpu" or LOCAL_GPUS == 0:
        return 0
    if not whole_card or ON_CLUSTER:
        return 1
    given = workflow.global_resources["gpu"].value if LOCAL_GPUS is None else None
    return max(1, min(GPU_SLOTS, given)) if isinstance(given, int) else GPU_SLOTS


wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(MODELS),
    source="|".join(SOURCES),
    seed=r"\d+",


def dataset_config(wildcards):
    """A dataset label's settings, a variant's inherited from its source's entry."""
    return PLAN.datasets[wildcards.dataset]


def source_config(wildcards):
    """The settings that fetching a source follows: its own entry's, or its first variant's."""
    labels = [d for d in PLAN.datasets if PLAN.source(d) == wildcards.source]
    return PLAN.datasets[wildcards.source if wildcards.source in labels else labels[0]]


def source_of(wildcards):
    return PLAN.source(wildcards.dataset)


def raw_manifest(wildcards):
    if source_of(wildcards) == FOLDER:
        return []
    return f"data/raw/{source_of(wildcards)}/manifest.json"


def data_arguments(wildcards):
    """Where `rdiunet prepare` reads: a source's raw folder, or a folder dataset's own files."""
    source, settings = source_of(wildcards), dataset_config(wildcards)
    if source != FOLDER:
        return f"--dataset {source} --raw data/raw/{source}"
    arguments = ["--dataset folder"]
    for key in ("images", "masks", "subject"):
        if key in settings:
            arguments.append(f"--{key} {shlex.quote(settings[key])}")
    return " ".join(arguments)


def base_model(wildcards):
    return PLAN.base(wildcards.model)


def option_value(value):
    """A config value as the CLI's key=value syntax expects it (lists become a,b,c)."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def model_options(wildcards):
    options = PLAN.model_options(wildcards.model)
    return " ".join(f"--model-opt {shlex.quote(f'{k}={option_value(v)}')}" for k, v in options.items())


def prepare_flags(wildcards):
    settings = dataset_config(wildcards)
    flags = [
        f"--split {option_value(settings['split'])}",
        f"--seed {settings['split_seed']}",
        f"--split-by {settings['split_by']}",
    ]
    if "keep_empty" in settings:
        flags.append("--keep-empty" if settings["keep_empty"] else "--no-keep-empty")
    if "folds" in settings:
        flags.append(f"--folds {settings['folds']}")
    return " ".join(flags)


def fetch_flags(wildcards):
    settings = source_config(wildcards)
    flags = ["--official-splits"] if settings.get("official_splits") else []
    if not config["synthetic"] and settings.get("allow_checksum_mismatch"):
        flags.append("--allow-checksum-mismatch")
    if config["synthetic"] and "synth_n" in settings:
        flags.append(f"--n {settings['synth_n']}")
    return " ".join(flags)


def train_flags(wildcards):
    settings, training = dataset_config(wildcards), config["training"]
    flags = [
        f"--epochs {settings['epochs']}",
        f"--batch-size {settings['batch_size']}",
        f"--lr {settings.get('lr', training['lr'])}",
        f"--precision {training['precision']}",
        f"--checkpoint {config['checkpoint']}",
        f"--device {training['device']}",
        f"--gpu-slots {training['gpu_slots']}",
    ]
    flags += ["--deterministic"] if training["deterministic"] else []
    flags += ["--compile"] if training["compile"] else []
    return " ".join(flags)


def bench_flags(wildcards):
    bench = config["bench"]
    flags = [
        f"--size {dataset_config(wildcards)['size']}",
        f"--runs {bench['runs']}",
        f"--warmup {bench['warmup']}",
        f"--precision {bench['precision']}",
        f"--precisions {option_value(bench['precisions'])}",
        f"--protocol {config['speed_protocol']}",
        f"--device {bench['device']}",
    ]
    # Unset: the benchmark's own default for the device it runs on.
    flags += [f"--batch-sizes {option_value(bench['batch_sizes'])}"] if "batch_sizes" in bench else []
    flags += ["--channels-last"] if bench["channels_last"] else []
    return " ".join(flags)


# The resolved configuration (defaults filled in by the schema) is what the report describes.
CONFIG_JSON = shlex.quote(json.dumps(config))


def config_json(wildcards):
    """A function, not a string: Snakemake would format the braces of a string parameter, and
    the configuration may hold some (a folder dataset's masks pattern, "masks/{name}")."""
    return CONFIG_JSON


def speed_models(wildcards):
    """Every model trained on the dataset, with its base and options, for `rdiunet speed`."""
    models = {m: {"model": PLAN.base(m), **PLAN.model_options(m)} for m in PLAN.models_of(wildcards.dataset)}
    return shlex.quote(json.dumps(models))


def speed_flags(wildcards):
    return bench_flags(wildcards) + f" --sessions {config['bench']['sessions']}"


def seeds_of(dataset):
    """A dataset's own seeds (a cross-validated one may need more), else the configuration's."""
    return [int(seed) for seed in PLAN.datasets[dataset].get("seeds", SEEDS)]


def run_dirs():
    """Only the runs the readings compare (rdiunet/readings.py), not every dataset x model."""
    return [f"results/{d}/{m}/seed{s}" for d, m in PLAN.pairs for s in seeds_of(d)]


def all_metrics():
    return [f"{run}/metrics.json" for run in run_dirs()]


def all_bench():
    return [f"results/{d}/{m}/bench.json" for d, m in PLAN.pairs]


def all_speed():
    return [f"results/{d}/speed.json" for d in DATASETS]


def all_targets():
    return (
        expand("data/prepared/{dataset}.npz", dataset=DATASETS)
        + all_metrics()
        + all_bench()
        + all_speed()
        + REPORT_TARGETS
    )
