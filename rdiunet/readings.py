"""The paper's open choices as named readings, and the runs they need.

A configuration names model and dataset *variants* (labels for a registered base with options),
the proposed models and the baselines they are compared with. The **headline reading** is the
first proposed model against the first baseline on the headline datasets, judged with the
configured curve, checkpoint, precision and speed protocol; every other reading changes exactly
one choice (one-factor-at-a-time, like an ablation):

- another proposed model (e.g. `rdiunet_k3`) against the headline baseline;
- the headline proposed model against another baseline (e.g. `unet_classic`);
- one dataset replaced by a variant of the same source (e.g. `nerve_by_image` for `nerve`);
- and, from the same runs: another Table 2 curve, tested checkpoint, benchmark precision or
  speed protocol (the choices below).

Only the runs those readings compare are trained (`Plan.pairs`), not the full product of models
and datasets. This module imports nothing beyond the standard library: the workflow resolves the
plan with it before any job starts.
"""

import re
from dataclasses import dataclass, field

LABEL = re.compile(r"^[a-z][a-z0-9_]*$")

# The open choices that need no extra runs, each value with what it means. The first is the
# default headline; config.yaml may name another.
CURVES = {
    "val_dice": "hard validation Dice, mean over images (logit > 0)",
    "val_dice_pooled": "hard validation Dice, pooled over the validation set",
    "val_soft_dice": "soft validation Dice of the probabilities per batch, smoothing 1 (Keras dice_coef)",
    "train_soft_dice": "soft Dice of the training batches, running mean over the epoch (Keras's log)",
}
CHECKPOINTS = {
    "best_dice": "the epoch with the best validation Dice (per image)",
    "best_loss": "the epoch with the lowest validation loss",
    "last": "the last epoch",
}
PRECISIONS = {
    "tf32": "float32 weights, TF32 for matmul and cuDNN convolutions (both frameworks' default on an A100)",
    "fp32": "float32 weights, TF32 off for matmul and cuDNN convolutions",
    "bf16": "bfloat16 autocast",
    "fp16": "float16 autocast with gradient scaling",
}
PROTOCOLS = {
    "eager_b1": "batch 1, eager mode: median over timed runs after a warm-up",
    "graphed_b1": "batch 1 replayed from a CUDA graph (GPU only)",
    "best_batch": "per image at the batch size with the highest throughput",
    "end_to_end": "batch 1 from a host tensor to a host mask: copy in, forward, sigmoid, threshold, copy out",
}
# The precision readings of the speed claim (fp16 is a training option, not one of the paper's readings).
PRECISION_READINGS = ("tf32", "fp32", "bf16")


class ConfigError(ValueError):
    """The configuration's readings do not fit together; the message names the key."""


@dataclass(frozen=True)
class Reading:
    """One row of the robustness matrix: what is compared, and the one choice that differs."""

    name: str  # "headline", or what changed: "baseline = unet_classic"
    factor: str  # headline, proposed, baseline, dataset, curve, checkpoint, precision, protocol
    proposed: str
    baseline: str
    datasets: tuple[str, ...]  # the dataset labels, in the headline datasets' order
    # The headline dataset each label stands for (the same label, or the one a variant replaces).
    stands_for: dict[str, str] = field(default_factory=dict)
    curve: str = "val_dice"  # the history column Table 2 counts on
    checkpoint: str = "best_dice"  # the weights the test metrics come from
    precision: str = "tf32"  # the benchmark precision the speed claim uses
    protocol: str = "eager_b1"  # the speed protocol


@dataclass(frozen=True)
class Plan:
    """Every model and dataset label with its base, the readings, and the runs they need."""

    models: dict[str, dict]  # label -> {"model": base, **options}
    datasets: dict[str, dict]  # label -> {"source": base, **settings}
    readings: tuple[Reading, ...]
    pairs: tuple[tuple[str, str], ...]  # (dataset, model) labels to train and benchmark

    @property
    def headline(self) -> Reading:
        return self.readings[0]

    def base(self, model: str) -> str:
        return self.models[model]["model"]

    def source(self, dataset: str) -> str:
        return self.datasets[dataset]["source"]

    def model_options(self, model: str) -> dict:
        return {k: v for k, v in self.models[model].items() if k != "model"}

    def models_of(self, dataset: str) -> list[str]:
        """The model labels trained on `dataset`, in the configuration's order."""
        return [m for m in self.models if (dataset, m) in self.pairs]

    def datasets_trained(self) -> list[str]:
        return [d for d in self.datasets if any(pair[0] == d for pair in self.pairs)]


def resolve_models(config: dict) -> dict[str, dict]:
    """Each label's model: a registered name (`model`, default the label itself) or an import path
    (`factory: "mypackage.nets:build"`), and its options."""
    models = {}
    for label, entry in config["models"].items():
        entry = dict(entry or {})
        base = entry.pop("factory", None) or entry.pop("model", label)
        models[label] = {"model": base, **entry}
    return models


# The preparation defaults of a source's own entry (the schema's `dataset`, which a test keeps in
# step): a variant whose source has no entry of its own starts from them.
DATASET_DEFAULTS = {
    "split": [0.8, 0.1, 0.1],
    "split_seed": 0,
    "split_by": "subject",
    "official_splits": False,
    "allow_checksum_mismatch": False,
}


def resolve_datasets(config: dict, required: tuple[str, ...]) -> dict[str, dict]:
    """Each label's settings: a variant inherits its source's entry (or, where the configuration
    has none, a source entry's defaults) and overrides what it names."""
    entries = config["datasets"]
    datasets = {}
    for label, entry in entries.items():
        entry = dict(entry or {})
        source = entry.pop("source", label)
        inherited = {**DATASET_DEFAULTS, **dict(entries.get(source) or {})} if source != label else {}
        inherited.pop("source", None)
        datasets[label] = {"source": source, **inherited, **entry}
        missing = [k for k in required if k not in datasets[label]]
        if missing:
            inherit = (
                f", and its source '{source}' has no entry to inherit it from" if source != label else ""
            )
            raise ConfigError(f"datasets.{label} gives no {missing[0]}{inherit}; add it to the entry")
    return datasets


def listed(config: dict, key: str, known: dict, what: str) -> list[str]:
    value = config.get("compare", {}).get(key)
    labels = [value] if isinstance(value, str) else list(value or [])
    for label in labels:
        if label not in known:
            raise ConfigError(f"compare.{key} names '{label}', which is not one of the configured {what}")
    return labels


# What every dataset label needs: the report its Table 2 threshold, the workflow the rest.
REPORT_KEYS = ("threshold",)
WORKFLOW_KEYS = ("size", "threshold", "epochs", "batch_size")


def choice(config: dict, key: str, choices: dict, default: str) -> str:
    value = config.get(key, default)
    if value not in choices:
        raise ConfigError(f"{key} is '{value}'; use one of {', '.join(choices)}")
    return value


def check_folds(datasets: dict[str, dict], seeds: list[int]) -> None:
    """A cross-validated dataset's seeds must test every fold (seed s tests fold s mod k)."""
    for label, settings in datasets.items():
        folds = settings.get("folds")
        if not folds:
            continue
        mine = settings.get("seeds", seeds)
        untested = sorted(set(range(folds)) - {int(s) % folds for s in mine})
        if untested:
            raise ConfigError(
                f"datasets.{label}: its seeds {list(mine)} leave fold(s) {untested} of {folds} untested "
                f"(seed s tests fold s mod {folds}); give it seeds that cover every fold, e.g. "
                f"seeds: {list(range(folds))}"
            )


def resolve(config: dict, required: tuple[str, ...] = REPORT_KEYS) -> Plan:
    """The plan of a (schema-validated) configuration; a configuration that does not fit together
    raises ConfigError naming the key. `required` names the settings every dataset label must have
    (given or inherited)."""
    for section in ("models", "datasets"):
        for label in config[section]:
            if not LABEL.match(label):
                raise ConfigError(
                    f"{section}.{label}: a label must be lower case letters, digits and _ (a folder name)"
                )
    models, datasets = resolve_models(config), resolve_datasets(config, required)
    proposed = (
        listed(config, "proposed", models, "models")
        or [m for m in models if models[m]["model"] == "rdiunet"][:1]
    )
    baselines = (
        listed(config, "baselines", models, "models")
        or [m for m in models if models[m]["model"] == "unet"][:1]
    )
    if not proposed or not baselines:
        raise ConfigError(
            "compare.proposed and compare.baselines must each name at least one configured model"
        )
    # Headline datasets: those that are not variants of another configured dataset.
    headline = [d for d in datasets if datasets[d]["source"] == d or datasets[d]["source"] not in datasets]
    variants = [d for d in datasets if d not in headline]

    chosen = {
        "curve": choice(config, "table2_curve", CURVES, "val_dice"),
        "checkpoint": choice(config, "checkpoint", CHECKPOINTS, "best_dice"),
        "precision": choice(config.get("bench") or {}, "precision", PRECISIONS, "tf32"),
        "protocol": choice(config, "speed_protocol", PROTOCOLS, "eager_b1"),
    }

    def reading(name, factor, proposed_label, baseline_label, replace=None, **changed):
        labels = tuple(replace.get(d, d) for d in headline) if replace else tuple(headline)
        stands_for = dict(zip(labels, headline, strict=True))
        return Reading(
            name, factor, proposed_label, baseline_label, labels, stands_for, **{**chosen, **changed}
        )

    readings = [reading("headline", "headline", proposed[0], baselines[0])]
    readings += [reading(f"proposed = {p}", "proposed", p, baselines[0]) for p in proposed[1:]]
    readings += [reading(f"baseline = {b}", "baseline", proposed[0], b) for b in baselines[1:]]
    for variant in variants:
        source = datasets[variant]["source"]
        readings.append(
            reading(f"{source} = {variant}", "dataset", proposed[0], baselines[0], {source: variant})
        )
    # The readings the same runs answer: one more row per other value of each choice.
    for factor, values in (
        ("curve", CURVES),
        ("checkpoint", CHECKPOINTS),
        ("precision", PRECISION_READINGS),
        ("protocol", PROTOCOLS),
    ):
        for value in values:
            if value != chosen[factor]:
                readings.append(
                    reading(f"{factor} = {value}", factor, proposed[0], baselines[0], **{factor: value})
                )
    check_folds(datasets, config.get("seeds", []))
    pairs = []
    for r in readings:
        for dataset in r.datasets:
            for model in (r.proposed, r.baseline):
                if (dataset, model) not in pairs:
                    pairs.append((dataset, model))
    ordered = tuple((d, m) for d in datasets for m in models if (d, m) in pairs)
    return Plan(models, datasets, tuple(readings), ordered)
