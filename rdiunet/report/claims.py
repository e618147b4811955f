"""Verdicts on the paper's claims, each from a rule stated beside it, under every reading.

A reading (rdiunet.readings) names the proposed model, the baseline and the datasets; the rules
below judge each claim for that pair on each dataset. Seed-based claims (accuracy, stability,
convergence) need at least MIN_SEEDS paired seeds: with fewer, a one-sided Wilcoxon test cannot
reach p < 0.05 (its smallest p with n pairs is 1/2^n), so the verdict is "inconclusive" rather
than a guess.
"""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rdiunet import paper
from rdiunet.readings import Reading
from rdiunet.stats import MIN_UNITS, compare, wilcoxon_greater

from .collect import Collection, Study, curve_table

MIN_SEEDS = 5
ALPHA = 0.05
SPEED_GAIN = 0.20
FEWER_PARAMETERS = 0.60
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
# A speed reading the benchmark's device cannot measure (a CUDA graph or TF32 on a CPU): no verdict.
NOT_MEASURED = "not measured"
PER_DATASET = ("accuracy", "speed", "stability", "convergence")

RULES = {
    "accuracy": (
        f"Per dataset, over >= {MIN_SEEDS} seeds: reproduced if a one-sided paired Wilcoxon signed-rank "
        f"test of per-seed test Dice (proposed > baseline) gives p < {ALPHA} and the paired bootstrap 95% "
        "CI of the per-image Dice difference (each image's Dice averaged over seeds; whole subjects "
        "resampled where a dataset has several images per subject) lies above 0; not reproduced if that "
        f"CI lies below 0 or the opposite one-sided test gives p < {ALPHA}; otherwise inconclusive."
    ),
    "speed": (
        "Per dataset: speed-up = 1 - (proposed ms per image / baseline ms per image) by the reading's "
        f"protocol and precision on the benchmark's device; reproduced if >= {SPEED_GAIN:.0%}, not "
        "reproduced otherwise; not measured where the device cannot run the reading."
    ),
    "parameters": (
        f"Reproduced if the proposed model has at least {FEWER_PARAMETERS:.0%} fewer parameters than the "
        "baseline (paper: 62%)."
    ),
    "stability": (
        f"Per dataset, over >= {MIN_SEEDS} seeds: reproduced if the proposed model has fewer "
        f"validation-Dice drops (>= the stability threshold) by a one-sided paired Wilcoxon test, p < "
        f"{ALPHA}; not reproduced if its total is equal or higher; otherwise inconclusive."
    ),
    "convergence": (
        "As stability, on the first epoch above the dataset's threshold (a run that never "
        "converges counts as its number of epochs + 1)."
    ),
}


@dataclass(frozen=True)
class Verdict:
    claim: str
    dataset: str  # a dataset label, or "all"
    verdict: str
    evidence: str
    reading: str = "headline"


def paired_seeds(runs: pd.DataFrame, dataset: str, proposed: str, baseline: str):
    """Baseline and proposed runs of `dataset` on the seeds both have (a seed left out for one
    model is left out for both), in seed order."""
    base, prop = (
        runs[(runs.dataset == dataset) & (runs.model == m)].sort_values("seed") for m in (baseline, proposed)
    )
    seeds = sorted(set(base.seed) & set(prop.seed))
    return base[base.seed.isin(seeds)], prop[prop.seed.isin(seeds)]


NO_PAIRS = "no seed has a valid run of both models (see the runs left out)"


def accuracy(dataset: str, runs: pd.DataFrame, per_image: pd.DataFrame, proposed: str, baseline: str):
    base, prop = paired_seeds(runs, dataset, proposed, baseline)
    if base.empty:
        return INCONCLUSIVE, NO_PAIRS
    paired = per_image[(per_image.dataset == dataset) & per_image.seed.isin(set(base.seed))]
    images = paired.groupby(["model", "id"])["dice"].mean().unstack("model")
    images = images.reindex(columns=[proposed, baseline]).dropna()
    # Each image's subject, for the cluster bootstrap (per_image.csv of older runs has none).
    group_of = paired.groupby("id")["group"].first().to_dict() if "group" in paired else {}
    groups = [group_of.get(image, image) for image in images.index]
    result = compare(prop.dice, base.dice, images[proposed], images[baseline], groups=groups)
    p = "n/a" if result.wilcoxon_p is None else f"{result.wilcoxon_p:.3g}"
    if not result.images:
        per_image_text = "no per-image scores shared by both models"
    elif math.isnan(result.ci_low):
        per_image_text = (
            f"per-image difference {result.image_difference:+.4f} over {result.images} images; no interval "
            f"from fewer than {MIN_UNITS} resampling units ({result.resampled})"
        )
    else:
        per_image_text = (
            f"per-image difference {result.image_difference:+.4f}, 95% CI [{result.ci_low:+.4f}, "
            f"{result.ci_high:+.4f}] over {result.images} images (resampling {result.resampled})"
        )
    evidence = (
        f"{proposed} - {baseline}: mean Dice difference {result.mean_difference:+.4f} over {result.seeds} "
        f"seeds (Wilcoxon one-sided p = {p}); {per_image_text}"
    )
    worse_p = wilcoxon_greater(base.dice, prop.dice)
    if result.seeds < MIN_SEEDS:
        return INCONCLUSIVE, evidence + f"; only {result.seeds} seeds (need {MIN_SEEDS})"
    if not result.images or math.isnan(result.ci_low):
        return INCONCLUSIVE, evidence
    if result.ci_high < 0 or (worse_p is not None and worse_p < ALPHA):
        return NOT_REPRODUCED, evidence
    if result.wilcoxon_p is not None and result.wilcoxon_p < ALPHA and result.ci_low > 0:
        return REPRODUCED, evidence
    return INCONCLUSIVE, evidence


def fewer_is_better(claim: str, dataset: str, runs: pd.DataFrame, proposed: str, baseline: str):
    """Stability and convergence: the proposed model should need fewer (drops, epochs) per seed."""
    pairs = paired_seeds(runs, dataset, proposed, baseline)
    if pairs[0].empty:
        return INCONCLUSIVE, NO_PAIRS

    def values(group: pd.DataFrame) -> np.ndarray:
        if claim == "convergence":
            censored = zip(group.convergence, group.epochs, strict=True)
            return np.array([e + 1 if pd.isna(c) else c for c, e in censored], float)
        return np.array(group.stability, float)

    base, prop = (values(group) for group in pairs)
    p = wilcoxon_greater(base, prop)
    p_text = "n/a" if p is None else f"{p:.3g}"
    evidence = (
        f"{baseline} {'/'.join(str(int(v)) for v in base)} vs {proposed} "
        f"{'/'.join(str(int(v)) for v in prop)} per seed (Wilcoxon one-sided p = {p_text})"
    )
    if len(base) < MIN_SEEDS:
        return INCONCLUSIVE, evidence + f"; only {len(base)} seeds (need {MIN_SEEDS})"
    if prop.sum() >= base.sum():
        return NOT_REPRODUCED, evidence
    if p is not None and p < ALPHA:
        return REPRODUCED, evidence
    return INCONCLUSIVE, evidence


def bench_row(benches: pd.DataFrame, model: str, dataset: str | None = None):
    rows = benches[benches.model == model]
    rows = rows if dataset is None else rows[rows.dataset == dataset]
    return rows.iloc[0] if len(rows) else None


def speed(dataset: str, collection: Collection, proposed: str, baseline: str, precision: str, protocol: str):
    """The speed claim by one protocol in one precision."""
    speeds = collection.speeds
    found = speeds[
        (speeds.dataset == dataset) & (speeds.precision == precision) & (speeds.protocol == protocol)
    ]
    prop, base = (found[found.model == m] for m in (proposed, baseline))
    if prop.empty or base.empty:
        return INCONCLUSIVE, "a bench.json is missing or unreadable (see the gaps)"
    prop, base = prop.iloc[0], base.iloc[0]
    if pd.isna(prop.ms) or pd.isna(base.ms):
        return NOT_MEASURED, prop.reason if pd.isna(prop.ms) else base.reason
    device = bench_row(collection.benches, proposed, dataset).device
    gain = 1 - prop.ms / base.ms
    evidence = (
        f"{proposed} {prop.ms:.2f} ms vs {baseline} {base.ms:.2f} ms per image ({protocol}, {precision}): "
        f"{abs(gain):.0%} {'faster' if gain >= 0 else 'slower'} on {device} (paper: {paper.HARDWARE})"
    )
    return (REPRODUCED if gain >= SPEED_GAIN else NOT_REPRODUCED), evidence


def parameters(benches: pd.DataFrame, proposed: str, baseline: str):
    prop, base = bench_row(benches, proposed), bench_row(benches, baseline)
    if prop is None or base is None:
        return INCONCLUSIVE, "no bench.json of one of the models could be read"
    fewer = 1 - int(prop.params) / int(base.params)
    evidence = (
        f"{proposed} {int(prop.params):,} vs {baseline} {int(base.params):,} parameters: {fewer:.1%} fewer"
    )
    return (REPRODUCED if fewer >= FEWER_PARAMETERS else NOT_REPRODUCED), evidence


def overall(claim: str, verdicts: list[Verdict], reading: str = "headline") -> Verdict:
    found = {v.verdict for v in verdicts}
    if found == {NOT_MEASURED}:
        return Verdict(claim, "all", NOT_MEASURED, verdicts[0].evidence, reading)
    if NOT_REPRODUCED in found:
        verdict = NOT_REPRODUCED
    elif found == {REPRODUCED}:
        verdict = REPRODUCED
    else:
        verdict = INCONCLUSIVE
    counts = ", ".join(
        f"{sum(v.verdict == k for v in verdicts)} {k}"
        for k in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURED)
        if k != NOT_MEASURED or k in found
    )
    return Verdict(claim, "all", verdict, f"per dataset: {counts}", reading)


def judge(collection: Collection, study: Study, reading: Reading) -> list[Verdict]:
    """Every claim under one reading: per dataset with an overall verdict above, and parameters.
    The reading picks the runs' checkpoint (accuracy), the Dice curve (stability, convergence),
    and the precision and protocol (speed)."""
    pair = (reading.proposed, reading.baseline)
    runs = collection.runs[collection.runs.checkpoint == reading.checkpoint]
    per_image = collection.per_image[collection.per_image.checkpoint == reading.checkpoint]
    curves = curve_table(collection.histories, study, reading.curve)
    verdicts = []
    for claim in PER_DATASET:
        rows = []
        for dataset in reading.datasets:
            if claim == "accuracy":
                verdict, evidence = accuracy(dataset, runs, per_image, *pair)
            elif claim == "speed":
                verdict, evidence = speed(dataset, collection, *pair, reading.precision, reading.protocol)
            else:
                verdict, evidence = fewer_is_better(claim, dataset, curves, *pair)
            rows.append(Verdict(claim, dataset, verdict, evidence, reading.name))
        verdicts += [overall(claim, rows, reading.name), *rows]
    verdict, evidence = parameters(collection.benches, *pair)
    verdicts.append(Verdict("parameters", "all", verdict, evidence, reading.name))
    return verdicts


def evaluate_claims(collection: Collection, study: Study) -> list[Verdict]:
    """The verdicts of every reading, the headline's first."""
    return [v for reading in study.plan.readings for v in judge(collection, study, reading)]


def claims_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "reading": v.reading,
                "claim": v.claim,
                "statement": paper.CLAIMS[v.claim],
                "dataset": v.dataset,
                "verdict": v.verdict,
                "evidence": v.evidence,
                "rule": RULES[v.claim],
            }
            for v in verdicts
        ]
    )
