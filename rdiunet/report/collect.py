"""Reading a results tree (rdiunet.runfolder) into tidy tables, checking every run on the way.

Each run's files are checked against each other before anything is averaged: metrics.json has
every test metric and each is finite, history.csv has one row per epoch that metrics.json counts,
per_image.csv has one row per test image and agrees with the mean Dice, run.json says the run is
complete and was trained on the prepared data that is there now. A run that fails a check is left
out and named with its reason (`Collection.excluded`); a missing run or bench.json is a gap the
report states, never a crash and never a silent average.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rdiunet import paper
from rdiunet.errors import UserError
from rdiunet.fileio import read_json
from rdiunet.metrics import TEST_METRICS, convergence, stability
from rdiunet.readings import ConfigError, Plan, resolve
from rdiunet.runfolder import RunFolder, bench_path, read_bench

# Test metrics that may be null: the median HD95 is undefined when every image's HD95 is.
NULLABLE = {"hd95_median"}
RUN_KEYS = (*TEST_METRICS, "best_epoch", "epochs", "images")

RUN_COLUMNS = (
    "dataset",
    "model",
    "seed",
    *TEST_METRICS,
    "best_epoch",
    "epochs",
    "energy_j",
    "stability",
    "convergence",
)
BENCH_COLUMNS = (
    "dataset",
    "model",
    "params",
    "gflops",
    "ms_median",
    "ms_p90",
    "ms_p99",
    "throughput",
    "throughput_batch",
    "device",
)
HISTORY_COLUMNS = ("epoch", "val_dice")
PER_IMAGE_COLUMNS = ("id", "dice")


@dataclass(frozen=True)
class Study:
    """What the workflow ran: the readings' plan (labels, bases, the runs they compare), seeds."""

    plan: Plan
    seeds: list[int]
    stability_drop: float = paper.STABILITY_DROP
    synthetic: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "Study":
        try:
            return cls(
                plan=resolve(config),
                seeds=[int(s) for s in config["seeds"]],
                stability_drop=config.get("stability_drop", paper.STABILITY_DROP),
                synthetic=bool(config.get("synthetic", False)),
            )
        except ConfigError as error:
            raise UserError(f"the configuration does not fit together: {error}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise UserError(
                f"the configuration lacks or mistypes {error}; pass the workflow's config"
            ) from None

    @property
    def datasets(self) -> list[str]:
        """The dataset labels that were trained on, in the configuration's order."""
        return self.plan.datasets_trained()

    def models_of(self, dataset: str) -> list[str]:
        return self.plan.models_of(dataset)

    def threshold(self, dataset: str) -> float:
        return self.plan.datasets[dataset]["threshold"]

    def runs(self):
        """(dataset, model, seed) of every training run the readings need."""
        for dataset, model in self.plan.pairs:
            for seed in self.seeds:
                yield dataset, model, seed


@dataclass(frozen=True)
class Excluded:
    """A run (or, with seed None, a benchmark) left out of the report, and why."""

    dataset: str
    model: str
    seed: int | None
    reason: str

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.model}/" + (
            f"seed{self.seed}" if self.seed is not None else "bench.json"
        )


@dataclass
class Collection:
    """The valid runs of a study: one row per run, their curves and per-image scores, the
    benchmarks, and what was left out."""

    runs: pd.DataFrame
    histories: pd.DataFrame
    per_image: pd.DataFrame
    benches: pd.DataFrame
    excluded: list[Excluded] = field(default_factory=list)
    synthetic_runs: list[str] = field(default_factory=list)  # runs whose data was synthetic
    unchecked_data: list[str] = field(default_factory=list)  # datasets without a summary to check

    def synthetic(self, study: Study) -> bool:
        """Whether any number here comes from synthetic data, whatever the configuration says."""
        return study.synthetic or bool(self.synthetic_runs)


class Invalid(Exception):
    """A run's files fail a check; the message is the reason shown in the report."""


def finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_metrics(metrics) -> None:
    if not isinstance(metrics, dict):
        raise Invalid("metrics.json is not a JSON object")
    for key in RUN_KEYS:
        if key not in metrics:
            raise Invalid(f"metrics.json lacks '{key}'")
        if not (finite(metrics[key]) or (metrics[key] is None and key in NULLABLE)):
            raise Invalid(f"metrics.json: {key} is {metrics[key]!r}, not a finite number")
    if not isinstance(metrics["epochs"], int) or metrics["epochs"] < 1:
        raise Invalid(f"metrics.json: epochs is {metrics['epochs']!r}")


def check_frame(frame: pd.DataFrame, name: str, columns: tuple[str, ...]) -> None:
    for column in columns:
        if column not in frame.columns:
            raise Invalid(f"{name} lacks the column '{column}'")
    numbers = pd.to_numeric(frame[columns[-1]], errors="coerce")
    if not np.isfinite(numbers).all():
        raise Invalid(f"{name}: {columns[-1]} holds values that are not finite numbers")


def check_run(folder: RunFolder, data_sha256: str | None):
    """(metrics, history, per_image, run.json) of a run whose files agree; else Invalid."""
    if not folder.path.exists():
        raise Invalid("missing: the run folder does not exist")
    try:
        metrics, run = folder.read_metrics(), folder.read_run()
        history, per_image = folder.read_history(), folder.read_per_image()
    except UserError as error:
        raise Invalid(str(error)) from None
    check_metrics(metrics)
    check_frame(history, "history.csv", HISTORY_COLUMNS)
    check_frame(per_image, "per_image.csv", PER_IMAGE_COLUMNS)
    epochs = metrics["epochs"]
    if history.epoch.tolist() != list(range(1, len(history) + 1)):
        raise Invalid("history.csv: the epochs are not numbered 1, 2, 3, ...")
    if len(history) != epochs:
        raise Invalid(f"history.csv has {len(history)} epochs, metrics.json says {epochs}")
    if not 1 <= metrics["best_epoch"] <= epochs:
        raise Invalid(f"metrics.json: best_epoch {metrics['best_epoch']} is outside 1..{epochs}")
    if len(per_image) != metrics["images"]:
        raise Invalid(f"per_image.csv has {len(per_image)} images, metrics.json says {metrics['images']}")
    if abs(per_image.dice.astype(float).mean() - metrics["dice"]) > 1e-5:
        raise Invalid("per_image.csv's mean Dice differs from metrics.json's")
    if not isinstance(run, dict) or run.get("status") != "complete":
        status = run.get("status") if isinstance(run, dict) else None
        raise Invalid(f"run.json says the run is {status or 'in an unknown state'}, not complete")
    if data_sha256 is not None and run.get("data_sha256") != data_sha256:
        raise Invalid(
            f"trained on other data (sha256 {str(run.get('data_sha256'))[:12]}) than the prepared "
            f"data there now ({data_sha256[:12]})"
        )
    return metrics, history, per_image, run


def prepared_sha256(data: Path | None, dataset: str) -> str | None:
    """The sha256 the prepared data's summary records, or None where there is no summary to read."""
    if data is None or not (data / f"{dataset}.json").exists():
        return None
    summary = read_json(data / f"{dataset}.json", "rerun rdiunet prepare")
    return summary.get("npz_sha256") if isinstance(summary, dict) else None


def run_record(dataset, model, seed, metrics, history, study: Study) -> dict:
    dice = history["val_dice"].astype(float).tolist()
    gpu = metrics.get("gpu") if isinstance(metrics.get("gpu"), dict) else {}
    return {
        "dataset": dataset,
        "model": model,
        "seed": seed,
        **{name: metrics[name] for name in TEST_METRICS},
        "best_epoch": metrics["best_epoch"],
        "epochs": len(dice),
        "energy_j": gpu.get("energy_j_total"),
        "stability": stability(dice, study.stability_drop),
        "convergence": convergence(dice, study.threshold(dataset)),
    }


def bench_record(bench: dict) -> dict:
    largest = max(
        (row for row in bench["throughput"] if "images_per_s" in row),
        key=lambda row: row["batch_size"],
        default={},
    )
    return {
        "params": bench["params"],
        "gflops": bench["gflops_per_image"],
        "ms_median": bench["latency_ms"]["median"],
        "ms_p90": bench["latency_ms"]["p90"],
        "ms_p99": bench["latency_ms"]["p99"],
        "throughput": largest.get("images_per_s"),
        "throughput_batch": largest.get("batch_size"),
        "device": bench["environment"]["device_name"],
    }


def collect(results: Path, study: Study, data: Path | None = None) -> Collection:
    """Every run and benchmark of `study` in `results`, checked; `data` is the folder of the
    prepared data, whose checksums the runs must match (not checked where it is None)."""
    runs, histories, per_images, benches = [], [], [], []
    excluded, synthetic, unchecked = [], [], []
    for dataset in study.datasets:
        data_sha256 = prepared_sha256(data, dataset)
        if data_sha256 is None:
            unchecked.append(dataset)
        for model in study.models_of(dataset):
            for seed in study.seeds:
                folder = RunFolder.of(results, dataset, model, seed)
                try:
                    metrics, history, per_image, run = check_run(folder, data_sha256)
                except Invalid as reason:
                    excluded.append(Excluded(dataset, model, seed, str(reason)))
                    continue
                runs.append(run_record(dataset, model, seed, metrics, history, study))
                labels = {"dataset": dataset, "model": model, "seed": seed}
                histories.append(history.assign(**labels))
                per_images.append(per_image.assign(**labels))
                if (run.get("data") or {}).get("synthetic"):
                    synthetic.append(f"{dataset}/{model}/seed{seed}")
            try:
                benches.append(
                    {"dataset": dataset, "model": model, **bench_record(read_bench(results, dataset, model))}
                )
            except (UserError, KeyError, TypeError, AttributeError) as error:
                reason = (
                    str(error)
                    if isinstance(error, UserError)
                    else f"{bench_path(results, dataset, model)} lacks {error}"
                )
                excluded.append(Excluded(dataset, model, None, reason))
    return Collection(
        runs=pd.DataFrame(runs, columns=list(RUN_COLUMNS) if not runs else None),
        histories=pd.concat(histories, ignore_index=True)
        if histories
        else pd.DataFrame(columns=["dataset", "model", "seed", "epoch", "val_dice"]),
        per_image=pd.concat(per_images, ignore_index=True)
        if per_images
        else pd.DataFrame(columns=["dataset", "model", "seed", "id", "dice"]),
        benches=pd.DataFrame(benches, columns=list(BENCH_COLUMNS) if not benches else None),
        excluded=excluded,
        synthetic_runs=synthetic,
        unchecked_data=unchecked,
    )
