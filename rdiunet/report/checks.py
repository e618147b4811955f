"""A run's files checked against each other, and the run against the study, before anything of
it is averaged.

metrics.json holds every test metric of every kept checkpoint, each finite and in its range
(Dice and IoU in [0, 1], losses and distances not negative); history.csv has one row per epoch
that metrics.json counts, numbered 1, 2, 3, ..., every Dice curve in [0, 1] and every loss finite
and not negative; per_image.csv has one row per test image and checkpoint, agreeing with the mean
Dice of each; run.json says the run is complete and was trained on the prepared data that is
there now. And the run was trained the way the report's configuration says (`expected_run`): the
same model and options, data, epochs, batch size, learning rate, precision, split, fold and
checkpoint format, whatever a workflow manager decided to rerun or not. A run that fails is left
out of the report with the reason raised here, naming what differs.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rdiunet.errors import UserError
from rdiunet.fileio import read_json
from rdiunet.metrics import TEST_METRICS
from rdiunet.readings import CHECKPOINTS, CURVES
from rdiunet.runfolder import RunFolder
from rdiunet.settings import plain

# Test metrics that may be null: the median HD95 is undefined when every image's HD95 is.
NULLABLE = {"hd95_median"}
RUN_KEYS = (*TEST_METRICS, "best_epoch", "epochs", "images")
HISTORY_COLUMNS = ("epoch", *CURVES)
PER_IMAGE_COLUMNS = ("checkpoint", "id", "dice")
# The ranges a metric can have: fractions, and quantities that cannot be negative.
FRACTIONS = ("dice", "iou", "dice_dataset", "iou_dataset")
NOT_NEGATIVE = ("hd95_median", "test_loss")
HISTORY_LOSSES = ("train_loss", "val_loss")


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
    for key in FRACTIONS:
        if key in keys and not 0 <= values[key] <= 1:
            raise Invalid(f"{where}: {key} is {values[key]!r}, outside [0, 1]")
    for key in NOT_NEGATIVE:
        if key in keys and values[key] is not None and values[key] < 0:
            raise Invalid(f"{where}: {key} is {values[key]!r}, below 0")


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
    for curve in CURVES:
        values = pd.to_numeric(history[curve], errors="coerce")
        if not values.between(0, 1).all():
            raise Invalid(f"history.csv: {curve} holds values outside [0, 1] (e.g. {values.max():.4g})")
    for loss in HISTORY_LOSSES:
        if loss in history.columns:
            values = pd.to_numeric(history[loss], errors="coerce")
            if not (np.isfinite(values) & (values >= 0)).all():
                raise Invalid(f"history.csv: {loss} holds values that are not finite and not negative")
    if len(history) != epochs:
        raise Invalid(f"history.csv has {len(history)} epochs, metrics.json says {epochs}")


def check_per_image(per_image: pd.DataFrame, metrics: dict) -> None:
    check_frame(per_image, "per_image.csv", PER_IMAGE_COLUMNS, ("dice",))
    if not pd.to_numeric(per_image.dice).between(0, 1).all():
        raise Invalid("per_image.csv: dice holds values outside [0, 1]")
    for name, scores in metrics["checkpoints"].items():
        rows = per_image[per_image.checkpoint == name]
        if len(rows) != metrics["images"]:
            raise Invalid(
                f"per_image.csv has {len(rows)} {name} images, metrics.json says {metrics['images']}"
            )
        if abs(rows.dice.astype(float).mean() - scores["dice"]) > 1e-5:
            raise Invalid(f"per_image.csv's mean {name} Dice differs from metrics.json's")


def shown(value) -> str:
    return "none" if value is None else json.dumps(value) if isinstance(value, list | dict) else str(value)


def matches(key: str, recorded, expected) -> bool:
    """Equal as JSON stores them; the split only in the parts the study fixes (run.json's also
    names the official sets a source ships)."""
    if key == "split" and isinstance(expected, dict) and isinstance(recorded, dict):
        return all(plain(recorded.get(key)) == plain(value) for key, value in expected.items())
    return plain(recorded) == plain(expected)


def check_study(run: dict, metrics: dict, expected: dict) -> None:
    """The run's settings against what the study's configuration asks for (`expected`: setting ->
    value, only the settings the configuration fixes); every difference is named."""
    recorded = {
        **(run.get("config") or {}),
        **(run.get("identity") or {}),
        "split": (run.get("data") or {}).get("split"),
        "image_size": (run.get("data") or {}).get("image_size"),
        "fold": (run.get("identity") or {}).get("fold"),
        "checkpoint_format": metrics.get("checkpoint_format"),
    }
    differ = [
        f"{key} {shown(recorded.get(key))} (the study: {shown(value)})"
        for key, value in expected.items()
        if not matches(key, recorded.get(key), value)
    ]
    if differ:
        raise Invalid(f"trained otherwise than this study asks: {'; '.join(differ)}")


def diverged_early(folder: RunFolder) -> None:
    """A run whose loss became NaN before its first epoch ended has nothing to test: say so."""
    if folder.metrics.exists() or not folder.run_info.exists():
        return
    try:
        run = folder.read_run()
    except UserError:
        return
    diverged = run.get("diverged") if isinstance(run, dict) and run.get("status") == "diverged" else None
    if isinstance(diverged, dict):
        raise Invalid(
            f"diverged: the training loss became {diverged.get('loss')} in epoch {diverged.get('epoch')}, "
            "before any epoch finished; no weights to test"
        )


def check_run(folder: RunFolder, data_sha256: str | None, expected: dict | None = None):
    """(metrics, history, per_image, run.json) of a run whose files agree, trained as `expected`
    says (rdiunet.report.collect.expected_run); else Invalid."""
    if not folder.path.exists():
        raise Invalid("missing: the run folder does not exist")
    diverged_early(folder)
    try:
        metrics, run = folder.read_metrics(), folder.read_run()
        history, per_image = folder.read_history(), folder.read_per_image()
    except UserError as error:
        raise Invalid(str(error)) from None
    check_metrics(metrics)
    check_history(history, metrics["epochs"])
    check_per_image(per_image, metrics)
    finished = "complete" if not metrics.get("diverged") else "diverged"  # a diverged run is a finding
    if not isinstance(run, dict) or run.get("status") != finished:
        status = run.get("status") if isinstance(run, dict) else None
        raise Invalid(f"run.json says the run is {status or 'in an unknown state'}, not complete")
    if data_sha256 is not None and run.get("data_sha256") != data_sha256:
        raise Invalid(
            f"trained on other data (sha256 {str(run.get('data_sha256'))[:12]}) than the prepared "
            f"data there now ({data_sha256[:12]})"
        )
    if expected:
        check_study(run, metrics, expected)
    return metrics, history, per_image, run


def prepared_sha256(data: Path | None, dataset: str) -> str | None:
    """The sha256 the prepared data's summary records, or None where there is no summary to read."""
    if data is None or not (data / f"{dataset}.json").exists():
        return None
    summary = read_json(data / f"{dataset}.json", "rerun rdiunet prepare")
    return summary.get("npz_sha256") if isinstance(summary, dict) else None
