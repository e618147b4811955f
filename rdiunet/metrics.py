"""Segmentation metrics and the paper's training-curve statistics.

Conventions (the report states them too):

- Dice = 2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN) from binary masks.
  `reduction="image"` averages the per-image scores; `reduction="dataset"` pools the confusion
  counts of all images first (large objects then weigh more).
- Empty ground truth: an empty prediction scores 1 (nothing to find, nothing found), any false
  positive scores 0. Tools disagree here (nnU-Net and MONAI return NaN, smp returns 1); such
  images are counted separately so their effect on the mean can be judged.
- HD95 in pixels: the 95th percentile of the pooled surface distances in both directions
  (medpy's definition; MONAI's takes the larger of the two directed percentiles). Where exactly one
  mask is empty there is no surface to measure from: the image scores the image diagonal, the
  largest distance possible, and is counted (`hd95_at_diagonal`), so that a model predicting
  nothing is not rewarded by being left out of the median. Both empty: 0 (nothing to find, nothing
  found).
- Test metrics: TEST_METRICS names every number a run reports on its test split. Evaluation
  writes each one to metrics.json, collection copies each one, and Table 1 averages each one over
  seeds: adding a metric is one entry there.
- Stability: the number of epochs whose validation Dice fell by more than `drop` (0.05) from the
  previous epoch, as the paper words it. Convergence: the first 1-based epoch whose validation
  Dice reaches the threshold.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

# Differences like 0.85 - 0.80 land a hair above 0.05 in binary floating point: a drop of exactly
# the threshold is not "more than" it, and a Dice a hair below the threshold still reaches it.
FLOAT_SLACK = 1e-9


def confusion(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image (TP, FP, FN, TN) counts of binary masks shaped (N, ...): an (N, 4) int64 tensor."""
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)
    tp = (pred & target).sum(1)
    fp = (pred & ~target).sum(1)
    fn = (~pred & target).sum(1)
    tn = pred.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=1)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, with 0/0 = 1: both masks empty is a perfect score."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.ones_like(numerator))


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou_from_counts(counts: torch.Tensor) -> torch.Tensor:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return _ratio(tp, tp + fp + fn)


def _reduce(score_fn, counts: torch.Tensor, reduction: str) -> float:
    if reduction == "image":
        return float(score_fn(counts).mean())
    if reduction == "dataset":
        return float(score_fn(counts.sum(0)))
    raise ValueError(f"reduction must be 'image' or 'dataset', got {reduction!r}")


Mask = torch.Tensor | np.ndarray


def dice(pred: Mask, target: Mask, reduction: str = "image") -> float:
    """Dice of binary masks shaped (N, ...), numpy arrays or torch tensors."""
    return _reduce(dice_from_counts, confusion(torch.as_tensor(pred), torch.as_tensor(target)), reduction)


def iou(pred: Mask, target: Mask, reduction: str = "image") -> float:
    """IoU of binary masks shaped (N, ...), numpy arrays or torch tensors."""
    return _reduce(iou_from_counts, confusion(torch.as_tensor(pred), torch.as_tensor(target)), reduction)


def as_numpy(mask: Mask) -> np.ndarray:
    return mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)


def soft_dice(logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Keras's `dice_coef` on one batch: (2 sum(p t) + s) / (sum(p) + sum(t) + s) of the sigmoid
    probabilities p and the masks t, pooled over the whole batch, smoothing s = 1."""
    probabilities = torch.sigmoid(logits.float())
    intersection = (probabilities * masks).sum()
    return (2 * intersection + smooth) / (probabilities.sum() + masks.sum() + smooth)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: Mask, target: Mask) -> float:
    """Symmetric 95th-percentile Hausdorff distance in pixels of two 2-D masks (numpy arrays or
    torch tensors); the image diagonal where exactly one is empty, 0 where both are."""
    pred, target = as_numpy(pred).astype(bool), as_numpy(target).astype(bool)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float(math.hypot(*pred.shape))
    pred_surface, target_surface = _surface(pred), _surface(target)
    to_target = ndimage.distance_transform_edt(~target_surface)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface)[target_surface]
    return float(np.percentile(np.concatenate([to_target, to_pred]), 95))


def stability(dice_per_epoch: Sequence[float], drop: float) -> int:
    """Number of epochs whose Dice fell by more than `drop` from the previous epoch."""
    values = np.asarray(dice_per_epoch, dtype=float)
    return int((values[:-1] - values[1:] > drop + FLOAT_SLACK).sum())


def convergence(dice_per_epoch: Sequence[float], threshold: float) -> int | None:
    """First 1-based epoch whose Dice reaches `threshold`; None if it never does."""
    above = np.flatnonzero(np.asarray(dice_per_epoch, dtype=float) >= threshold - FLOAT_SLACK)
    return int(above[0]) + 1 if len(above) else None


@dataclass(frozen=True)
class Scores:
    """Per-image scores of one split, and its mean loss."""

    ids: tuple[str, ...]
    loss: float
    counts: torch.Tensor  # (N, 4): TP, FP, FN, TN
    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray  # NaN where undefined
    gt_empty: np.ndarray
    pred_empty: np.ndarray


TEST_METRICS = {
    "dice": lambda s: float(s.dice.mean()),
    "iou": lambda s: float(s.iou.mean()),
    "dice_dataset": lambda s: float(dice_from_counts(s.counts.sum(0))),
    "iou_dataset": lambda s: float(iou_from_counts(s.counts.sum(0))),
    "hd95_median": lambda s: float(np.median(s.hd95)),
    "hd95_at_diagonal": lambda s: int((s.gt_empty != s.pred_empty).sum()),
    "gt_empty": lambda s: int(s.gt_empty.sum()),
    "false_positive_on_empty": lambda s: int((s.gt_empty & ~s.pred_empty).sum()),
    "test_loss": lambda s: s.loss,
}
