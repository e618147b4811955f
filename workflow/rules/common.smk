# Configuration checks, wildcard constraints and target helpers shared by every rule file.

import os
import shlex
import sys

from snakemake.utils import validate

# The workflow reads a few dependency-free facts from the package (figure kinds); the checkout is
# importable whatever environment Snakemake itself runs in.
sys.path.insert(0, workflow.basedir)


validate(config, "../schemas/config.schema.yaml")


# Absolute, relative to the Snakefile's folder: remote (Slurm) jobs start inside the working
# directory already, and a relative path would be applied a second time there.
workdir: os.path.join(workflow.basedir, config["workdir"])


DATASETS = list(config["datasets"])
MODELS = list(config["models"])
SEEDS = [int(seed) for seed in config["seeds"]]

# Every rule calls the package's CLI as `python -m rdiunet.cli`. PYTHONPATH makes the checkout
# importable inside the conda environments (which hold only the dependencies); a venv with
# rdiunet installed needs nothing.
# (The prefix is formatted like a shell command: braces meant for bash are doubled.)
shell.prefix(
    f"set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(str(workflow.basedir))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(MODELS),
    seed=r"\d+",


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def option_value(value):
    """A config value as the CLI's key=value syntax expects it (lists become a,b,c)."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def model_options(wildcards):
    options = config["models"][wildcards.model]
    return " ".join(f"--model-opt {shlex.quote(f'{k}={option_value(v)}')}" for k, v in options.items())


def prepare_flags(wildcards):
    settings = dataset_config(wildcards)
    flags = [f"--split {option_value(settings['split'])}", f"--seed {settings['split_seed']}"]
    if "keep_empty" in settings:
        flags.append("--keep-empty" if settings["keep_empty"] else "--no-keep-empty")
    return " ".join(flags)


def fetch_flags(wildcards):
    settings = dataset_config(wildcards)
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
        f"--amp {training['amp']}",
        f"--device {training['device']}",
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
        f"--amp {bench['amp']}",
        f"--device {bench['device']}",
    ]
    # Unset: the benchmark's own default for the device it runs on.
    flags += [f"--batch-sizes {option_value(bench['batch_sizes'])}"] if "batch_sizes" in bench else []
    flags += ["--channels-last"] if bench["channels_last"] else []
    return " ".join(flags)


def run_dirs():
    return expand("results/{dataset}/{model}/seed{seed}", dataset=DATASETS, model=MODELS, seed=SEEDS)


def all_metrics():
    return [f"{run}/metrics.json" for run in run_dirs()]


def all_bench():
    return expand("results/{dataset}/{model}/bench.json", dataset=DATASETS, model=MODELS)


def all_targets():
    return (
        expand("data/prepared/{dataset}.npz", dataset=DATASETS)
        + all_metrics()
        + all_bench()
        + REPORT_TARGETS
    )
