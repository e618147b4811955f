"""Scoring a model on a split, and a run's test evaluation (metrics.json and per_image.csv).

metrics.json holds every metric of rdiunet.metrics.TEST_METRICS, computed from the test split's
per-image scores.
"""

import csv

import numpy as np
import torch
import torch.nn.functional as F

from rdiunet.data.dataset import Prepared, Split, batches, open_prepared
from rdiunet.errors import UserError
from rdiunet.fileio import atomic_path, write_json
from rdiunet.metrics import TEST_METRICS, Scores, confusion, dice_from_counts, hd95, iou_from_counts
from rdiunet.models import build
from rdiunet.runfolder import RunFolder
from rdiunet.runtime import Runtime, training_runtime
from rdiunet.settings import TrainSettings


@torch.no_grad()
def run_split(model, split: Split, batch_size: int, runtime: Runtime, keep_predictions: bool = False):
    """Mean BCE, per-image confusion counts and (optionally) the binary predictions on the CPU."""
    model.eval()
    loss_sum = torch.zeros((), device=runtime.device, dtype=torch.float64)
    counts, predictions = [], []
    for images, masks in batches(split, batch_size):
        with runtime.autocast():
            logits = model(runtime.prepare_input(images))
        logits = logits.float()
        loss_sum += F.binary_cross_entropy_with_logits(logits, masks, reduction="sum").double()
        pred = logits > 0
        counts.append(confusion(pred, masks))
        if keep_predictions:
            predictions.append(pred[:, 0].to("cpu", torch.uint8))
    pixels = split.masks.numel()
    counts = torch.cat(counts).cpu()
    predictions = torch.cat(predictions).numpy() if keep_predictions else None
    return float(loss_sum) / pixels, counts, predictions


def score(model, split: Split, batch_size: int, runtime: Runtime) -> Scores:
    loss, counts, predictions = run_split(model, split, batch_size, runtime, keep_predictions=True)
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


def write_per_image(folder: RunFolder, scores: Scores, groups: tuple[str, ...]) -> None:
    with atomic_path(folder.per_image) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "group", "dice", "iou", "hd95", "gt_empty", "pred_empty"])
        rows = zip(
            scores.ids,
            groups or scores.ids,
            scores.dice,
            scores.iou,
            scores.hd95,
            scores.gt_empty,
            scores.pred_empty,
            strict=True,
        )
        for image, group, dice, iou, distance, gt_empty, pred_empty in rows:
            writer.writerow(
                [image, group, f"{dice:.6f}", f"{iou:.6f}", f"{distance:.4f}", int(gt_empty), int(pred_empty)]
            )


def evaluate_run(
    folder: RunFolder,
    data: Prepared,
    model,
    runtime: Runtime,
    settings: TrainSettings,
    identity: dict,
    gpu: dict | None = None,
) -> dict:
    """Load best.pt (verified) into `model`, score the test split, write metrics.json and
    per_image.csv; metrics.json records the identity and the weights it scored."""
    best = folder.load_best(identity)
    model.load_state_dict(best["model"])
    test = data.splits["test"]
    scores = score(model, test.to(runtime.device), settings.batch_size, runtime)
    write_per_image(folder, scores, test.groups)
    metrics = {
        "split": "test",
        "images": len(test),
        **{name: compute(scores) for name, compute in TEST_METRICS.items()},
        "best_epoch": best["epoch"],
        "best_val_dice": best["val_dice"],
        "epochs": settings.epochs,
        "identity": identity,
        "weights_sha256": best["weights_sha256"],
        "gpu": gpu if gpu is not None else previous_gpu_summary(folder),
    }
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
    """Recompute metrics.json and per_image.csv of a run folder from its saved best weights, after
    checking that the data and the weights are the ones the run was trained on."""
    if not folder.run_info.exists() or not folder.best.exists():
        raise UserError(
            f"{folder.path} is not a trained run (run.json and best.pt are needed); run rdiunet train"
        )
    with folder.locked():
        run = folder.read_run()
        try:
            settings = TrainSettings(**{**run["config"], "device": device})
            trained_on = run["data_sha256"]
        except (KeyError, TypeError) as error:
            raise UserError(f"{folder.run_info} lacks {error}; retrain the run") from None
        data = open_prepared(settings.data)
        if data.sha256 != trained_on:
            raise UserError(
                f"{settings.data} changed since {folder.path} was trained (sha256 {data.sha256[:12]}, "
                f"trained on {trained_on[:12]}): its test split may hold training images; prepare the "
                "data as it was, or retrain"
            )
        identity = settings.identity(data.sha256)
        runtime = training_runtime(settings)
        model = runtime.prepare_model(build(settings.model, **settings.model_options))
        return evaluate_run(folder, data, model, runtime, settings, identity)
