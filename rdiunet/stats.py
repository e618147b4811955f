"""Statistics for comparing two models: across-seed paired tests and per-image bootstrap intervals."""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95
# Fewer resampling units than this (images, or subjects) give no interval: with two subjects a
# percentile bootstrap has three possible means, and its "interval" would be a confident accident.
MIN_UNITS = 5


@dataclass(frozen=True)
class Comparison:
    """Proposed minus baseline, across seeds and across images."""

    seeds: int
    mean_difference: float  # mean over seeds of (proposed - baseline)
    wilcoxon_p: float | None  # one-sided, H1: proposed > baseline; None with < 2 non-zero pairs
    images: int
    image_difference: float  # mean over images of (proposed - baseline), each averaged over seeds
    ci_low: float
    ci_high: float
    resampled: str = ""  # what the bootstrap resampled: "images (N)" or "subjects (N)"


def wilcoxon_greater(proposed, baseline) -> float | None:
    """One-sided paired Wilcoxon signed-rank p-value for proposed > baseline; ties are dropped."""
    differences = np.asarray(proposed, dtype=float) - np.asarray(baseline, dtype=float)
    differences = differences[differences != 0]
    if len(differences) < 2:
        return None
    return float(stats.wilcoxon(differences, alternative="greater").pvalue)


def bootstrap_ci(differences, seed: int = 0, groups=None) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean of paired differences.

    With `groups` (one label per difference) that hold several differences each, whole groups
    are resampled (a cluster bootstrap): frames of one subject are near-duplicates, and
    resampling them one by one would count one subject many times over and narrow the interval.
    The statistic stays the mean over images: the resampled groups' sums over their sizes.
    Fewer than MIN_UNITS units (images, or subjects) give no interval: NaN, never a point.
    """
    differences = np.asarray(differences, dtype=float)
    clustered = is_clustered(groups)
    units = len(set(groups)) if clustered else len(differences)
    if units < MIN_UNITS:
        return math.nan, math.nan
    if np.ptp(differences) == 0:
        value = float(differences.mean())
        return value, value
    options = dict(
        confidence_level=CONFIDENCE,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    if clustered:
        frame = pd.DataFrame({"group": groups, "difference": differences}).groupby("group")["difference"]
        sums, sizes = frame.sum().to_numpy(), frame.size().to_numpy().astype(float)

        def mean_of_groups(sums, sizes, axis=-1):
            return sums.sum(axis=axis) / sizes.sum(axis=axis)

        result = stats.bootstrap((sums, sizes), mean_of_groups, paired=True, vectorized=True, **options)
    else:
        result = stats.bootstrap((differences,), np.mean, **options)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def is_clustered(groups) -> bool:
    """Whether some group holds more than one observation (else groups change nothing)."""
    return groups is not None and len(set(groups)) < len(groups)


def compare(
    proposed_by_seed, baseline_by_seed, proposed_by_image, baseline_by_image, groups=None
) -> Comparison:
    """Seed-paired values (same seed order) and image-paired values (same image order); `groups`
    names each image's subject, for the cluster bootstrap."""
    proposed_by_seed, baseline_by_seed = (
        np.asarray(proposed_by_seed, float),
        np.asarray(baseline_by_seed, float),
    )
    image_differences = np.asarray(proposed_by_image, float) - np.asarray(baseline_by_image, float)
    low, high = bootstrap_ci(image_differences, groups=groups)
    clustered = is_clustered(groups)
    resampled = f"subjects ({len(set(groups))})" if clustered else f"images ({len(image_differences)})"
    return Comparison(
        seeds=len(proposed_by_seed),
        mean_difference=float((proposed_by_seed - baseline_by_seed).mean()),
        wilcoxon_p=wilcoxon_greater(proposed_by_seed, baseline_by_seed),
        images=len(image_differences),
        image_difference=float(image_differences.mean()),
        ci_low=low,
        ci_high=high,
        resampled=resampled,
    )
