"""Reading a results tree (rdiunet.runfolder) into tidy tables, checking every run on the way.

Each run's files are checked against each other before anything is averaged (checks.py). A run
that fails a check is left out and named with its reason (`Collection.excluded`); a missing run or
bench.json is a gap the report states, never a crash and never a silent average.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rdiunet import paper
from rdiunet.errors import UserError
from rdiunet.metrics import TEST_METRICS, convergence, stability
from rdiunet.readings import ConfigError, Plan, resolve
from rdiunet.runfolder import RunFolder, bench_path, read_bench

from .checks import Invalid, check_run, prepared_sha256

RUN_COLUMNS = ("dataset", "model", "seed", "checkpoint", *TEST_METRICS, "best_epoch", "epochs", "energy_j")
BENCH_COLUMNS = (
    "dataset",
    "model",
    "params",
    "gflops",
    "size",
    "ms_per_image",
    "ms_p90",
    "ms_p99",
    "throughput",
    "throughput_batch",
    "device",
)
SPEED_COLUMNS = ("dataset", "model", "precision", "protocol", "ms", "reason")


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

    @property
    def curve(self) -> str:
        """The headline Table 2 curve (the other curves are readings)."""
        return self.plan.headline.curve

    @property
    def checkpoint(self) -> str:
        """The headline tested checkpoint."""
        return self.plan.headline.checkpoint

    @property
    def protocol(self) -> str:
        """The headline speed protocol."""
        return self.plan.headline.protocol

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

    runs: pd.DataFrame  # one row per run and kept checkpoint
    histories: pd.DataFrame
    per_image: pd.DataFrame  # one row per test image, run and kept checkpoint
    benches: pd.DataFrame  # Table 1's costs, one row per dataset and model
    speeds: pd.DataFrame = field(default_factory=pd.DataFrame)  # ms per image by precision, protocol
    excluded: list[Excluded] = field(default_factory=list)
    synthetic_runs: list[str] = field(default_factory=list)  # runs whose data was synthetic
    unchecked_data: list[str] = field(default_factory=list)  # datasets without a summary to check
    shared_energy: list[str] = field(default_factory=list)  # runs whose energy is not shown, and why

    def synthetic(self, study: Study) -> bool:
        """Whether any number here comes from synthetic data, whatever the configuration says."""
        return study.synthetic or bool(self.synthetic_runs)


SHARED_ENERGY = (
    "NVML measures the energy of the whole card (of the parent card, for a MIG slice), so a run "
    "that shared its card would be charged for the other work on it; such energies are neither "
    "shown nor added up"
)


def energy_withheld(gpu: dict) -> str | None:
    """Why a run's NVML energy is not its own (rdiunet.nvml: the energy is the whole card's), or
    None where it is, or where nothing was measured."""
    if not gpu.get("available") or gpu.get("energy_j_total") is None:
        return None
    if "card_shared" not in gpu:
        return "whether the card was shared is not recorded (a run from an older rdiunet)"
    return gpu["card_shared"]


def run_records(dataset: str, model: str, seed: int, metrics: dict) -> list[dict]:
    """One row per kept checkpoint: its test metrics and epoch, and the run's length and energy
    (none where the card was shared: another job's energy would be counted as this run's)."""
    gpu = metrics.get("gpu") if isinstance(metrics.get("gpu"), dict) else {}
    energy = None if energy_withheld(gpu) else gpu.get("energy_j_total")
    return [
        {
            "dataset": dataset,
            "model": model,
            "seed": seed,
            "checkpoint": name,
            **{metric: scores[metric] for metric in TEST_METRICS},
            "best_epoch": scores["epoch"],
            "epochs": metrics["epochs"],
            "energy_j": energy,
        }
        for name, scores in metrics["checkpoints"].items()
    ]


def speed_records(dataset: str, model: str, bench: dict) -> list[dict]:
    """Every protocol at the bench's precision, and the headline protocol in each other precision."""
    rows = []
    entries = [(bench["precision"], name, result) for name, result in bench["protocols"].items()]
    entries += [(p, bench["protocol"], r) for p, r in bench["precisions"].items() if p != bench["precision"]]
    for precision, protocol, result in entries:
        measured = bool(result.get("measured"))
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "precision": precision,
                "protocol": protocol,
                "ms": result["ms_per_image"] if measured else math.nan,
                "reason": None if measured else result.get("reason", "not measured"),
            }
        )
    return rows


def bench_record(bench: dict, protocol: str) -> dict:
    """Table 1's costs: the headline protocol's ms per image (and its spread, where it has one)."""
    largest = max(
        (row for row in bench["throughput"] if "images_per_s" in row),
        key=lambda row: row["batch_size"],
        default={},
    )
    headline = bench["protocols"][protocol]
    return {
        "params": bench["params"],
        "gflops": bench["gflops_per_image"],
        "size": bench["size"],
        "ms_per_image": headline["ms_per_image"] if headline.get("measured") else math.nan,
        "ms_p90": headline.get("p90", math.nan),
        "ms_p99": headline.get("p99", math.nan),
        "throughput": largest.get("images_per_s"),
        "throughput_batch": largest.get("batch_size"),
        "device": bench["environment"]["device_name"],
    }


def curve_table(histories: pd.DataFrame, study: "Study", curve: str) -> pd.DataFrame:
    """Per run: its length, and the stability and convergence of one Dice curve (Table 2)."""
    rows = []
    for (dataset, model, seed), history in histories.groupby(["dataset", "model", "seed"], sort=False):
        values = history.sort_values("epoch")[curve].astype(float).tolist()
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "seed": seed,
                "epochs": len(values),
                "stability": stability(values, study.stability_drop),
                "convergence": convergence(values, study.threshold(dataset)),
            }
        )
    return pd.DataFrame(rows, columns=["dataset", "model", "seed", "epochs", "stability", "convergence"])


def collect(results: Path, study: Study, data: Path | None = None) -> Collection:
    """Every run and benchmark of `study` in `results`, checked; `data` is the folder of the
    prepared data, whose checksums the runs must match (not checked where it is None)."""
    runs, histories, per_images, benches, speeds = [], [], [], [], []
    excluded, synthetic, unchecked, shared = [], [], [], []
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
                runs += run_records(dataset, model, seed, metrics)
                labels = {"dataset": dataset, "model": model, "seed": seed}
                histories.append(history.assign(**labels))
                per_images.append(per_image.assign(**labels))
                if (run.get("data") or {}).get("synthetic"):
                    synthetic.append(f"{dataset}/{model}/seed{seed}")
                withheld = energy_withheld(metrics.get("gpu") or {})
                if withheld:
                    shared.append(f"{dataset}/{model}/seed{seed}: {withheld}")
            try:
                bench = read_bench(results, dataset, model)
                benches.append({"dataset": dataset, "model": model, **bench_record(bench, study.protocol)})
                speeds += speed_records(dataset, model, bench)
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
        speeds=pd.DataFrame(speeds, columns=list(SPEED_COLUMNS) if not speeds else None),
        excluded=excluded,
        synthetic_runs=synthetic,
        unchecked_data=unchecked,
        shared_energy=shared,
    )
