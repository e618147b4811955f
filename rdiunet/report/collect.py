"""Reading a results tree (rdiunet.runfolder) into tidy tables, and the study that produced it."""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rdiunet import paper
from rdiunet.errors import UserError
from rdiunet.metrics import TEST_METRICS, convergence, stability
from rdiunet.runfolder import RunFolder, read_bench


@dataclass(frozen=True)
class Study:
    """What the workflow ran: datasets with their thresholds, models, seeds."""

    datasets: dict[str, dict]
    models: dict[str, dict]
    seeds: list[int]
    stability_drop: float = paper.STABILITY_DROP
    synthetic: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "Study":
        try:
            for name, settings in config["datasets"].items():
                if "threshold" not in settings:
                    raise UserError(f"the configuration gives no Table 2 threshold for dataset '{name}'")
            return cls(
                datasets=config["datasets"],
                models=config["models"],
                seeds=[int(s) for s in config["seeds"]],
                stability_drop=config.get("stability_drop", paper.STABILITY_DROP),
                synthetic=bool(config.get("synthetic", False)),
            )
        except (KeyError, TypeError) as error:
            raise UserError(f"the configuration lacks {error}; pass the workflow's config") from None

    def threshold(self, dataset: str) -> float:
        return self.datasets[dataset]["threshold"]

    def runs(self):
        """(dataset, model, seed) of every training run, in the configuration's order."""
        for dataset in self.datasets:
            for model in self.models:
                for seed in self.seeds:
                    yield dataset, model, seed

    def run_folders(self, results: Path):
        """(dataset, model, seed, RunFolder) of every training run."""
        for dataset, model, seed in self.runs():
            yield dataset, model, seed, RunFolder.of(results, dataset, model, seed)


def runs(results: Path, study: Study) -> pd.DataFrame:
    """One row per dataset x model x seed: every test metric, energy, stability and convergence."""
    rows = []
    for dataset, model, seed, folder in study.run_folders(results):
        metrics = folder.read_metrics()
        dice = folder.read_history()["val_dice"].tolist()
        gpu = metrics.get("gpu") or {}
        rows.append(
            {
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
        )
    return pd.DataFrame(rows)


def stacked(study: Study, results: Path, read) -> pd.DataFrame:
    """One file of every run folder (`read(folder)` gives its frame), stacked, with dataset, model
    and seed columns added."""
    frames = [
        read(folder).assign(dataset=dataset, model=model, seed=seed)
        for dataset, model, seed, folder in study.run_folders(results)
    ]
    return pd.concat(frames, ignore_index=True)


def histories(results: Path, study: Study) -> pd.DataFrame:
    return stacked(study, results, RunFolder.read_history)


def per_image(results: Path, study: Study) -> pd.DataFrame:
    return stacked(study, results, RunFolder.read_per_image)


def benches(results: Path, study: Study) -> pd.DataFrame:
    """One row per dataset x model from bench.json."""
    rows = []
    for dataset in study.datasets:
        for model in study.models:
            bench = read_bench(results, dataset, model)
            largest = max(
                (row for row in bench["throughput"] if "images_per_s" in row),
                key=lambda row: row["batch_size"],
                default={},
            )
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "params": bench["params"],
                    "gflops": bench["gflops_per_image"],
                    "ms_median": bench["latency_ms"]["median"],
                    "ms_p90": bench["latency_ms"]["p90"],
                    "ms_p99": bench["latency_ms"]["p99"],
                    "throughput": largest.get("images_per_s"),
                    "throughput_batch": largest.get("batch_size"),
                    "device": bench["environment"]["device_name"],
                }
            )
    return pd.DataFrame(rows)
