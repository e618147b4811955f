"""The paper's claims judged under every reading, each by a rule of rdiunet.verdicts.

A reading (rdiunet.readings) names the proposed model, the baseline and the datasets; each claim
is judged for that pair on each dataset (parameters once). The headline reading is the primary
analysis, declared before any result: its verdicts are at alpha 0.05 as they stand. The other
readings are sensitivity analyses: their verdicts are shown too, with Holm-adjusted p-values over
all of them (statsmodels), and a sensitivity verdict whose adjusted p-value is not below alpha is
marked so.
"""

import math
from dataclasses import dataclass, replace

import pandas as pd
from statsmodels.stats.multitest import multipletests

from rdiunet import paper, verdicts
from rdiunet.errors import UserError
from rdiunet.readings import Reading
from rdiunet.verdicts import ALPHA, INCONCLUSIVE, NOT_MEASURED, Judgement

from .collect import Collection, Study, curve_table
from .findings import flagged_in, without_flagged

# The paper's thresholds, for the paper's models (on its datasets, for speed); a study of other
# models or data claims only "faster" and "fewer" (above 0).
SPEED_GAIN = 0.20  # "20-30% faster": at least 20%
FEWER_PARAMETERS = 0.60  # "62% fewer": the paper's 15.6M -> 5.9M, rounded down
PER_DATASET = ("accuracy", "speed", "stability", "convergence")
CLAIMS = (*PER_DATASET, "parameters")

RULES = {
    "accuracy": (
        "Per dataset: the difference in mean test Dice (proposed - baseline) over every seed and test "
        "image, with a 95% interval that counts both training randomness (each model's per-seed means, "
        "seeds unpaired) and the sampling of test subjects (per-subject differences, cluster-robust), "
        "Welch-Satterthwaite degrees of freedom. Reproduced if the interval lies above 0, contradicted "
        "if below, equivalent if the 90% interval lies inside (-margin, +margin) (two one-sided tests), "
        "else inconclusive with the power at the paper's gain and the seeds that would give 80%."
    ),
    "speed": (
        "Per dataset and reading (protocol, precision): every model timed in interleaved sessions in "
        "one process on one card; the speed-up 1 - proposed/baseline from the mean over sessions of the "
        f"log time ratio, with a t interval over sessions. Reproduced if the interval lies above the "
        f"claimed speed-up (the paper's {SPEED_GAIN:.0%} for its models on its datasets, else 0), "
        "contradicted if below; for the paper's claim, not comparable where the timing ran on another "
        f"class of hardware than the paper's ({paper.HARDWARE}), e.g. a CPU; not measured where the "
        "device cannot run the reading."
    ),
    "parameters": (
        f"A count: reproduced if the proposed model has at least {FEWER_PARAMETERS:.0%} fewer parameters "
        "than the baseline where the paper's models are compared (paper: 62%), fewer at all for other "
        "models, else contradicted."
    ),
    "stability": (
        "Per dataset: validation-Dice drops of more than the threshold per 100 epochs, per run. The exact "
        f"permutation test of the difference (two-sided, alpha {ALPHA}; ties count, so 0 drops against 0 "
        "drops is no difference) decides reproduced (fewer) or contradicted (more); equivalent if Welch's "
        "two one-sided tests put the difference inside the margin; the interval shown is Welch's."
    ),
    "convergence": (
        "Per dataset: epochs until the validation Dice reaches the threshold, a run that never reaches "
        "it censored at its length. The log-rank test (two-sided) decides; the effect is the difference "
        "of the Kaplan-Meier medians. No equivalence is judged (the paper implies no margin in epochs)."
    ),
}


# The factors (rdiunet.readings) that can change each claim's verdict: a reading of another factor
# judges the same runs the same way, so it is not judged again (nor counted in Holm's adjustment).
AFFECTS = {
    "accuracy": {"proposed", "baseline", "dataset", "checkpoint"},
    "speed": {"proposed", "baseline", "dataset", "precision", "protocol"},
    "stability": {"proposed", "baseline", "dataset", "curve"},
    "convergence": {"proposed", "baseline", "dataset", "curve"},
    "parameters": {"proposed", "baseline"},
}


def can_change(reading: Reading, claim: str, label: str | None = None) -> bool:
    """Whether `reading` can give another verdict on `claim` for its dataset `label` than the
    headline does: its factor matters to the claim, and a dataset variant only for the dataset
    it replaces."""
    if reading.factor == "headline":
        return True
    if reading.factor not in AFFECTS[claim]:
        return False
    return reading.factor != "dataset" or reading.stands_for.get(label, label) != label


@dataclass(frozen=True)
class Verdict:
    claim: str
    dataset: str  # a dataset label, or "all"
    verdict: str
    evidence: str
    reading: str = "headline"
    judgement: Judgement | None = None
    p_holm: float | None = None  # sensitivity readings only
    statement: str = ""  # the claim in words, for the models and dataset judged

    @property
    def primary(self) -> bool:
        return self.reading == "headline"


def no_judgement(claim: str, dataset: str, reading: str, verdict: str, evidence: str) -> Verdict:
    return Verdict(claim, dataset, verdict, evidence, reading)


def from_judgement(judgement: Judgement, dataset: str, reading: str) -> Verdict:
    return Verdict(judgement.claim, dataset, judgement.verdict, judgement.evidence(), reading, judgement)


def statement(study: Study, claim: str, proposed: str, baseline: str, dataset: str) -> str:
    """The claim in words: the paper's own where its models are compared on its datasets, else
    the compared labels' ("dsunet is more accurate than unet on mine")."""
    on = "" if dataset == "all" else f" on {dataset}"
    if study.is_papers_claim(proposed, baseline, None if dataset == "all" else dataset):
        return paper.CLAIMS[claim] + ("" if claim == "parameters" else f" ({dataset})")
    return {
        "accuracy": f"{proposed} is more accurate than {baseline} (Dice){on}",
        "speed": f"{proposed} is faster per image than {baseline}{on}",
        "parameters": f"{proposed} has fewer parameters than {baseline}",
        "stability": f"{proposed} trains more stably than {baseline}{on} (fewer validation-Dice drops "
        f"of more than {study.stability_drop:g})",
        "convergence": f"{proposed} reaches the Dice threshold in fewer epochs than {baseline}{on}",
    }[claim]


def paper_gain(study: Study, dataset: str, proposed: str, baseline: str) -> float | None:
    """The Dice gain the paper reports for this dataset's source, for the paper's own pair."""
    if not study.is_papers_claim(proposed, baseline, dataset):
        return None
    source = study.plan.source(dataset)
    return paper.TABLE1[(source, paper.PROPOSED)]["dice"] - paper.TABLE1[(source, paper.BASELINE)]["dice"]


def paper_convergence_ratio(study: Study, dataset: str, proposed: str, baseline: str) -> float | None:
    if not study.is_papers_claim(proposed, baseline, dataset):
        return None
    source = study.plan.source(dataset)
    return (
        paper.TABLE2[(source, paper.BASELINE)]["convergence"]
        / paper.TABLE2[(source, paper.PROPOSED)]["convergence"]
    )


def accuracy_scores(per_image: pd.DataFrame, dataset: str, models: tuple[str, str]) -> pd.DataFrame:
    """The engine's scores table from the collected per-image rows of one dataset."""
    rows = per_image[(per_image.dataset == dataset) & per_image.model.isin(models)]
    subject = rows["group"] if "group" in rows else rows["id"]
    table = pd.DataFrame(
        {
            "model": rows.model,
            "seed": rows.seed,
            "image": rows["id"].astype(str),
            "subject": subject.astype(str),
            "dice": rows.dice,
        }
    )
    # A cross-validated dataset: each score's test fold (the engine clusters by fold).
    if "fold" in rows and rows["fold"].notna().any():
        table["fold"] = rows["fold"]
    return table


def with_flagged(verdict: Verdict, judge, table: pd.DataFrame, flagged) -> Verdict:
    """A verdict over runs that include collapsed or diverged ones (rdiunet.report.findings), its
    evidence naming them and saying how the verdict reads without them."""
    if not flagged or verdict.judgement is None:
        return verdict
    names = "; ".join(f"seed {seed} of {model} {finding}" for model, seed, finding in flagged)
    try:
        without = judge(without_flagged(table, flagged))
        other = f"{without.verdict} (effect {without.effect:+.4g})"
    except UserError as error:
        other = f"no verdict ({error})"
    note = f"; flagged runs kept (failed_runs: keep): {names}; without them: {other}"
    return replace(verdict, evidence=verdict.evidence + note)


def accuracy(
    study: Study,
    dataset: str,
    per_image: pd.DataFrame,
    proposed: str,
    baseline: str,
    reading: str,
    findings: dict | None = None,
):
    scores = accuracy_scores(per_image, dataset, (proposed, baseline))
    missing = [m for m in (proposed, baseline) if not (scores.model == m).any()]
    if missing:
        return no_judgement(
            "accuracy",
            dataset,
            reading,
            INCONCLUSIVE,
            f"no valid run of {missing[0]} on {dataset} (see the runs left out)",
        )

    def judge(table: pd.DataFrame):
        margin, claimed = study.margins["accuracy"], paper_gain(study, dataset, proposed, baseline)
        return verdicts.judge_accuracy(table, proposed, baseline, margin=margin, claimed=claimed)

    try:
        judged = judge(scores)
    except UserError as error:
        return no_judgement("accuracy", dataset, reading, INCONCLUSIVE, str(error))
    flagged = flagged_in(findings or {}, dataset, (proposed, baseline))
    return with_flagged(from_judgement(judged, dataset, reading), judge, scores, flagged)


def curve_tables(
    curves: pd.DataFrame, dataset: str, models: tuple[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The drops and the convergence tables the engine takes, from Table 2's per-run curve table."""
    rows = curves[(curves.dataset == dataset) & curves.model.isin(models)]
    drops = pd.DataFrame(
        {"model": rows.model, "seed": rows.seed, "drops": rows.stability, "epochs": rows.epochs}
    )
    reached = pd.DataFrame(
        {"model": rows.model, "seed": rows.seed, "epoch": rows.convergence, "epochs": rows.epochs}
    )
    return drops, reached


def training_curves(
    claim: str,
    study: Study,
    dataset: str,
    curves: pd.DataFrame,
    pair: tuple[str, str],
    reading: str,
    findings: dict | None = None,
) -> Verdict:
    drops, reached = curve_tables(curves, dataset, pair)
    missing = [m for m in pair if not (drops.model == m).any()]
    if missing:
        return no_judgement(
            claim,
            dataset,
            reading,
            INCONCLUSIVE,
            f"no valid run of {missing[0]} on {dataset} (see the runs left out)",
        )
    if claim == "stability":
        table = drops

        def judge(runs):
            return verdicts.judge_stability(runs, *pair, margin=study.margins["stability"])
    else:
        table = reached

        def judge(runs):
            ratio = paper_convergence_ratio(study, dataset, *pair)
            return verdicts.judge_convergence(runs, *pair, claimed_ratio=ratio)

    flagged = flagged_in(findings or {}, dataset, pair)
    return with_flagged(from_judgement(judge(table), dataset, reading), judge, table, flagged)


def speed(
    collection: Collection,
    study: Study,
    dataset: str,
    pair: tuple[str, str],
    precision: str,
    protocol: str,
    reading: str,
) -> Verdict:
    """The speed claim by one protocol in one precision, from the interleaved sessions."""
    timings = collection.timings
    found = timings[
        (timings.dataset == dataset)
        & (timings.precision == precision)
        & (timings.protocol == protocol)
        & timings.model.isin(pair)
    ]
    if not all((found.model == m).any() for m in pair):
        return no_judgement(
            "speed",
            dataset,
            reading,
            INCONCLUSIVE,
            f"no timing sessions of both models on {dataset} (see the gaps)",
        )
    unmeasured = found[found.ms.isna()]
    if len(unmeasured):
        return no_judgement("speed", dataset, reading, NOT_MEASURED, str(unmeasured.reason.iloc[0]))
    kind, name = collection.speed_devices.get(dataset, ("cpu", "an unknown device"))
    papers = study.is_papers_claim(*pair, dataset)
    gain = SPEED_GAIN if papers else 0.0
    comparable = (
        None
        if kind == "cuda" or not papers
        else (f"timed on {name}, a {kind.upper()}; the paper's claim is about an {paper.HARDWARE} GPU")
    )
    table = found[["model", "session", "ms"]]
    judged = verdicts.judge_speed(table, *pair, claimed=gain, comparable=comparable)
    means = found.groupby("model").ms.mean()
    direction = "faster" if judged.effect > 0 else "slower"
    interval = "" if math.isnan(judged.low) else f" [{judged.low:+.0%}, {judged.high:+.0%}]"
    p = "" if judged.p is None else f", p = {judged.p:.3g} against {gain:.0%}"
    evidence = (
        f"{pair[0]} {means[pair[0]]:.2f} ms vs {pair[1]} {means[pair[1]]:.2f} ms per image ({protocol}, "
        f"{precision}, on {name}): speed-up {judged.effect:+.0%} ({direction}){interval}{p} over "
        f"{judged.counts['sessions']} interleaved sessions; claimed at least {gain:.0%}"
    )
    return Verdict("speed", dataset, judged.verdict, evidence, reading, judged)


def parameters(collection: Collection, study: Study, pair: tuple[str, str], reading: str) -> Verdict:
    benches = collection.benches
    found = [benches[benches.model == m] for m in pair]
    if any(f.empty for f in found):
        return no_judgement(
            "parameters", "all", reading, INCONCLUSIVE, "no bench.json of one of the models could be read"
        )
    counts = [int(f.iloc[0].params) for f in found]
    claimed = FEWER_PARAMETERS if study.is_papers_claim(*pair) else 0.0
    judged = verdicts.judge_parameters(*counts, claimed=claimed)
    evidence = f"{pair[0]} {counts[0]:,} vs {pair[1]} {counts[1]:,} parameters: {judged.effect:.1%} fewer"
    return Verdict("parameters", "all", judged.verdict, evidence, reading, judged)


def judge(collection: Collection, study: Study, reading: Reading) -> list[Verdict]:
    """Every claim the reading can change, per dataset (parameters once). The reading picks the
    runs' checkpoint (accuracy), the Dice curve (stability, convergence), and the precision and
    protocol (speed)."""
    pair = (reading.proposed, reading.baseline)
    per_image = collection.per_image[collection.per_image.checkpoint == reading.checkpoint]
    curves = curve_table(collection.histories, study, reading.curve)
    found = []
    for dataset in reading.datasets:
        if can_change(reading, "accuracy", dataset):
            found.append(accuracy(study, dataset, per_image, *pair, reading.name, collection.findings))
        if can_change(reading, "speed", dataset):
            found.append(
                speed(collection, study, dataset, pair, reading.precision, reading.protocol, reading.name)
            )
        for claim in ("stability", "convergence"):
            if can_change(reading, claim, dataset):
                found.append(
                    training_curves(claim, study, dataset, curves, pair, reading.name, collection.findings)
                )
    if can_change(reading, "parameters"):
        found.append(parameters(collection, study, pair, reading.name))
    return [replace(v, statement=statement(study, v.claim, *pair, v.dataset)) for v in found]


def with_holm(found: list[Verdict]) -> list[Verdict]:
    """The sensitivity verdicts with Holm-adjusted p-values over all of them; the primary ones as
    they are."""
    tested = [i for i, v in enumerate(found) if not v.primary and v.judgement and v.judgement.p is not None]
    if not tested:
        return found
    adjusted = multipletests([found[i].judgement.p for i in tested], alpha=ALPHA, method="holm")[1]
    result = list(found)
    for i, p in zip(tested, adjusted, strict=True):
        result[i] = replace(found[i], p_holm=float(p))
    return result


def evaluate_claims(collection: Collection, study: Study) -> list[Verdict]:
    """The verdicts of every reading, the headline's (primary) first."""
    return with_holm([v for reading in study.plan.readings for v in judge(collection, study, reading)])


REPORTED = {
    verdicts.REPRODUCED: "reproduced",
    verdicts.CONTRADICTED: "not reproduced (contradicted)",
    verdicts.EQUIVALENT: "not reproduced (equivalent: no difference of the size that matters)",
}


def reported_as(verdict: Verdict) -> str:
    """The verdict in the report's words: "not reproduced" covers contradicted and equivalent,
    and says which; an inconclusive one says why."""
    if verdict.verdict in REPORTED:
        return REPORTED[verdict.verdict]
    reason = verdict.judgement.reason if verdict.judgement else None
    return f"{verdict.verdict} ({reason})" if reason and verdict.verdict == INCONCLUSIVE else verdict.verdict


def number(value) -> float:
    return math.nan if value is None else float(value)


def claims_frame(found: list[Verdict], synthetic: bool = False) -> pd.DataFrame:
    rows = []
    for v in found:
        j = v.judgement
        rows.append(
            {
                "reading": v.reading,
                "primary": v.primary,
                "claim": v.claim,
                "statement": v.statement or paper.CLAIMS[v.claim],
                "dataset": v.dataset,
                "verdict": v.verdict,
                "reported_as": reported_as(v),
                "reason": j.reason if j else None,
                "effect": number(j.effect) if j else math.nan,
                "unit": j.unit if j else None,
                "low": number(j.low) if j else math.nan,
                "high": number(j.high) if j else math.nan,
                "p": number(j.p) if j else math.nan,
                "p_holm": number(v.p_holm),
                "holm_significant": None if v.p_holm is None else v.p_holm < ALPHA,
                "power": number(j.power) if j else math.nan,
                "seeds_needed": j.seeds_needed if j else None,
                "margin": number(j.margin) if j else math.nan,
                "claimed": number(j.claimed) if j else math.nan,
                "evidence": v.evidence,
                "rule": RULES[v.claim],
                "synthetic": synthetic,
            }
        )
    return pd.DataFrame(rows)
