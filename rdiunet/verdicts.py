"""The verdict engine: every claim judged by a stated rule with a known error rate.

Each `judge_*` function takes a plain table and returns a Judgement: the effect (proposed minus
baseline, in the claim's unit), its 95% interval, a p-value, the verdict and, where the data
cannot decide, why, with the power the study had and the seeds it would need. The report, Table
1's marks, the robustness matrix, `rdiunet judge` and the calibration harness
(rdiunet.calibration) all call these functions; docs/report.md states the rules and shows their
measured error rates.

Verdicts (for a claim that the proposed model is better):

- reproduced: the effect's 95% interval lies on the claimed side of 0 (of the claimed size, for
  the speed claim);
- contradicted: it lies on the other side;
- equivalent: the 90% interval lies inside (-margin, +margin), two one-sided tests at alpha 0.05:
  no difference of the size that matters;
- inconclusive: none of these, with a reason (too few seeds, too few subjects, underpowered);
- not comparable: the measurement cannot answer the claim (a CPU timing against a GPU claim).

Accuracy. Test Dice varies with training randomness (a seed gives another model) and with the test
subjects drawn (another draw gives other images). The interval counts both: the difference of the
two models' mean Dice, with the variance of each model's per-seed means (seeds unpaired: the
models share only the data order, not their initial weights) plus the cluster-robust variance of
the per-subject differences, and Welch-Satterthwaite degrees of freedom for the t quantile. The
seed x subject interaction enters both terms, so the interval errs on the wide side; the
calibration (docs/report.md) shows its coverage. A percentile bootstrap over images alone ignores
the seeds and the subjects and is too narrow (the calibration shows that too).
"""

import json
import math
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from rdiunet.errors import UserError

REPRODUCED, CONTRADICTED, EQUIVALENT, INCONCLUSIVE = (
    "reproduced",
    "contradicted",
    "equivalent",
    "inconclusive",
)
NOT_COMPARABLE, NOT_MEASURED = "not comparable", "not measured"
VERDICTS = (REPRODUCED, CONTRADICTED, EQUIVALENT, INCONCLUSIVE, NOT_COMPARABLE, NOT_MEASURED)
DECISIVE = (REPRODUCED, CONTRADICTED, EQUIVALENT)
TOO_FEW_SEEDS, TOO_FEW_SUBJECTS, UNDERPOWERED = "too few seeds", "too few subjects", "underpowered"

ALPHA = 0.05
POWER_TARGET = 0.8
MIN_SEEDS = 2  # per model: a spread needs two
MIN_SUBJECTS = 3
MIN_FOLDS = 3  # tested folds of a cross-validated study: two would leave one degree of freedom
MAX_SEEDS = 200  # seeds_needed is not searched beyond this
PERMUTATIONS = 20_000  # exact below this many relabellings, Monte Carlo above
# Default equivalence margins, per claim (config: margins). Accuracy: half the smallest Dice gain
# the paper reports (nerve, +0.010). Stability: one drop per 100 epochs.
MARGINS = {"accuracy": 0.005, "stability": 1.0}
SCORE_COLUMNS = ("model", "seed", "image", "subject", "dice")


@dataclass(frozen=True)
class Judgement:
    """One claim's verdict with everything needed to read it."""

    claim: str
    verdict: str
    reason: str | None  # why inconclusive (or not comparable)
    effect: float  # proposed - baseline, in the claim's unit (speed: the speed-up)
    low: float  # 95% interval
    high: float
    p: float | None  # two-sided, for no difference
    power: float | None  # of reaching a decisive verdict at the claimed effect (or the margin)
    seeds_needed: int | None  # per model, for POWER_TARGET; None where seeds cannot get there
    margin: float | None
    claimed: float | None
    unit: str
    method: str
    counts: dict = field(default_factory=dict)  # seeds per model, subjects, images, sessions
    note: str = ""  # what else the reader should know (e.g. a gain smaller than the margin)

    def as_dict(self) -> dict:
        return asdict(self)

    def evidence(self) -> str:
        """One readable line: the effect, its interval, the test and what decided."""
        interval = "" if math.isnan(self.low) else f", 95% CI [{self.low:+.4g}, {self.high:+.4g}]"
        p = "" if self.p is None else f", p = {self.p:.3g}"
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        text = f"effect {self.effect:+.4g} {self.unit}{interval}{p} ({self.method}; {counts})"
        if self.power is not None:
            target = "claimed effect" if self.claimed is not None else "margin"
            text += f"; power {self.power:.0%} at the {target}"
        if self.verdict == INCONCLUSIVE and self.reason == UNDERPOWERED and self.power is not None:
            if self.seeds_needed:
                text += f"; {self.seeds_needed} seeds per model would give {POWER_TARGET:.0%} power"
            elif self.claim == "accuracy":
                text += (
                    f"; more seeds alone cannot reach {POWER_TARGET:.0%} power: more test subjects are needed"
                )
            else:
                text += (
                    f"; more than {MAX_SEEDS} seeds per model would be needed for {POWER_TARGET:.0%} power"
                )
        return text + (f"; {self.note}" if self.note else "")


# --- the decision, shared by every claim ----------------------------------------------------------


def decide(
    effect: float, se: float, df: float, margin: float | None
) -> tuple[str, float, float, float | None]:
    """(verdict, low, high, p) from an estimate, its standard error and degrees of freedom."""
    if se == 0:  # no spread at all: the estimate is exact
        p = 1.0 if effect == 0 else 0.0
        if effect > 0:
            return REPRODUCED, effect, effect, p
        if effect < 0:
            return CONTRADICTED, effect, effect, p
        return (EQUIVALENT if margin else INCONCLUSIVE), 0.0, 0.0, p
    quantile = stats.t.ppf(1 - ALPHA / 2, df)
    low, high = effect - quantile * se, effect + quantile * se
    p = float(2 * stats.t.sf(abs(effect) / se, df))
    if low > 0:
        return REPRODUCED, low, high, p
    if high < 0:
        return CONTRADICTED, low, high, p
    if margin and equivalent(effect, se, df, margin):
        return EQUIVALENT, low, high, p
    return INCONCLUSIVE, low, high, p


def equivalent(effect: float, se: float, df: float, margin: float) -> bool:
    """Two one-sided tests at ALPHA: the 90% interval inside (-margin, +margin)."""
    quantile = stats.t.ppf(1 - ALPHA, df)
    return -margin < effect - quantile * se and effect + quantile * se < margin


def power_of(difference: float, se: float, df: float) -> float:
    """The chance that the 95% interval excludes 0 on the side of `difference` (noncentral t)."""
    if se == 0:
        return 1.0 if difference != 0 else 0.0
    quantile = stats.t.ppf(1 - ALPHA / 2, df)
    return float(stats.nct.sf(quantile, df, abs(difference) / se))


def welch_df(terms: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance terms (variance, its df)."""
    total = sum(v for v, _ in terms)
    denominator = sum(v * v / d for v, d in terms if v > 0 and d > 0)
    return total * total / denominator if denominator > 0 else math.inf


def undecided(reason: str, effect: float, verdict: str = INCONCLUSIVE, **common) -> Judgement:
    """A judgement without an interval: too few seeds, subjects, events or sessions."""
    return Judgement(
        verdict=verdict,
        reason=reason,
        effect=effect,
        low=math.nan,
        high=math.nan,
        p=None,
        power=None,
        seeds_needed=None,
        **common,
    )


# --- accuracy -----------------------------------------------------------------------------------


def check_scores(scores: pd.DataFrame, proposed: str, baseline: str) -> pd.DataFrame:
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise UserError(
            f"the scores lack the column(s) {', '.join(missing)}; a scores table needs "
            f"{', '.join(SCORE_COLUMNS)} (subject may repeat the image id)"
        )
    for model in (proposed, baseline):
        if not (scores.model == model).any():
            found = ", ".join(sorted(map(str, scores.model.unique())))
            raise UserError(f"no scores of model '{model}' (the table has: {found})")
    dice = pd.to_numeric(scores.dice, errors="coerce")
    if dice.isna().any() or not dice.between(0, 1).all():
        raise UserError("every dice value must be a number in [0, 1]; fix or drop the rows that are not")
    return scores.assign(dice=dice, image=scores.image.astype(str), subject=scores.subject.astype(str))


@dataclass(frozen=True)
class AccuracyParts:
    """The pieces of the accuracy effect's variance, from which power for other designs follows."""

    effect: float
    seed_variance: dict[str, float]  # per model: variance of its per-seed mean Dice
    seeds: dict[str, int]
    subject_variance: float  # cluster-robust variance of the mean per-subject difference
    subjects: int
    images: int

    def se_and_df(self, seeds: dict[str, int] | None = None) -> tuple[float, float]:
        seeds = seeds or self.seeds
        terms = [(self.seed_variance[m] / seeds[m], seeds[m] - 1) for m in self.seed_variance]
        terms.append((self.subject_variance, self.subjects - 1))
        variance = sum(v for v, _ in terms)
        return math.sqrt(variance), welch_df(terms)


def accuracy_parts(scores: pd.DataFrame, proposed: str, baseline: str) -> AccuracyParts:
    both = scores[scores.model.isin((proposed, baseline))]
    # Only images both models were scored on: the difference is paired by image.
    per_image = both.groupby(["model", "image"]).dice.mean().unstack("model")[[proposed, baseline]].dropna()
    subject_of = both.groupby("image").subject.first()
    differences = (per_image[proposed] - per_image[baseline]).rename("difference").to_frame()
    differences["subject"] = subject_of.reindex(differences.index).to_numpy()
    shared = set(differences.index)
    kept = both[both.image.isin(shared)]
    run_means = kept.groupby(["model", "seed"]).dice.mean()
    seeds = {m: int((run_means.index.get_level_values(0) == m).sum()) for m in (proposed, baseline)}
    seed_variance = {
        m: float(run_means.loc[m].var(ddof=1)) if seeds[m] > 1 else math.nan for m in (proposed, baseline)
    }
    by_subject = differences.groupby("subject").difference.agg(["mean", "size"])
    weights = by_subject["size"].to_numpy(float) / len(differences) if len(differences) else np.array([])
    effect = float(differences.difference.mean()) if len(differences) else math.nan
    subjects = len(by_subject)
    if subjects > 1:
        deviations = by_subject["mean"].to_numpy() - effect
        subject_variance = float(subjects / (subjects - 1) * np.sum((weights * deviations) ** 2))
    else:
        subject_variance = math.nan
    return AccuracyParts(effect, seed_variance, seeds, subject_variance, subjects, len(differences))


@dataclass(frozen=True)
class FoldParts:
    """The accuracy effect of a cross-validated study: each image scored by the seeds whose test
    fold held it. A fold's images share their runs, so the runs' randomness and the subjects'
    sampling both sit in the spread of the per-fold differences: folds are the clusters."""

    effect: float
    fold_variance: float  # cluster-robust variance of the effect over folds
    subject_variance: float  # the part the subjects alone would give (cluster-robust over subjects)
    folds: int
    repeats: float  # seeds per fold and model
    seeds: dict[str, int]
    subjects: int
    images: int

    def se_and_df(self, repeats: float | None = None) -> tuple[float, float]:
        """The standard error with `repeats` seeds per fold (the observed number by default): the
        runs' part shrinks with repeats, the subjects' part does not."""
        if repeats is None:
            return math.sqrt(self.fold_variance), self.folds - 1
        runs = max(self.fold_variance - self.subject_variance, 0.0) * self.repeats / repeats
        return math.sqrt(runs + self.subject_variance), self.folds - 1


def cluster_variance(differences: pd.Series, clusters: pd.Series, effect: float) -> float:
    """Cluster-robust (CR1) variance of the mean of `differences`, clustered by `clusters`."""
    by = differences.groupby(clusters.to_numpy()).agg(["mean", "size"])
    count = len(by)
    if count < 2:
        return math.nan
    weights = by["size"].to_numpy(float) / len(differences)
    return float(count / (count - 1) * np.sum((weights * (by["mean"].to_numpy() - effect)) ** 2))


def fold_parts(scores: pd.DataFrame, proposed: str, baseline: str) -> FoldParts:
    both = scores[scores.model.isin((proposed, baseline))]
    per_image = both.groupby(["model", "image"]).dice.mean().unstack("model")[[proposed, baseline]].dropna()
    differences = per_image[proposed] - per_image[baseline]
    first = both.groupby("image")[["fold", "subject"]].first().reindex(differences.index)
    if both.groupby("image").fold.nunique().max() > 1:
        raise UserError("an image is scored in two folds; each test image must belong to one fold")
    effect = float(differences.mean())
    seeds = {m: int(both[both.model == m].seed.nunique()) for m in (proposed, baseline)}
    folds = int(first.fold.nunique())
    return FoldParts(
        effect=effect,
        fold_variance=cluster_variance(differences, first.fold, effect),
        subject_variance=cluster_variance(differences, first.subject, effect),
        folds=folds,
        repeats=min(seeds.values()) / max(folds, 1),
        seeds=seeds,
        subjects=int(first.subject.nunique()),
        images=len(differences),
    )


def cv_seeds_needed(parts: FoldParts, difference: float) -> int | None:
    """Seeds per model (whole rounds of the folds) for POWER_TARGET at `difference`; None where
    the subjects' spread alone keeps the power below it."""
    for repeats in range(1, MAX_SEEDS // parts.folds + 1):
        if power_of(difference, *parts.se_and_df(repeats)) >= POWER_TARGET:
            return repeats * parts.folds
    return None


def seeds_needed(parts: AccuracyParts, difference: float) -> int | None:
    """Seeds per model for POWER_TARGET at `difference`, with the variances observed; None where
    the subjects' spread alone keeps the power below it (more seeds cannot help then)."""
    n = np.arange(2, MAX_SEEDS + 1, dtype=float)
    seed_terms = [parts.seed_variance[m] / n for m in parts.seeds]
    subject_term = parts.subject_variance
    variance = sum(seed_terms) + subject_term
    denominator = sum(t * t / (n - 1) for t in seed_terms)
    if subject_term > 0:
        denominator = denominator + subject_term**2 / (parts.subjects - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denominator > 0, variance**2 / denominator, np.inf)
        noncentrality = np.where(variance > 0, abs(difference) / np.sqrt(variance), np.inf)
    power = stats.nct.sf(stats.t.ppf(1 - ALPHA / 2, df), df, noncentrality)
    reached = np.flatnonzero(power >= POWER_TARGET)
    return int(n[reached[0]]) if len(reached) else None


def judge_accuracy(
    scores: pd.DataFrame,
    proposed: str,
    baseline: str,
    margin: float | None = None,
    claimed: float | None = None,
) -> Judgement:
    """Is `proposed` more accurate than `baseline` (mean test Dice)? `scores`: one row per model,
    seed and test image (columns model, seed, image, subject, dice; and fold, for a
    cross-validated study, where each image is scored by the seeds of its fold). `margin`: the
    equivalence margin in Dice (default MARGINS["accuracy"]); `claimed`: the gain claimed, for
    the power."""
    scores = check_scores(scores, proposed, baseline)
    margin = MARGINS["accuracy"] if margin is None else margin
    cross_validated = "fold" in scores.columns and scores.fold.notna().any()
    if cross_validated:
        if scores.fold.isna().any():
            raise UserError("the fold column is empty for some rows; give every row its test fold, or none")
        parts, needed = fold_parts(scores, proposed, baseline), cv_seeds_needed
        method = "cross-validation, folds as clusters, t"
        too_few = TOO_FEW_SEEDS if parts.folds < MIN_FOLDS else None
    else:
        parts, needed = accuracy_parts(scores, proposed, baseline), seeds_needed
        method = "seeds + subjects, Welch t"
        too_few = TOO_FEW_SEEDS if min(parts.seeds.values()) < MIN_SEEDS else None
        too_few = too_few or (TOO_FEW_SUBJECTS if parts.subjects < MIN_SUBJECTS else None)
    if parts.images == 0:
        raise UserError(f"no test image was scored for both '{proposed}' and '{baseline}'")
    counts = {f"seeds of {proposed}": parts.seeds[proposed], f"seeds of {baseline}": parts.seeds[baseline]}
    counts |= {"folds": parts.folds} if cross_validated else {}
    counts |= {"subjects": parts.subjects, "images": parts.images}
    common = dict(claim="accuracy", margin=margin, claimed=claimed, unit="Dice", method=method, counts=counts)
    if too_few:
        return undecided(too_few, parts.effect, **common)
    se, df = parts.se_and_df()
    verdict, low, high, p = decide(parts.effect, se, df, margin)
    target = claimed if claimed is not None else margin
    note = ""
    if verdict == REPRODUCED and high < margin:
        note = f"the whole interval lies below the margin ({margin:g}): a real but small gain"
    return Judgement(
        verdict=verdict,
        reason=UNDERPOWERED if verdict == INCONCLUSIVE else None,
        effect=parts.effect,
        low=low,
        high=high,
        p=p,
        power=power_of(target, se, df),
        seeds_needed=needed(parts, target),
        note=note,
        **common,
    )


# --- stability: drops of the validation curve -----------------------------------------------------


def check_table(table: pd.DataFrame, columns: tuple[str, ...], proposed: str, baseline: str, what: str):
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(
            f"the {what} table lacks the column(s) {', '.join(missing)}; it needs {', '.join(columns)}"
        )
    for model in (proposed, baseline):
        if not (table.model == model).any():
            raise UserError(f"no {what} of model '{model}'")


def permutation_p(proposed: np.ndarray, baseline: np.ndarray) -> float:
    """Two-sided permutation test of the difference of means, exact for small studies; ties are
    part of the data, not dropped (0 drops against 0 drops is no difference)."""
    if np.ptp(np.concatenate([proposed, baseline])) == 0:
        return 1.0
    result = stats.permutation_test(
        (proposed, baseline),
        lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis),
        permutation_type="independent",
        alternative="two-sided",
        n_resamples=20_000,
        vectorized=True,
        rng=np.random.default_rng(0),
    )
    return float(result.pvalue)


def welch_parts(proposed: np.ndarray, baseline: np.ndarray) -> tuple[float, float, float]:
    """Difference of means, its standard error and Welch's degrees of freedom."""
    terms = [(v.var(ddof=1) / len(v), len(v) - 1) for v in (proposed, baseline)]
    return float(proposed.mean() - baseline.mean()), math.sqrt(sum(t for t, _ in terms)), welch_df(terms)


def judge_stability(
    drops: pd.DataFrame,
    proposed: str,
    baseline: str,
    margin: float | None = None,
    claimed: float | None = None,
) -> Judgement:
    """Does `proposed` train more stably (fewer validation-Dice drops per 100 epochs)? `drops`: one
    row per run (columns model, seed, drops, epochs). The decision is the exact permutation test
    of the difference in drops per 100 epochs (two-sided, ALPHA), its direction the sign of the
    difference; equivalence is Welch's two one-sided tests with `margin` drops per 100 epochs
    (default MARGINS["stability"]); the interval shown is Welch's."""
    check_table(drops, ("model", "seed", "drops", "epochs"), proposed, baseline, "drops")
    margin = MARGINS["stability"] if margin is None else margin
    rates = {
        m: (100 * drops[drops.model == m].drops / drops[drops.model == m].epochs).to_numpy(float)
        for m in (proposed, baseline)
    }
    counts = {f"seeds of {proposed}": len(rates[proposed]), f"seeds of {baseline}": len(rates[baseline])}
    common = dict(
        claim="stability",
        margin=margin,
        claimed=claimed,
        unit="drops per 100 epochs",
        method="permutation test, Welch interval",
        counts=counts,
    )
    effect = float(rates[proposed].mean() - rates[baseline].mean())
    if min(len(r) for r in rates.values()) < MIN_SEEDS:
        return undecided(TOO_FEW_SEEDS, effect, **common)
    effect, se, df = welch_parts(rates[proposed], rates[baseline])
    p = permutation_p(rates[proposed], rates[baseline])
    quantile = stats.t.ppf(1 - ALPHA / 2, df) if se > 0 else 0.0
    low, high = effect - quantile * se, effect + quantile * se
    if p < ALPHA and effect != 0:  # fewer drops is the claimed side
        verdict = REPRODUCED if effect < 0 else CONTRADICTED
    elif se == 0 and abs(effect) < margin or se > 0 and equivalent(effect, se, df, margin):
        verdict = EQUIVALENT
    else:
        verdict = INCONCLUSIVE
    target = claimed if claimed is not None else margin
    spread = math.sqrt((rates[proposed].var(ddof=1) + rates[baseline].var(ddof=1)) / 2)
    power, needed = two_sample_power(target, spread, len(rates[proposed]), len(rates[baseline]))
    return Judgement(
        verdict=verdict,
        reason=UNDERPOWERED if verdict == INCONCLUSIVE else None,
        effect=effect,
        low=low,
        high=high,
        p=p,
        power=power,
        seeds_needed=needed,
        **common,
    )


def two_sample_power(difference: float, spread: float, n1: int, n2: int) -> tuple[float | None, int | None]:
    """Power of a two-sample t test (two-sided, ALPHA) at `difference` with `spread` the SD per
    run, and the runs per model for POWER_TARGET (statsmodels' TTestIndPower); (None, None)
    where no spread was seen."""
    from statsmodels.stats.power import TTestIndPower

    if spread == 0 or not math.isfinite(spread) or difference == 0:
        return None, None
    size, analysis = abs(difference) / spread, TTestIndPower()
    power = float(analysis.power(size, nobs1=n1, ratio=n2 / n1, alpha=ALPHA))
    needed = next(
        (
            n
            for n in range(2, MAX_SEEDS + 1)
            if analysis.power(size, nobs1=n, ratio=1, alpha=ALPHA) >= POWER_TARGET
        ),
        None,
    )
    return power, needed


# --- convergence: time to reach the threshold, censored where never -------------------------------


def km_median(epochs: np.ndarray, reached: np.ndarray) -> float:
    """Kaplan-Meier median epoch of reaching the threshold (runs that never reach it are censored
    at their length); inf where fewer than half are known to reach it."""
    if not reached.any():
        return math.inf
    data = stats.CensoredData(uncensored=epochs[reached], right=epochs[~reached])
    survival = stats.ecdf(data).sf
    below = np.flatnonzero(survival.probabilities <= 0.5)
    return float(survival.quantiles[below[0]]) if len(below) else math.inf


def judge_convergence(
    runs: pd.DataFrame, proposed: str, baseline: str, claimed_ratio: float | None = None
) -> Judgement:
    """Does `proposed` reach the threshold in fewer epochs? `runs`: one row per run (columns model,
    seed, epoch (first epoch reaching the threshold; empty where never) and epochs (the run's
    length, where a run that never reaches it is censored)). The decision is the log-rank test
    (two-sided, ALPHA); the effect is the difference of Kaplan-Meier medians in epochs. No
    equivalence is judged: time to an event has no margin the paper implies. `claimed_ratio`: the
    claimed ratio of the baseline's median to the proposed's, for the power (Schoenfeld)."""
    check_table(runs, ("model", "seed", "epoch", "epochs"), proposed, baseline, "convergence")
    parts = {}
    for model in (proposed, baseline):
        group = runs[runs.model == model]
        reached = group.epoch.notna().to_numpy()
        epochs = np.where(
            reached, pd.to_numeric(group.epoch, errors="coerce").fillna(0), group.epochs
        ).astype(float)
        parts[model] = (epochs, reached)
    medians = {m: km_median(*parts[m]) for m in parts}
    effect = medians[proposed] - medians[baseline] if all(map(math.isfinite, medians.values())) else math.nan
    counts = {
        f"seeds of {proposed}": len(parts[proposed][0]),
        f"seeds of {baseline}": len(parts[baseline][0]),
        "reached": int(sum(p[1].sum() for p in parts.values())),
    }
    medians_text = ", ".join(
        f"{m} {'never (median)' if math.isinf(v) else f'{v:g}'}" for m, v in medians.items()
    )
    common = dict(
        claim="convergence",
        margin=None,
        claimed=claimed_ratio,
        unit="epochs (Kaplan-Meier medians)",
        method="log-rank test",
        counts=counts,
        note=f"medians: {medians_text}",
    )
    if min(len(p[0]) for p in parts.values()) < MIN_SEEDS:
        return undecided(TOO_FEW_SEEDS, effect, **common)
    if counts["reached"] == 0:
        return undecided(UNDERPOWERED, effect, **common)
    times = np.concatenate([parts[proposed][0], parts[baseline][0]])
    events = np.concatenate([parts[proposed][1], parts[baseline][1]])
    first = np.arange(len(times)) < len(parts[proposed][0])
    statistic, p = permutation_logrank(times, events, first)
    # A positive statistic: the proposed model reaches the threshold more often than expected.
    verdict = INCONCLUSIVE if p >= ALPHA else REPRODUCED if statistic > 0 else CONTRADICTED
    power, needed = logrank_power(claimed_ratio, counts["reached"], sum(len(p[0]) for p in parts.values()))
    return Judgement(
        verdict=verdict,
        reason=UNDERPOWERED if verdict == INCONCLUSIVE else None,
        effect=effect,
        low=math.nan,
        high=math.nan,
        p=p,
        power=power,
        seeds_needed=needed,
        **common,
    )


def logrank_z(times: np.ndarray, events: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The log-rank statistic (observed minus expected events of the `first` group over the root of
    its variance) for each row of `first` (a boolean matrix, one group assignment per row, or one
    vector), vectorised over the assignments for the permutation test."""
    first = np.atleast_2d(first)
    order = np.argsort(times, kind="stable")
    times, events, first = times[order], events[order], first[:, order]
    distinct = np.unique(times[events])
    # At each event time: who is still at risk (time >= t), and who has the event (time == t).
    at_risk = times[None, :] >= distinct[:, None]  # (T, N)
    event_now = (times[None, :] == distinct[:, None]) & events[None, :]
    n, d = at_risk.sum(1).astype(float), event_now.sum(1).astype(float)
    n1 = first.astype(float) @ at_risk.T  # (P, T)
    d1 = first.astype(float) @ event_now.T
    expected = (d * n1 / n).sum(1)
    spread = np.where(n > 1, (n - d) / np.maximum(n - 1, 1), 0.0)
    variance = (d * (n1 / n) * (1 - n1 / n) * spread).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(variance > 0, (d1.sum(1) - expected) / np.sqrt(variance), 0.0)


def permutation_logrank(times: np.ndarray, events: np.ndarray, first: np.ndarray) -> tuple[float, float]:
    """(statistic, two-sided p) of the log-rank test, the p-value from permuting the group labels:
    exact under no effect whatever the sample size (the asymptotic p-value is too small with a
    handful of runs per model, as the calibration shows)."""
    observed = float(logrank_z(times, events, first)[0])
    size, count = len(times), int(first.sum())
    if math.comb(size, count) <= PERMUTATIONS:
        assignments = np.zeros((math.comb(size, count), size), bool)
        for row, chosen in enumerate(combinations(range(size), count)):
            assignments[row, list(chosen)] = True
    else:
        rng = np.random.default_rng(0)
        assignments = np.argsort(rng.random((PERMUTATIONS, size)), axis=1) < count
    null = logrank_z(times, events, assignments)
    p = float(np.mean(np.abs(null) >= abs(observed) - 1e-12))
    return observed, max(p, 1 / len(null))


def logrank_power(ratio: float | None, events: int, runs: int) -> tuple[float | None, int | None]:
    """Schoenfeld's approximation for a log-rank test with equal groups: the power with the events
    seen, and the runs per model whose events give POWER_TARGET (events per run as seen)."""
    if ratio is None or ratio <= 0 or ratio == 1 or events == 0:
        return None, None
    z_alpha, z_power = stats.norm.ppf(1 - ALPHA / 2), stats.norm.ppf(POWER_TARGET)
    log_hr = abs(math.log(ratio))
    power = float(stats.norm.cdf(math.sqrt(events * log_hr**2 / 4) - z_alpha))
    needed_events = 4 * (z_alpha + z_power) ** 2 / log_hr**2
    per_model = math.ceil(needed_events / (events / runs) / 2)
    return power, per_model if per_model <= MAX_SEEDS else None


# --- speed: interleaved timing sessions --------------------------------------------------------------


def judge_speed(
    timings: pd.DataFrame, proposed: str, baseline: str, claimed: float, comparable: str | None = None
) -> Judgement:
    """Is `proposed` at least `claimed` (a fraction) faster per image? `timings`: one row per model
    and session (columns model, session, ms), the sessions interleaved so that both models met the
    same state of the machine in each. The speed-up 1 - proposed/baseline comes from the mean over
    sessions of log(proposed ms / baseline ms) with a t interval over sessions; reproduced where
    the interval lies above `claimed`, contradicted where below. `comparable`: None where the
    device can answer the claim, else why not (a CPU against a GPU claim): then the numbers are
    shown and the verdict is `not comparable`."""
    check_table(timings, ("model", "session", "ms"), proposed, baseline, "timing")
    paired = timings.pivot_table(index="session", columns="model", values="ms")[[proposed, baseline]].dropna()
    ratios = np.log(paired[proposed].to_numpy(float) / paired[baseline].to_numpy(float))
    common = dict(
        claim="speed",
        margin=None,
        claimed=claimed,
        unit="speed-up",
        method="interleaved sessions, t",
        counts={"sessions": len(ratios)},
    )
    mean = float(ratios.mean()) if len(ratios) else math.nan
    effect = 1 - math.exp(mean) if len(ratios) else math.nan
    if len(ratios) < 2:
        return undecided(
            comparable or "too few sessions",
            effect,
            verdict=NOT_COMPARABLE if comparable else INCONCLUSIVE,
            **common,
        )
    se = float(ratios.std(ddof=1) / math.sqrt(len(ratios)))
    quantile = stats.t.ppf(1 - ALPHA / 2, len(ratios) - 1)
    low, high = 1 - math.exp(mean + quantile * se), 1 - math.exp(mean - quantile * se)
    target = math.log(1 - claimed)
    p = float(2 * stats.t.sf(abs(mean - target) / se, len(ratios) - 1)) if se > 0 else float(mean == target)
    if comparable:
        verdict, reason = NOT_COMPARABLE, comparable
    elif low > claimed:
        verdict, reason = REPRODUCED, None
    elif high < claimed:
        verdict, reason = CONTRADICTED, None
    else:
        verdict, reason = INCONCLUSIVE, UNDERPOWERED
    note = f"claimed at least {claimed:.0%} faster"
    return Judgement(
        verdict=verdict,
        reason=reason,
        effect=effect,
        low=low,
        high=high,
        p=p,
        power=None,
        seeds_needed=None,
        note=note,
        **common,
    )


def judge_parameters(proposed_params: int, baseline_params: int, claimed: float) -> Judgement:
    """Has `proposed` at least `claimed` (a fraction) fewer parameters, and fewer at all? A count:
    no statistics."""
    fewer = 1 - proposed_params / baseline_params
    return Judgement(
        claim="parameters",
        verdict=REPRODUCED if fewer >= claimed and fewer > 0 else CONTRADICTED,
        reason=None,
        effect=fewer,
        low=fewer,
        high=fewer,
        p=None,
        power=None,
        seeds_needed=None,
        margin=None,
        claimed=claimed,
        unit="fewer parameters (fraction)",
        method="count",
        counts={"proposed": proposed_params, "baseline": baseline_params},
    )


def judge_command(
    path: Path, proposed: str, baseline: str, margin: float | None, claimed: float | None, as_json: bool
) -> None:
    """`rdiunet judge`: the accuracy verdict for any per-image scores CSV."""
    try:
        scores = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the scores CSV {path} ({error})") from None
    if margin is not None and not (math.isfinite(margin) and margin > 0):
        raise UserError(f"--margin must be a finite number above 0, got {margin}")
    judgement = judge_accuracy(scores, proposed, baseline, margin=margin, claimed=claimed)
    if as_json:
        print(json.dumps(judgement.as_dict(), indent=2, default=float))
        return
    reason = f" ({judgement.reason})" if judgement.reason else ""
    print(f"{proposed} more accurate than {baseline}: {judgement.verdict}{reason}")
    print(f"  {judgement.evidence()}")
