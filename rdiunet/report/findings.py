"""Runs that failed as training, not as files: collapsed and diverged runs are findings.

A run whose model ends predicting (almost) nothing, or (almost) everything, on the test set, or
whose loss diverged, is a result of the method under that setting, not an input error. It is
kept (config `failed_runs: keep`, the default) and flagged in Table 1 and the claims, which also
say how each verdict reads without it; `failed_runs: exclude` leaves such runs out instead,
named with the finding.
"""

import pandas as pd

# "(Almost)": this share of the test images must show the failure for a run to count as collapsed.
COLLAPSED_SHARE = 0.9
WHOLE_IMAGE = 0.9  # a prediction covering this share of an image predicts "everything"
POLICIES = ("keep", "exclude")


def run_finding(metrics: dict, per_image: pd.DataFrame, checkpoint: str) -> str | None:
    """Why a valid run is a failed training (at the tested `checkpoint`), or None."""
    diverged = metrics.get("diverged")
    if isinstance(diverged, dict):
        return (
            f"diverged: the training loss became {diverged.get('loss')} in epoch {diverged.get('epoch')}; "
            f"tested with the weights of the epochs before"
        )
    rows = per_image[per_image.checkpoint == checkpoint]
    if "pred_empty" in rows and "gt_empty" in rows:
        objects = rows[rows.gt_empty.astype(int) == 0]
        empty = objects.pred_empty.astype(int).mean() if len(objects) else 0.0
        if empty >= COLLAPSED_SHARE:
            return f"collapsed: empty predictions on {empty:.0%} of the test images with an object"
    if "pred_fraction" in rows and len(rows):
        whole = (rows.pred_fraction.astype(float) >= WHOLE_IMAGE).mean()
        if whole >= COLLAPSED_SHARE:
            return f"collapsed: predicts (almost) the whole image on {whole:.0%} of the test images"
    return None


def flagged_in(findings: dict, dataset: str, models) -> list[tuple[str, int, str]]:
    """(model, seed, finding) of the flagged runs of `models` on `dataset`."""
    return [(m, s, f) for (d, m, s), f in findings.items() if d == dataset and m in models]


def without_flagged(table: pd.DataFrame, flagged) -> pd.DataFrame:
    """An engine table (columns model, seed, ...) without the flagged runs."""
    drop = {(m, s) for m, s, _ in flagged}
    keep = [(m, s) not in drop for m, s in zip(table.model, table.seed, strict=True)]
    return table[keep]
