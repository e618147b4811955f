"""The decision rules' own test: simulated studies with a known truth, judged by the same
`judge_*` functions the report uses, and the rate of each verdict per scenario.

Accuracy studies draw per-image Dice as

    dice = mean + effect [proposed] + subject + image + model x subject + model x seed + noise

clipped to [0, 1]: subjects differ (and differ in how much each model suits them), images within
a subject differ, each training seed gives a run that is better or worse overall, and each run
errs differently on each image. The magnitudes (SPREADS) are of the size seen in segmentation
studies: run-to-run SD of the mean Dice about 0.01, subject-to-subject SD of a model difference
about 0.02. With `effect` 0 every decisive verdict but `equivalent` is an error.

Stability studies draw each run's validation-Dice drops from a negative binomial (runs of one
model differ more than a Poisson allows), with the same mean for both models under no effect.
Convergence studies draw each run's epochs to the threshold from an exponential, censored at the
run's length.

`rdiunet calibrate --out FILE` writes the table (docs/report.md shows it); the tests run a few
hundred studies of the cases that matter with a fixed seed.
"""

import math
import sys
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from rdiunet import verdicts
from rdiunet.fileio import atomic_path

SPREADS = {
    "subject": 0.08,  # subject-to-subject, shared by both models
    "image": 0.10,  # image-to-image within a subject
    "model_subject": 0.02,  # how much more one model suits one subject
    "seed": 0.01,  # run-to-run: the mean Dice of one seed's model
    "noise": 0.05,  # each run's error on each image
}
MEAN_DICE = 0.75
IMAGES_PER_SUBJECT = 6
PAPER_EFFECT = 0.010  # the paper's smallest Dice gain (nerve)
SEEDS = (3, 5, 10, 20)
SUBJECTS = (5, 20, 60)


def simulate_scores(
    rng: np.random.Generator,
    effect: float,
    seeds: int,
    subjects: int,
    spreads: dict = SPREADS,
    folds: int | None = None,
) -> pd.DataFrame:
    """One accuracy study: per-image Dice of models "proposed" and "baseline". Every seed tests
    every image; with `folds`, a cross-validated study: subjects dealt to the folds, and seed s of
    each model is a run that tests fold s mod folds (its own run effect on every image there)."""
    images = subjects * IMAGES_PER_SUBJECT
    subject_of = np.repeat(np.arange(subjects), IMAGES_PER_SUBJECT)
    fold_of = rng.permutation(subjects)[subject_of] % folds if folds else None
    base = (
        MEAN_DICE
        + rng.normal(0, spreads["subject"], subjects)[subject_of]
        + rng.normal(0, spreads["image"], images)
    )
    frames = []
    for model, shift in (("proposed", effect), ("baseline", 0.0)):
        suits = rng.normal(0, spreads["model_subject"], subjects)[subject_of]
        for seed in range(seeds):
            tested = np.arange(images) if fold_of is None else np.flatnonzero(fold_of == seed % folds)
            dice = base[tested] + shift + suits[tested] + rng.normal(0, spreads["seed"])
            dice = dice + rng.normal(0, spreads["noise"], len(tested))
            frame = {"model": model, "seed": seed, "image": tested, "subject": subject_of[tested]}
            frame |= {"fold": seed % folds} if folds else {}
            frames.append(pd.DataFrame({**frame, "dice": np.clip(dice, 0, 1)}))
    return pd.concat(frames, ignore_index=True)


def image_bootstrap_interval(scores: pd.DataFrame, rng: np.random.Generator, resamples: int = 2000):
    """The interval the rule must not use: a percentile bootstrap over images of the per-image
    differences (each averaged over seeds), blind to seeds and subjects. For the calibration's
    demonstration that it is too narrow."""
    per_image = scores.groupby(["model", "image"]).dice.mean().unstack("model")
    differences = (per_image["proposed"] - per_image["baseline"]).to_numpy()
    means = differences[rng.integers(0, len(differences), (resamples, len(differences)))].mean(1)
    return np.quantile(means, [0.025, 0.975])


@dataclass(frozen=True)
class Scenario:
    claim: str
    truth: str  # "no effect", "margin", "paper"
    effect: float
    seeds: int
    subjects: int | None  # accuracy only


TRUTHS = (("no effect", 0.0), ("margin", verdicts.MARGINS["accuracy"]), ("paper", PAPER_EFFECT))
CV_FOLDS = 5
CV_SEEDS = (5, 10)  # every fold tested once, twice
CV_SUBJECTS = (20, 47)  # 47: the nerve set's subjects


def accuracy_scenarios(seeds=SEEDS, subjects=SUBJECTS) -> list[Scenario]:
    return [
        Scenario("accuracy", truth, effect, n, j)
        for (truth, effect), n, j in product(TRUTHS, seeds, subjects)
    ]


def cross_validation_scenarios(seeds=CV_SEEDS, subjects=CV_SUBJECTS) -> list[Scenario]:
    return [
        Scenario("accuracy (5-fold CV)", truth, effect, n, j)
        for (truth, effect), n, j in product(TRUTHS, seeds, subjects)
    ]


def run_accuracy(scenario: Scenario, studies: int, seed: int = 0, method: str = "rule") -> dict:
    """Verdict rates and the interval's coverage of the true effect over `studies` studies.
    `method` "image_bootstrap" swaps the rule's interval for the image-level bootstrap (to show
    what an anti-conservative rule looks like); "rule" is the engine as the report uses it."""
    rng = np.random.default_rng(seed)
    tally = dict.fromkeys(verdicts.VERDICTS[:4], 0)
    covered = 0
    cross_validated = scenario.claim != "accuracy"
    for _ in range(studies):
        if cross_validated:
            scores = simulate_scores(rng, scenario.effect, scenario.seeds, scenario.subjects, folds=CV_FOLDS)
        else:
            scores = simulate_scores(rng, scenario.effect, scenario.seeds, scenario.subjects)
        if method == "image_bootstrap":
            low, high = image_bootstrap_interval(scores, rng)
            verdict = (
                verdicts.REPRODUCED
                if low > 0
                else verdicts.CONTRADICTED
                if high < 0
                else verdicts.INCONCLUSIVE
            )
        else:
            judged = verdicts.judge_accuracy(scores, "proposed", "baseline")
            verdict, low, high = judged.verdict, judged.low, judged.high
        tally[verdict] += 1
        covered += bool(low <= scenario.effect <= high)
    return {**{k: v / studies for k, v in tally.items()}, "coverage": covered / studies}


# --- stability ------------------------------------------------------------------------------------

STABILITY_EPOCHS = 100
STABILITY_MEAN = 3.0  # drops per run of 100 epochs
STABILITY_DISPERSION = 2.0  # negative binomial size: smaller is more run-to-run spread


def simulate_drops(rng: np.random.Generator, ratio: float, seeds: int) -> pd.DataFrame:
    """One stability study: drops per run, the proposed model's mean `ratio` times the baseline's."""
    rows = []
    for model, mean in (("proposed", STABILITY_MEAN * ratio), ("baseline", STABILITY_MEAN)):
        if mean == 0:
            drops = np.zeros(seeds, int)
        else:
            size = STABILITY_DISPERSION
            drops = rng.negative_binomial(size, size / (size + mean), seeds)
        rows += [
            {"model": model, "seed": s, "drops": int(d), "epochs": STABILITY_EPOCHS}
            for s, d in enumerate(drops)
        ]
    return pd.DataFrame(rows)


def stability_scenarios(seeds=SEEDS) -> list[Scenario]:
    truths = (("no effect", 1.0), ("no drops in either", 0.0), ("paper", 0.0 + 1 / 3))
    return [Scenario("stability", truth, ratio, n, None) for (truth, ratio), n in product(truths, seeds)]


def run_stability(scenario: Scenario, studies: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tally = dict.fromkeys(verdicts.VERDICTS[:4], 0)
    for _ in range(studies):
        if scenario.truth == "no drops in either":
            drops = simulate_drops(rng, 1.0, scenario.seeds).assign(drops=0)
        else:
            drops = simulate_drops(rng, scenario.effect, scenario.seeds)
        tally[verdicts.judge_stability(drops, "proposed", "baseline").verdict] += 1
    return {k: v / studies for k, v in tally.items()}


# --- convergence ----------------------------------------------------------------------------------

CONVERGENCE_EPOCHS = 100
CONVERGENCE_MEDIAN = 40.0  # epochs until the threshold, the baseline's median


def simulate_convergence(rng: np.random.Generator, ratio: float, seeds: int) -> pd.DataFrame:
    """One convergence study: each run reaches the threshold after an exponential number of epochs
    (the proposed model's median `ratio` times the baseline's), censored at CONVERGENCE_EPOCHS."""
    rows = []
    for model, median in (("proposed", CONVERGENCE_MEDIAN * ratio), ("baseline", CONVERGENCE_MEDIAN)):
        times = np.ceil(rng.exponential(median / math.log(2), seeds))
        for s, t in enumerate(times):
            reached = t <= CONVERGENCE_EPOCHS
            rows.append(
                {
                    "model": model,
                    "seed": s,
                    "epoch": int(t) if reached else None,
                    "epochs": CONVERGENCE_EPOCHS,
                }
            )
    return pd.DataFrame(rows)


def convergence_scenarios(seeds=SEEDS) -> list[Scenario]:
    truths = (("no effect", 1.0), ("paper", 17 / 36))  # the paper's nerve medians: 17 against 36 epochs
    return [Scenario("convergence", truth, ratio, n, None) for (truth, ratio), n in product(truths, seeds)]


def run_convergence(scenario: Scenario, studies: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tally = dict.fromkeys(verdicts.VERDICTS[:4], 0)
    for _ in range(studies):
        runs = simulate_convergence(rng, scenario.effect, scenario.seeds)
        tally[verdicts.judge_convergence(runs, "proposed", "baseline").verdict] += 1
    return {k: v / studies for k, v in tally.items()}


def calibrate(
    studies: int = 200, seed: int = 0, seeds=SEEDS, subjects=SUBJECTS, progress=None
) -> pd.DataFrame:
    """The table: every scenario of the three claims with statistics (and the image-level
    bootstrap's accuracy rows beside the rule's, for contrast). `seeds` and `subjects` are the
    held-out designs; the cross-validated ones are fixed (CV_SEEDS, CV_SUBJECTS: whole rounds of
    the folds)."""
    jobs = [
        (s, method) for s in accuracy_scenarios(seeds, subjects) for method in ("rule", "image_bootstrap")
    ]
    jobs += [(s, "rule") for s in cross_validation_scenarios()]
    jobs += [(s, "rule") for s in stability_scenarios(seeds) + convergence_scenarios(seeds)]
    runners = {"stability": run_stability, "convergence": run_convergence}
    rows = []
    for done, (scenario, method) in enumerate(jobs, start=1):
        if scenario.claim.startswith("accuracy"):
            rates = run_accuracy(scenario, studies, seed, method)
        else:
            rates = {**runners[scenario.claim](scenario, studies, seed), "coverage": math.nan}
        rows.append({**scenario.__dict__, "method": method, "studies": studies, **rates})
        if progress:
            progress(done, len(jobs))
    return pd.DataFrame(rows)


def calibrate_command(out: Path, studies: int, seed: int, seeds=SEEDS, subjects=SUBJECTS) -> None:
    """`rdiunet calibrate`: the table as CSV, and printed as docs/report.md shows it."""

    def progress(done: int, total: int) -> None:
        print(f"calibrate: {done}/{total} scenarios", file=sys.stderr, flush=True)

    table = calibrate(studies, seed, seeds, subjects, progress)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    print(summary_markdown(table))
    print(f"\nwritten: {out}")


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def summary_markdown(table: pd.DataFrame) -> str:
    """The table as docs/report.md shows it: per design, each rule's error rates with no effect,
    its interval's coverage, the image-level bootstrap's for contrast, and how often the paper's
    effect is found."""
    rows = table.set_index(["claim", "truth", "method", "seeds", "subjects"], drop=False)
    lines = [
        "| design | seeds | subjects | no effect: reproduced | contradicted | coverage "
        "| image bootstrap: wrong | coverage | paper's +0.010: reproduced |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    accuracy = table[table.claim.str.startswith("accuracy")]
    designs = accuracy[["claim", "seeds", "subjects"]].drop_duplicates().itertuples(index=False)
    for claim, seeds, subjects in designs:
        rule = rows.loc[(claim, "no effect", "rule", seeds, subjects)]
        paper = rows.loc[(claim, "paper", "rule", seeds, subjects)]
        key = (claim, "no effect", "image_bootstrap", seeds, subjects)
        if key in rows.index:
            boot = rows.loc[key]
            contrast = f"{percent(boot.reproduced + boot.contradicted)} | {percent(boot.coverage)}"
        else:
            contrast = "– | –"
        name = "held-out test" if claim == "accuracy" else claim.removeprefix("accuracy (").removesuffix(")")
        errors = f"{percent(rule.reproduced)} | {percent(rule.contradicted)} | {percent(rule.coverage)}"
        lines.append(
            f"| {name} | {seeds} | {int(subjects)} | {errors} | {contrast} | {percent(paper.reproduced)} |"
        )
    lines += [
        "",
        "| claim: seeds per model | no effect: reproduced | contradicted | no drops in either: equivalent "
        "| paper's effect: reproduced |",
        "|---|---|---|---|---|",
    ]
    for claim in ("stability", "convergence"):
        mine = table[table.claim == claim]
        for seeds in mine.seeds.unique():
            null = mine[(mine.truth == "no effect") & (mine.seeds == seeds)].iloc[0]
            paper = mine[(mine.truth == "paper") & (mine.seeds == seeds)].iloc[0]
            zero = mine[(mine.truth == "no drops in either") & (mine.seeds == seeds)]
            equivalent = percent(zero.iloc[0].equivalent) if len(zero) else "–"
            errors = f"{percent(null.reproduced)} | {percent(null.contradicted)}"
            lines.append(f"| {claim}: {seeds} | {errors} | {equivalent} | {percent(paper.reproduced)} |")
    return "\n".join(lines)
