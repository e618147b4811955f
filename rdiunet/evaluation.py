"""Scoring a model on a split, and a run's test evaluation (metrics.json and per_image.csv).

metrics.json holds every metric of rdiunet.metrics.TEST_METRICS, computed from the test split's
per-image scores.
"""

import csv
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rdiunet.checkpoints import FORMAT
from rdiunet.data.dataset import Prepared, Split, batches, open_prepared
from rdiunet.errors import UserError
from rdiunet.fileio import atomic_path, write_json
from rdiunet.metrics import (
    TEST_METRICS,
    Scores,
    confusion,
    dice_from_counts,
    hd95,
    iou_from_counts,
    soft_dice,
)
from rdiunet.models import build
from rdiunet.readings import CHECKPOINTS
from rdiunet.runfolder import RunFolder
from rdiunet.runtime import Runtime, training_runtime
from rdiunet.settings import TrainSettings


@dataclass(frozen=True)
class SplitResult:
    loss: float  # mean BCE per pixel
    soft_dice: float  # mean over batches of each batch's soft Dice (Keras's validation log)
    counts: torch.Tensor  # (N, 4) per-image confusion counts, on the CPU
    predictions: np.ndarray | None  # binary predictions (N, H, W), when asked for


@torch.no_grad()
def run_split(model, split: Split, batch_size: int, runtime: Runtime, keep_predictions: bool = False):
    """The model's loss, soft Dice, per-image confusion counts (and predictions) on a split."""
    model.eval()
    loss_sum = torch.zeros((), device=runtime.device, dtype=torch.float64)
    soft_sum = torch.zeros((), device=runtime.device, dtype=torch.float64)
    counts, predictions = [], []
    for images, masks in batches(split, batch_size):
        with runtime.autocast():
            logits = model(runtime.prepare_input(images))
        logits = logits.float()
        loss_sum += F.binary_cross_entropy_with_logits(logits, masks, reduction="sum").double()
        soft_sum += soft_dice(logits, masks).double()
        pred = logits > 0
        counts.append(confusion(pred, masks))
        if keep_predictions:
            predictions.append(pred[:, 0].to("cpu", torch.uint8))
    pixels, batch_count = split.masks.numel(), len(counts)
    return SplitResult(
        loss=float(loss_sum) / pixels,
        soft_dice=float(soft_sum) / batch_count,
        counts=torch.cat(counts).cpu(),
        predictions=torch.cat(predictions).numpy() if keep_predictions else None,
    )


def score(model, split: Split, batch_size: int, runtime: Runtime) -> Scores:
    result = run_split(model, split, batch_size, runtime, keep_predictions=True)
    loss, counts, predictions = result.loss, result.counts, result.predictions
    truth = split.masks[:, 0].cpu().numpy().astype(bool)
    return Scores(
        ids=split.ids,
        loss=loss,
        counts=counts,
        dice=dice_from_counts(counts).numpy(),
        iou=iou_from_counts(counts).numpy(),
        hd95=np.array([hd95(p, t) for p, t in zip(predictions, truth, strict=True)]),
        gt_empty=~truth.reshape(len(truth), -1).any(1),
        pred_empty=~predictions.reshape(len(predictions), -1).any(1),
    )


PER_IMAGE_COLUMNS = (
    "checkpoint", "id", "group", "dice", "iou", "hd95", "gt_empty", "pred_empty", "pred_fraction",
)  # fmt: skip


def write_per_image(folder: RunFolder, scored: dict[str, Scores], groups: tuple[str, ...]) -> None:
    """One row per test image and checkpoint; pred_fraction is the share of the image predicted
    as foreground (a collapsed model predicts nothing or everything: rdiunet.report.findings)."""
    with atomic_path(folder.per_image) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PER_IMAGE_COLUMNS)
        for checkpoint, scores in scored.items():
            counts = scores.counts.double()
            fractions = ((counts[:, 0] + counts[:, 1]) / counts.sum(1)).numpy()
            rows = zip(
                scores.ids,
                groups or scores.ids,
                scores.dice,
                scores.iou,
                scores.hd95,
                scores.gt_empty,
                scores.pred_empty,
                fractions,
                strict=True,
            )
            for image, group, dice, iou, distance, gt_empty, pred_empty, fraction in rows:
                writer.writerow(
                    [checkpoint, image, group, f"{dice:.6f}", f"{iou:.6f}", f"{distance:.4f}"]
                    + [int(gt_empty), int(pred_empty), f"{fraction:.6f}"]
                )


def with_headline(metrics: dict, checkpoint: str) -> dict:
    """metrics.json with `checkpoint`'s test metrics at the top level (all three stay below)."""
    chosen = metrics["checkpoints"][checkpoint]
    return {
        **metrics,
        "checkpoint": checkpoint,
        **{name: chosen[name] for name in TEST_METRICS},
        "best_epoch": chosen["epoch"],
        "weights_sha256": chosen["weights_sha256"],
    }


def evaluate_run(
    folder: RunFolder,
    data: Prepared,
    model,
    runtime: Runtime,
    settings: TrainSettings,
    identity: dict,
    gpu: dict | None = None,
    diverged: dict | None = None,
) -> dict:
    """Score the test split with each kept checkpoint (best validation Dice, best validation loss,
    last epoch; each verified), write per_image.csv and metrics.json (the configured checkpoint's
    metrics at the top level, all three under "checkpoints", the identity they belong to). A run
    whose loss `diverged` in some epoch is tested with the weights of the epochs before it, and
    says so."""
    test = data.splits["test"].to(runtime.device)
    scored, checkpoints = {}, {}
    for name in CHECKPOINTS:
        state = folder.load_weights(name, identity)
        model.load_state_dict(state["model"])
        scored[name] = score(model, test, settings.batch_size, runtime)
        checkpoints[name] = {
            **{metric: compute(scored[name]) for metric, compute in TEST_METRICS.items()},
            "epoch": state["epoch"],
            "weights_sha256": state["weights_sha256"],
        }
    write_per_image(folder, scored, test.groups)
    metrics = {
        "split": "test",
        "images": len(test),
        **({"fold": data.fold} if data.fold is not None else {}),
        "epochs": settings.epochs if diverged is None else diverged["epoch"] - 1,
        **({"epochs_planned": settings.epochs, "diverged": diverged} if diverged else {}),
        "identity": identity,
        "checkpoint_format": FORMAT,
        "checkpoints": checkpoints,
        "gpu": gpu if gpu is not None else previous_gpu_summary(folder),
    }
    metrics = with_headline(metrics, settings.checkpoint)
    write_json(folder.metrics, metrics)
    return metrics


def previous_gpu_summary(folder: RunFolder) -> dict:
    """The training's GPU summary, kept when the test metrics are recomputed."""
    try:
        gpu = folder.read_metrics().get("gpu")
    except (UserError, AttributeError):
        gpu = None
    return gpu or {
        "available": False,
        "reason": "recomputed by rdiunet evaluate; training's record was not found",
    }


def evaluate(folder: RunFolder, device: str = "auto") -> dict:
    """Recompute metrics.json and per_image.csv of a run folder from its saved checkpoints, in the
    precision it was trained in, after checking that the data and the weights are the run's."""
    if not folder.run_info.exists() or not folder.best.exists():
        raise UserError(
            f"{folder.path} is not a trained run (run.json and best.pt are needed); run rdiunet train"
        )
    with folder.locked():
        run = folder.read_run()
        try:
            precision = run["identity"]["precision"]
            settings = TrainSettings(**{**run["config"], "device": device, "precision": precision})
            trained_on = run["data_sha256"]
        except (KeyError, TypeError) as error:
            raise UserError(f"{folder.run_info} lacks {error}; retrain the run") from None
        data = open_prepared(settings.data, settings.seed)
        if data.sha256 != trained_on:
            raise UserError(
                f"{settings.data} changed since {folder.path} was trained (sha256 {data.sha256[:12]}, "
                f"trained on {trained_on[:12]}): its test split may hold training images; prepare the "
                "data as it was, or retrain"
            )
        with training_runtime(settings) as runtime:
            identity = settings.identity(data.sha256, runtime.precision, data.fold)
            model = runtime.prepare_model(build(settings.model, **settings.model_options))
            diverged = run.get("diverged") if run.get("status") == "diverged" else None
            return evaluate_run(folder, data, model, runtime, settings, identity, diverged=diverged)
