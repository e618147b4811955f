"""Statistics for comparing two models: across-seed paired tests and per-image bootstrap intervals."""

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


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


def wilcoxon_greater(proposed, baseline) -> float | None:
    """One-sided paired Wilcoxon signed-rank p-value for proposed > baseline; ties are dropped."""
    differences = np.asarray(proposed, dtype=float) - np.asarray(baseline, dtype=float)
    differences = differences[differences != 0]
    if len(differences) < 2:
        return None
    return float(stats.wilcoxon(differences, alternative="greater").pvalue)


def bootstrap_ci(differences, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean of paired differences."""
    differences = np.asarray(differences, dtype=float)
    if len(differences) < 2 or np.ptp(differences) == 0:
        value = float(differences.mean()) if len(differences) else math.nan
        return value, value
    result = stats.bootstrap(
        (differences,),
        np.mean,
        confidence_level=CONFIDENCE,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare(proposed_by_seed, baseline_by_seed, proposed_by_image, baseline_by_image) -> Comparison:
    """Seed-paired values (same seed order) and image-paired values (same image order)."""
    proposed_by_seed, baseline_by_seed = (
        np.asarray(proposed_by_seed, float),
        np.asarray(baseline_by_seed, float),
    )
    image_differences = np.asarray(proposed_by_image, float) - np.asarray(baseline_by_image, float)
    low, high = bootstrap_ci(image_differences)
    return Comparison(
        seeds=len(proposed_by_seed),
        mean_difference=float((proposed_by_seed - baseline_by_seed).mean()),
        wilcoxon_p=wilcoxon_greater(proposed_by_seed, baseline_by_seed),
        images=len(image_differences),
        image_difference=float(image_differences.mean()),
        ci_low=low,
        ci_high=high,
    )
