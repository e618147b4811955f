"""A run's files checked against each other before anything of it is averaged.

metrics.json holds every test metric of every kept checkpoint and each is finite; history.csv has
one row per epoch that metrics.json counts and every Dice curve in it is finite; per_image.csv
has one row per test image and checkpoint, agreeing with the mean Dice of each; run.json says the
run is complete and was trained on the prepared data that is there now. A run that fails is left
out of the report with the reason raised here.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from rdiunet.errors import UserError
from rdiunet.fileio import read_json
from rdiunet.metrics import TEST_METRICS
from rdiunet.readings import CHECKPOINTS, CURVES
from rdiunet.runfolder import RunFolder

# Test metrics that may be null: the median HD95 is undefined when every image's HD95 is.
NULLABLE = {"hd95_median"}
RUN_KEYS = (*TEST_METRICS, "best_epoch", "epochs", "images")
HISTORY_COLUMNS = ("epoch", *CURVES)
PER_IMAGE_COLUMNS = ("checkpoint", "id", "dice")


class Invalid(Exception):
    """A run's files fail a check; the message is the reason shown in the report."""


def finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_numbers(values: dict, keys, where: str) -> None:
    for key in keys:
        if key not in values:
            raise Invalid(f"{where} lacks '{key}'")
        if not (finite(values[key]) or (values[key] is None and key in NULLABLE)):
            raise Invalid(f"{where}: {key} is {values[key]!r}, not a finite number")


def check_metrics(metrics) -> None:
    if not isinstance(metrics, dict):
        raise Invalid("metrics.json is not a JSON object")
    check_numbers(metrics, RUN_KEYS, "metrics.json")
    epochs = metrics["epochs"]
    if not isinstance(epochs, int) or epochs < 1:
        raise Invalid(f"metrics.json: epochs is {epochs!r}")
    checkpoints = metrics.get("checkpoints")
    if not isinstance(checkpoints, dict):
        raise Invalid("metrics.json lacks 'checkpoints' (written by an older rdiunet; retrain the run)")
    for name in CHECKPOINTS:
        where = f"metrics.json checkpoints.{name}"
        if not isinstance(checkpoints.get(name), dict):
            raise Invalid(f"metrics.json lacks checkpoints.{name}")
        check_numbers(checkpoints[name], (*TEST_METRICS, "epoch"), where)
        if not 1 <= checkpoints[name]["epoch"] <= epochs:
            raise Invalid(f"{where}: epoch {checkpoints[name]['epoch']} is outside 1..{epochs}")


def check_frame(frame: pd.DataFrame, name: str, columns: tuple[str, ...], numeric: tuple[str, ...]) -> None:
    for column in columns:
        if column not in frame.columns:
            raise Invalid(f"{name} lacks the column '{column}'")
    for column in numeric:
        if not np.isfinite(pd.to_numeric(frame[column], errors="coerce")).all():
            raise Invalid(f"{name}: {column} holds values that are not finite numbers")


def check_history(history: pd.DataFrame, epochs: int) -> None:
    check_frame(history, "history.csv", HISTORY_COLUMNS, tuple(CURVES))
    if history.epoch.tolist() != list(range(1, len(history) + 1)):
        raise Invalid("history.csv: the epochs are not numbered 1, 2, 3, ...")
    if len(history) != epochs:
        raise Invalid(f"history.csv has {len(history)} epochs, metrics.json says {epochs}")


def check_per_image(per_image: pd.DataFrame, metrics: dict) -> None:
    check_frame(per_image, "per_image.csv", PER_IMAGE_COLUMNS, ("dice",))
    for name, scores in metrics["checkpoints"].items():
        rows = per_image[per_image.checkpoint == name]
        if len(rows) != metrics["images"]:
            raise Invalid(
                f"per_image.csv has {len(rows)} {name} images, metrics.json says {metrics['images']}"
            )
        if abs(rows.dice.astype(float).mean() - scores["dice"]) > 1e-5:
            raise Invalid(f"per_image.csv's mean {name} Dice differs from metrics.json's")


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
    check_history(history, metrics["epochs"])
    check_per_image(per_image, metrics)
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
