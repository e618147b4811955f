"""Reading a results tree (rdiunet.runfolder) into tidy tables, checking every run on the way.

Each run's files are checked against each other before anything is averaged (checks.py). A run
that fails a check is left out and named with its reason (`Collection.excluded`); a missing run or
bench.json is a gap the report states, never a crash and never a silent average.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rdiunet import checkpoints, paper
from rdiunet.errors import UserError
from rdiunet.metrics import TEST_METRICS, convergence, stability
from rdiunet.readings import CURVES, ConfigError, Plan, resolve
from rdiunet.runfolder import RunFolder, bench_path, read_bench, read_speed, speed_path
from rdiunet.verdicts import MARGINS

from .checks import Invalid, check_run, prepared_sha256
from .findings import run_finding

RUN_COLUMNS = ("dataset", "model", "seed", "checkpoint", *TEST_METRICS, "best_epoch", "epochs", "energy_j")
BENCH_COLUMNS = ("dataset", "model", "params", "gflops", "size", "throughput", "throughput_batch", "device")
TIMING_COLUMNS = ("dataset", "model", "session", "precision", "protocol", "ms", "reason")
SPEED_COLUMNS = ("dataset", "model", "precision", "protocol", "ms", "sessions", "reason")


@dataclass(frozen=True)
class Study:
    """What the workflow ran: the readings' plan (labels, bases, the runs they compare), seeds,
    and the equivalence margins its verdicts use (rdiunet.verdicts.MARGINS by default)."""

    plan: Plan
    seeds: list[int]
    stability_drop: float = paper.STABILITY_DROP
    synthetic: bool = False
    margins: dict = field(default_factory=lambda: dict(MARGINS))
    config: dict = field(default_factory=dict)  # the configuration the runs must have been trained by
    failed_runs: str = "keep"  # collapsed and diverged runs: keep them flagged, or leave them out
    title: str | None = None  # the report's title (config `title:`), else one made from the study

    @classmethod
    def from_config(cls, config: dict) -> "Study":
        try:
            return cls(
                plan=resolve(config),
                seeds=[int(s) for s in config["seeds"]],
                stability_drop=config.get("stability_drop", paper.STABILITY_DROP),
                synthetic=bool(config.get("synthetic", False)),
                margins={**MARGINS, **(config.get("margins") or {})},
                config=config,
                failed_runs=config.get("failed_runs", "keep"),
                title=config.get("title"),
            )
        except ConfigError as error:
            raise UserError(f"the configuration does not fit together: {error}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise UserError(
                f"the configuration lacks or mistypes {error}; pass the workflow's config"
            ) from None

    def is_papers_pair(self, proposed: str, baseline: str) -> bool:
        return (self.plan.base(proposed), self.plan.base(baseline)) == (paper.PROPOSED, paper.BASELINE)

    def is_papers_claim(self, proposed: str, baseline: str, dataset: str | None = None) -> bool:
        """Whether the paper's own claim (its numbers, thresholds and hardware) applies: the paper's
        models compared on one of the paper's datasets (`dataset` None, for a claim about the
        models alone: on any dataset of the study)."""
        datasets = self.plan.headline.datasets if dataset is None else (dataset,)
        return self.is_papers_pair(proposed, baseline) and any(
            self.plan.source(d) in paper.DATASETS for d in datasets
        )

    @property
    def is_papers_study(self) -> bool:
        """The headline compares the paper's models on at least one of the paper's datasets."""
        return self.is_papers_claim(self.plan.headline.proposed, self.plan.headline.baseline)

    @property
    def report_title(self) -> str:
        if self.title:
            return self.title
        if self.is_papers_study:
            return "RDIU-Net: Lightweight Medical Image Segmentation Network — reproduction report"
        headline = self.plan.headline
        return f"{headline.proposed} against {headline.baseline} on {', '.join(headline.datasets)}"

    @property
    def datasets(self) -> list[str]:
        """The dataset labels that were trained on, in the configuration's order."""
        return self.plan.datasets_trained()

    def models_of(self, dataset: str) -> list[str]:
        return self.plan.models_of(dataset)

    def seeds_of(self, dataset: str) -> list[int]:
        """The seeds trained on `dataset`: its own `seeds`, else the study's."""
        return [int(s) for s in self.plan.datasets[dataset].get("seeds", self.seeds)]

    def folds_of(self, dataset: str) -> int | None:
        """k for a dataset cross-validated in k folds, else None."""
        return self.plan.datasets[dataset].get("folds")

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
            for seed in self.seeds_of(dataset):
                yield dataset, model, seed


@dataclass(frozen=True)
class Excluded:
    """A run (or, with seed None, a benchmark; with model None too, a dataset's timing sessions)
    left out of the report, and why."""

    dataset: str
    model: str | None
    seed: int | None
    reason: str

    @property
    def label(self) -> str:
        if self.model is None:
            return f"{self.dataset}/speed.json"
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
    speeds: pd.DataFrame = field(default_factory=pd.DataFrame)  # mean ms per image by precision, protocol
    timings: pd.DataFrame = field(default_factory=pd.DataFrame)  # ms per image by session (speed.json)
    speed_devices: dict = field(default_factory=dict)  # dataset -> (device type, device name)
    excluded: list[Excluded] = field(default_factory=list)
    synthetic_runs: list[str] = field(default_factory=list)  # runs whose data was synthetic
    unchecked_data: list[str] = field(default_factory=list)  # datasets without a summary to check
    shared_energy: list[str] = field(default_factory=list)  # runs whose energy is not shown, and why
    findings: dict = field(default_factory=dict)  # (dataset, model, seed) -> how a kept run failed

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


def expected_run(study: Study, dataset: str, model: str, seed: int) -> dict:
    """What a run of `study` was trained with, setting by setting, where its configuration says
    (rdiunet.report.checks.check_study compares each with the run's own record)."""
    if not study.config:
        return {}
    settings, training = study.plan.datasets[dataset], study.config.get("training") or {}
    expected = {
        "model": study.plan.base(model),
        "model_options": study.plan.model_options(model),
        "seed": seed,
    }
    expected |= {key: settings[key] for key in ("epochs", "batch_size") if key in settings}
    if settings.get("lr", training.get("lr")) is not None:
        expected["lr"] = settings.get("lr", training.get("lr"))
    if training.get("precision") not in (None, "auto"):  # auto resolves by the device
        expected["precision"] = training["precision"]
    if "size" in settings:
        expected["image_size"] = [settings["size"], settings["size"]]
    folds = settings.get("folds")
    split = {"by": settings.get("split_by"), "seed": settings.get("split_seed")}
    split |= {} if folds else {"fractions": settings.get("split")}
    expected["split"] = {key: value for key, value in split.items() if value is not None}
    expected["fold"] = {"k": folds, "test": seed % folds, "val": (seed + 1) % folds} if folds else None
    expected["checkpoint_format"] = checkpoints.FORMAT
    return expected


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


def timing_records(dataset: str, speed: dict, models: list[str]) -> list[dict]:
    """speed.json's rows for the models the study compares on `dataset`."""
    rows = []
    for row in speed["timings"]:
        if row["model"] in models:
            ms = row["ms"] if row.get("ms") is not None else math.nan
            rows.append(
                {
                    "dataset": dataset,
                    **{k: row[k] for k in ("model", "session", "precision", "protocol")},
                    "ms": ms,
                    "reason": row.get("reason"),
                }
            )
    return rows


def mean_speeds(timings: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, model, precision and protocol: the mean ms per image over the sessions (or
    why it was not measured)."""
    if timings.empty:
        return pd.DataFrame(columns=list(SPEED_COLUMNS))
    keys = ["dataset", "model", "precision", "protocol"]
    grouped = timings.groupby(keys, sort=False)
    frame = grouped.agg(ms=("ms", "mean"), sessions=("ms", "count"), reason=("reason", "first")).reset_index()
    return frame[list(SPEED_COLUMNS)]


def bench_record(bench: dict) -> dict:
    """Table 1's costs: parameters, FLOPs, throughput at the largest batch and the device."""
    largest = max(
        (row for row in bench["throughput"] if "images_per_s" in row),
        key=lambda row: row["batch_size"],
        default={},
    )
    return {
        "params": bench["params"],
        "gflops": bench["gflops_per_image"],
        "size": bench["size"],
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
    runs, histories, per_images, benches, timings, devices, findings = [], [], [], [], [], {}, {}
    excluded, synthetic, unchecked, shared = [], [], [], []
    for dataset in study.datasets:
        data_sha256 = prepared_sha256(data, dataset)
        if data_sha256 is None:
            unchecked.append(dataset)
        for model in study.models_of(dataset):
            for seed in study.seeds_of(dataset):
                folder = RunFolder.of(results, dataset, model, seed)
                try:
                    expected = expected_run(study, dataset, model, seed)
                    metrics, history, per_image, run = check_run(folder, data_sha256, expected)
                except Invalid as reason:
                    excluded.append(Excluded(dataset, model, seed, str(reason)))
                    continue
                finding = run_finding(metrics, per_image, study.checkpoint)
                if finding and study.failed_runs == "exclude":
                    excluded.append(Excluded(dataset, model, seed, f"{finding} (failed_runs: exclude)"))
                    continue
                if finding:
                    findings[(dataset, model, seed)] = finding
                runs += run_records(dataset, model, seed, metrics)
                labels = {"dataset": dataset, "model": model, "seed": seed}
                histories.append(history.assign(**labels))
                # Each score's fold, for a cross-validated dataset (the verdict clusters by fold).
                fold = (metrics.get("fold") or {}).get("test")
                per_images.append(per_image.assign(**labels, fold=fold))
                if (run.get("data") or {}).get("synthetic"):
                    synthetic.append(f"{dataset}/{model}/seed{seed}")
                withheld = energy_withheld(metrics.get("gpu") or {})
                if withheld:
                    shared.append(f"{dataset}/{model}/seed{seed}: {withheld}")
            try:
                bench = read_bench(results, dataset, model)
                benches.append({"dataset": dataset, "model": model, **bench_record(bench)})
            except (UserError, KeyError, TypeError, AttributeError) as error:
                reason = (
                    str(error)
                    if isinstance(error, UserError)
                    else f"{bench_path(results, dataset, model)} lacks {error}"
                )
                excluded.append(Excluded(dataset, model, None, reason))
        try:
            speed = read_speed(results, dataset)
            timings += timing_records(dataset, speed, study.models_of(dataset))
            devices[dataset] = (speed["device_type"], speed["environment"]["device_name"])
        except (UserError, KeyError, TypeError, AttributeError) as error:
            reason = (
                str(error)
                if isinstance(error, UserError)
                else f"{speed_path(results, dataset)} lacks {error}"
            )
            excluded.append(Excluded(dataset, None, None, reason))
    timing_frame = pd.DataFrame(timings, columns=list(TIMING_COLUMNS))
    return Collection(
        runs=pd.DataFrame(runs, columns=list(RUN_COLUMNS) if not runs else None),
        histories=pd.concat(histories, ignore_index=True)
        if histories
        else pd.DataFrame(columns=["dataset", "model", "seed", "epoch", *CURVES]),
        per_image=pd.concat(per_images, ignore_index=True)
        if per_images
        else pd.DataFrame(columns=["dataset", "model", "seed", "checkpoint", "id", "group", "dice", "fold"]),
        benches=pd.DataFrame(benches, columns=list(BENCH_COLUMNS) if not benches else None),
        speeds=mean_speeds(timing_frame),
        timings=timing_frame,
        speed_devices=devices,
        excluded=excluded,
        synthetic_runs=synthetic,
        unchecked_data=unchecked,
        shared_energy=shared,
        findings=findings,
    )
