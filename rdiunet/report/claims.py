"""Verdicts on the paper's claims, each from a rule stated beside it.

Seed-based claims (accuracy, stability, convergence) need at least MIN_SEEDS paired seeds: with
fewer, a one-sided Wilcoxon test cannot reach p < 0.05 (its smallest p with n pairs is 1/2^n), so
the verdict is "inconclusive" rather than a guess.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rdiunet import paper
from rdiunet.stats import compare, wilcoxon_greater

from .collect import Study

MIN_SEEDS = 5
ALPHA = 0.05
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"

RULES = {
    "accuracy": (
        f"Per dataset, over >= {MIN_SEEDS} seeds: reproduced if a one-sided paired Wilcoxon signed-rank "
        f"test of per-seed test Dice (RDIU-Net > U-Net) gives p < {ALPHA} and the paired bootstrap 95% CI "
        "of the per-image Dice difference (each image's Dice averaged over seeds) lies above 0; not "
        f"reproduced if that CI lies below 0 or the opposite one-sided test gives p < {ALPHA}; "
        "otherwise inconclusive."
    ),
    "speed": (
        "Per dataset: speed-up = 1 - (RDIU-Net batch-1 median ms / U-Net batch-1 median ms) on the "
        "benchmark's device; reproduced if >= 20%, not reproduced otherwise."
    ),
    "parameters": "Reproduced if RDIU-Net has at least 60% fewer parameters than U-Net (paper: 62%).",
    "stability": (
        f"Per dataset, over >= {MIN_SEEDS} seeds: reproduced if RDIU-Net has fewer validation-Dice "
        f"drops (>= the stability threshold) by a one-sided paired Wilcoxon test, p < {ALPHA}; not "
        "reproduced if its total is equal or higher; otherwise inconclusive."
    ),
    "convergence": (
        "As stability, on the first epoch above the dataset's threshold (a run that never "
        "converges counts as its number of epochs + 1)."
    ),
}


@dataclass(frozen=True)
class Verdict:
    claim: str
    dataset: str  # a dataset key, or "all"
    verdict: str
    evidence: str


def accuracy(dataset: str, runs: pd.DataFrame, per_image: pd.DataFrame) -> Verdict:
    base, prop = (
        runs[(runs.dataset == dataset) & (runs.model == m)].sort_values("seed")
        for m in (paper.BASELINE, paper.PROPOSED)
    )
    seeds = sorted(set(base.seed) & set(prop.seed))
    base, prop = base[base.seed.isin(seeds)], prop[prop.seed.isin(seeds)]
    images = (
        per_image[per_image.dataset == dataset]
        .groupby(["model", "id"])["dice"]
        .mean()
        .unstack("model")
        .dropna()
    )
    result = compare(prop.dice, base.dice, images[paper.PROPOSED], images[paper.BASELINE])
    p = "n/a" if result.wilcoxon_p is None else f"{result.wilcoxon_p:.3g}"
    evidence = (
        f"mean Dice difference {result.mean_difference:+.4f} over {result.seeds} seeds (Wilcoxon one-sided "
        f"p = {p}); per-image difference {result.image_difference:+.4f}, 95% CI "
        f"[{result.ci_low:+.4f}, {result.ci_high:+.4f}] over {result.images} images"
    )
    worse_p = wilcoxon_greater(base.dice, prop.dice)
    if result.seeds < MIN_SEEDS:
        verdict = INCONCLUSIVE
        evidence += f"; only {result.seeds} seeds (need {MIN_SEEDS})"
    elif result.ci_high < 0 or (worse_p is not None and worse_p < ALPHA):
        verdict = NOT_REPRODUCED
    elif result.wilcoxon_p is not None and result.wilcoxon_p < ALPHA and result.ci_low > 0:
        verdict = REPRODUCED
    else:
        verdict = INCONCLUSIVE
    return Verdict("accuracy", dataset, verdict, evidence)


def fewer_is_better(claim: str, dataset: str, runs: pd.DataFrame) -> Verdict:
    """Stability and convergence: RDIU-Net should need fewer (drops, epochs) per seed."""

    def values(model):
        group = runs[(runs.dataset == dataset) & (runs.model == model)].sort_values("seed")
        if claim == "convergence":
            return [group.epochs.max() + 1 if pd.isna(c) else c for c in group.convergence]
        return list(group.stability)

    base, prop = np.array(values(paper.BASELINE), float), np.array(values(paper.PROPOSED), float)
    p = wilcoxon_greater(base, prop)
    evidence = (
        f"U-Net {'/'.join(str(int(v)) for v in base)} vs RDIU-Net {'/'.join(str(int(v)) for v in prop)} "
        f"per seed (Wilcoxon one-sided p = {'n/a' if p is None else f'{p:.3g}'})"
    )
    if len(base) < MIN_SEEDS:
        verdict, evidence = INCONCLUSIVE, evidence + f"; only {len(base)} seeds (need {MIN_SEEDS})"
    elif prop.sum() >= base.sum():
        verdict = NOT_REPRODUCED
    elif p is not None and p < ALPHA:
        verdict = REPRODUCED
    else:
        verdict = INCONCLUSIVE
    return Verdict(claim, dataset, verdict, evidence)


def speed(dataset: str, benches: pd.DataFrame) -> Verdict:
    ms = {
        m: benches[(benches.dataset == dataset) & (benches.model == m)].iloc[0]
        for m in (paper.BASELINE, paper.PROPOSED)
    }
    gain = 1 - ms[paper.PROPOSED].ms_median / ms[paper.BASELINE].ms_median
    evidence = (
        f"RDIU-Net {ms[paper.PROPOSED].ms_median:.2f} ms vs U-Net {ms[paper.BASELINE].ms_median:.2f} ms per "
        f"image: {abs(gain):.0%} {'faster' if gain >= 0 else 'slower'} on {ms[paper.PROPOSED].device} "
        f"(paper: {paper.HARDWARE})"
    )
    return Verdict("speed", dataset, REPRODUCED if gain >= 0.20 else NOT_REPRODUCED, evidence)


def parameters(benches: pd.DataFrame) -> Verdict:
    params = {m: int(benches[benches.model == m].params.iloc[0]) for m in (paper.BASELINE, paper.PROPOSED)}
    fewer = 1 - params[paper.PROPOSED] / params[paper.BASELINE]
    evidence = f"{params[paper.PROPOSED]:,} vs {params[paper.BASELINE]:,} parameters: {fewer:.1%} fewer"
    return Verdict("parameters", "all", REPRODUCED if fewer >= 0.60 else NOT_REPRODUCED, evidence)


def overall(claim: str, verdicts: list[Verdict]) -> Verdict:
    found = {v.verdict for v in verdicts}
    if NOT_REPRODUCED in found:
        verdict = NOT_REPRODUCED
    elif found == {REPRODUCED}:
        verdict = REPRODUCED
    else:
        verdict = INCONCLUSIVE
    counts = ", ".join(
        f"{sum(v.verdict == k for v in verdicts)} {k}" for k in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    )
    return Verdict(claim, "all", verdict, f"per dataset: {counts}")


def evaluate_claims(
    runs: pd.DataFrame, per_image: pd.DataFrame, benches: pd.DataFrame, study: Study
) -> list[Verdict]:
    missing = [m for m in (paper.BASELINE, paper.PROPOSED) if m not in study.models]
    if missing:
        return [
            Verdict(claim, "all", INCONCLUSIVE, f"model {missing[0]} was not run") for claim in paper.CLAIMS
        ]
    verdicts = []
    for claim in ("accuracy", "speed", "stability", "convergence"):
        rows = []
        for dataset in study.datasets:
            if claim == "accuracy":
                rows.append(accuracy(dataset, runs, per_image))
            elif claim == "speed":
                rows.append(speed(dataset, benches))
            else:
                rows.append(fewer_is_better(claim, dataset, runs))
        verdicts += [overall(claim, rows), *rows]
    verdicts.append(parameters(benches))
    return verdicts


def claims_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
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
