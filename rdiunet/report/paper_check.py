"""Could the paper's Table 1 Dice and IoU come from one set of binary predictions?

For one image (or for the confusion counts pooled over a set), Dice D and IoU J of the same binary
masks satisfy J = D / (2 - D) exactly: with a = TP and b = FP + FN, D = 2a / (2a + b) and
J = a / (a + b). Averaged over images, the mean IoU is the mean of f(D_i) with f(D) = D / (2 - D),
which is increasing and convex on [0, 1] (f'' = 4 / (2 - D)^3 > 0). For a given mean Dice D:

- Jensen's inequality puts the mean IoU at least at f(D), reached when every image has Dice D;
- a convex function's mean over [0, 1] is largest at the ends: images with Dice 0 or 1 in the
  proportions 1 - D and D give a mean IoU of D, and no set gives more.

So per-image averaging allows a mean IoU in [f(D), D], and pooling allows exactly f(D). The paper
rounds to three decimals, so each reported value stands for an interval of +- 0.0005; a cell is
consistent when some Dice and IoU in those intervals satisfy either relation. The derivation is
written out in docs/report.md.
"""

import pandas as pd

from rdiunet import paper

ROUNDING = 0.0005  # half a unit in the third decimal


def iou_of(dice: float) -> float:
    """The IoU of masks whose Dice is `dice` (one image, or counts pooled over a set)."""
    return dice / (2 - dice)


def feasible_per_image(dice: float, iou: float, tolerance: float = ROUNDING) -> bool:
    """A mean IoU in [f(D), D] for some Dice and IoU within `tolerance` of the reported ones."""
    return iou + tolerance >= iou_of(dice - tolerance) and iou - tolerance <= dice + tolerance


def feasible_pooled(dice: float, iou: float, tolerance: float = ROUNDING) -> bool:
    """IoU = f(Dice) for some Dice and IoU within `tolerance` of the reported ones (f increases)."""
    return iou_of(dice - tolerance) <= iou + tolerance and iou_of(dice + tolerance) >= iou - tolerance


def check(dice: float, iou: float) -> dict:
    return {
        "dice": dice,
        "iou": iou,
        "iou_min_per_image": iou_of(dice),
        "iou_max_per_image": dice,
        "iou_pooled": iou_of(dice),
        "consistent": feasible_per_image(dice, iou) or feasible_pooled(dice, iou),
    }


def paper_check() -> pd.DataFrame:
    """One row per Table 1 cell of the paper (dataset, model, dice, iou, the feasible IoUs, consistent)."""
    rows = [
        {"dataset": dataset, "model": model, **check(cell["dice"], cell["iou"])}
        for (dataset, model), cell in paper.TABLE1.items()
    ]
    return pd.DataFrame(rows)


def consistent(source: str, model: str) -> bool | None:
    """Whether the paper's cell for a dataset source and base model is consistent; None if it has none."""
    cell = paper.table1(source, model)
    return check(cell["dice"], cell["iou"])["consistent"] if "dice" in cell and "iou" in cell else None
