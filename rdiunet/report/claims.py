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

from .collect import Collection, Study

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


def paired_seeds(runs: pd.DataFrame, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Baseline and proposed runs of `dataset` on the seeds both have (a seed left out for one
    model is left out for both), in seed order."""
    base, prop = (
        runs[(runs.dataset == dataset) & (runs.model == m)].sort_values("seed")
        for m in (paper.BASELINE, paper.PROPOSED)
    )
    seeds = sorted(set(base.seed) & set(prop.seed))
    return base[base.seed.isin(seeds)], prop[prop.seed.isin(seeds)]


def no_pairs(claim: str, dataset: str) -> Verdict:
    return Verdict(
        claim, dataset, INCONCLUSIVE, "no seed has a valid run of both models (see the runs left out)"
    )


def accuracy(dataset: str, runs: pd.DataFrame, per_image: pd.DataFrame) -> Verdict:
    base, prop = paired_seeds(runs, dataset)
    if base.empty:
        return no_pairs("accuracy", dataset)
    paired = per_image[(per_image.dataset == dataset) & per_image.seed.isin(set(base.seed))]
    images = paired.groupby(["model", "id"])["dice"].mean().unstack("model")
    images = images.reindex(columns=[paper.PROPOSED, paper.BASELINE]).dropna()
    result = compare(prop.dice, base.dice, images[paper.PROPOSED], images[paper.BASELINE])
    p = "n/a" if result.wilcoxon_p is None else f"{result.wilcoxon_p:.3g}"
    per_image_text = (
        f"per-image difference {result.image_difference:+.4f}, 95% CI "
        f"[{result.ci_low:+.4f}, {result.ci_high:+.4f}] over {result.images} images"
        if result.images
        else "no per-image scores shared by both models"
    )
    evidence = (
        f"mean Dice difference {result.mean_difference:+.4f} over {result.seeds} seeds (Wilcoxon one-sided "
        f"p = {p}); {per_image_text}"
    )
    worse_p = wilcoxon_greater(base.dice, prop.dice)
    if result.seeds < MIN_SEEDS:
        verdict = INCONCLUSIVE
        evidence += f"; only {result.seeds} seeds (need {MIN_SEEDS})"
    elif not result.images:
        verdict = INCONCLUSIVE
    elif result.ci_high < 0 or (worse_p is not None and worse_p < ALPHA):
        verdict = NOT_REPRODUCED
    elif result.wilcoxon_p is not None and result.wilcoxon_p < ALPHA and result.ci_low > 0:
        verdict = REPRODUCED
    else:
        verdict = INCONCLUSIVE
    return Verdict("accuracy", dataset, verdict, evidence)


def fewer_is_better(claim: str, dataset: str, runs: pd.DataFrame) -> Verdict:
    """Stability and convergence: RDIU-Net should need fewer (drops, epochs) per seed."""
    pairs = paired_seeds(runs, dataset)
    if pairs[0].empty:
        return no_pairs(claim, dataset)

    def values(group: pd.DataFrame) -> np.ndarray:
        if claim == "convergence":
            return np.array(
                [e + 1 if pd.isna(c) else c for c, e in zip(group.convergence, group.epochs, strict=True)],
                float,
            )
        return np.array(group.stability, float)

    base, prop = (values(group) for group in pairs)
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


def bench_rows(benches: pd.DataFrame, dataset: str | None = None) -> dict:
    """model -> its bench row, for the two models of the claims (absent where bench.json is)."""
    rows = benches if dataset is None else benches[benches.dataset == dataset]
    return {
        m: rows[rows.model == m].iloc[0] for m in (paper.BASELINE, paper.PROPOSED) if (rows.model == m).any()
    }


def speed(dataset: str, benches: pd.DataFrame) -> Verdict:
    ms = bench_rows(benches, dataset)
    if len(ms) < 2:
        return Verdict("speed", dataset, INCONCLUSIVE, "a bench.json is missing or unreadable (see the gaps)")
    gain = 1 - ms[paper.PROPOSED].ms_median / ms[paper.BASELINE].ms_median
    evidence = (
        f"RDIU-Net {ms[paper.PROPOSED].ms_median:.2f} ms vs U-Net {ms[paper.BASELINE].ms_median:.2f} ms per "
        f"image: {abs(gain):.0%} {'faster' if gain >= 0 else 'slower'} on {ms[paper.PROPOSED].device} "
        f"(paper: {paper.HARDWARE})"
    )
    return Verdict("speed", dataset, REPRODUCED if gain >= 0.20 else NOT_REPRODUCED, evidence)


def parameters(benches: pd.DataFrame) -> Verdict:
    rows = bench_rows(benches)
    if len(rows) < 2:
        return Verdict("parameters", "all", INCONCLUSIVE, "no bench.json of one of the models could be read")
    params = {m: int(row.params) for m, row in rows.items()}
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


def evaluate_claims(collection: Collection, study: Study) -> list[Verdict]:
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
                rows.append(accuracy(dataset, collection.runs, collection.per_image))
            elif claim == "speed":
                rows.append(speed(dataset, collection.benches))
            else:
                rows.append(fewer_is_better(claim, dataset, collection.runs))
        verdicts += [overall(claim, rows), *rows]
    verdicts.append(parameters(collection.benches))
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
