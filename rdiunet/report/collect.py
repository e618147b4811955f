"""Reading a results tree (results/{dataset}/{model}/seed{seed}/..., results/{dataset}/{model}/bench.json)
into tidy tables."""

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rdiunet.errors import UserError
from rdiunet.metrics import convergence, stability


@dataclass(frozen=True)
class Study:
    """What the workflow ran: datasets with their thresholds, models, seeds."""

    datasets: dict[str, dict]
    models: dict[str, dict]
    seeds: list[int]
    stability_drop: float = 0.05
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
                stability_drop=config.get("stability_drop", 0.05),
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


def run_dir(results: Path, dataset: str, model: str, seed: int) -> Path:
    return results / dataset / model / f"seed{seed}"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing; run the workflow (or rdiunet train) for it first") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}); rerun the job that writes it") from None


def read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"{path} is missing; run the workflow (or rdiunet train) for it first")
    return pd.read_csv(path)


def runs(results: Path, study: Study) -> pd.DataFrame:
    """One row per dataset x model x seed: test metrics, energy, stability and convergence."""
    rows = []
    for dataset, model, seed in study.runs():
        folder = run_dir(results, dataset, model, seed)
        metrics = read_json(folder / "metrics.json")
        dice = read_csv(folder / "history.csv")["val_dice"].tolist()
        gpu = metrics.get("gpu") or {}
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "seed": seed,
                "dice": metrics["dice"],
                "iou": metrics["iou"],
                "dice_dataset": metrics["dice_dataset"],
                "iou_dataset": metrics["iou_dataset"],
                "hd95": metrics["hd95_median"],
                "hd95_undefined": metrics["hd95_undefined"],
                "gt_empty": metrics["gt_empty"],
                "false_positive_on_empty": metrics["false_positive_on_empty"],
                "best_epoch": metrics["best_epoch"],
                "epochs": len(dice),
                "energy_j": gpu.get("energy_j_total"),
                "stability": stability(dice, study.stability_drop),
                "convergence": convergence(dice, study.threshold(dataset)),
            }
        )
    return pd.DataFrame(rows)


def stacked(results: Path, study: Study, name: str) -> pd.DataFrame:
    """One CSV of every run folder, stacked, with dataset, model and seed columns added."""
    frames = [
        read_csv(run_dir(results, dataset, model, seed) / name).assign(
            dataset=dataset, model=model, seed=seed
        )
        for dataset, model, seed in study.runs()
    ]
    return pd.concat(frames, ignore_index=True)


def histories(results: Path, study: Study) -> pd.DataFrame:
    return stacked(results, study, "history.csv")


def per_image(results: Path, study: Study) -> pd.DataFrame:
    return stacked(results, study, "per_image.csv")


def benches(results: Path, study: Study) -> pd.DataFrame:
    """One row per dataset x model from bench.json."""
    rows = []
    for dataset in study.datasets:
        for model in study.models:
            bench = read_json(results / dataset / model / "bench.json")
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
