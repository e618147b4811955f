"""The verdict engine (rdiunet.verdicts) on constructed cases, its calibration on simulated
studies with a known truth, and `rdiunet judge` / `rdiunet calibrate`."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import assert_one_line_error, run_cli
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from rdiunet import calibration, verdicts
from rdiunet.calibration import Scenario, simulate_scores
from rdiunet.errors import UserError
from rdiunet.verdicts import (
    CONTRADICTED,
    EQUIVALENT,
    INCONCLUSIVE,
    NOT_COMPARABLE,
    REPRODUCED,
    TOO_FEW_SEEDS,
    TOO_FEW_SUBJECTS,
    UNDERPOWERED,
)

QUIET = {"subject": 0.08, "image": 0.10, "model_subject": 0.002, "seed": 0.001, "noise": 0.01}


def scores(effect, seeds=5, subjects=20, spreads=calibration.SPREADS, seed=0):
    return simulate_scores(np.random.default_rng(seed), effect, seeds, subjects, spreads)


# --- accuracy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "effect, spreads, expected",
    [
        (0.05, calibration.SPREADS, REPRODUCED),
        (-0.05, calibration.SPREADS, CONTRADICTED),
        (0.0, QUIET, EQUIVALENT),  # a tight interval around 0: no gain of the size that matters
        (0.0, calibration.SPREADS, INCONCLUSIVE),
    ],
)
def test_accuracy_verdicts_on_constructed_studies(effect, spreads, expected):
    judged = verdicts.judge_accuracy(scores(effect, 10, 60, spreads), "proposed", "baseline")
    assert judged.verdict == expected, judged.evidence()
    assert judged.low <= judged.effect <= judged.high
    if expected == INCONCLUSIVE:
        assert judged.reason == UNDERPOWERED and 0 < judged.power < verdicts.POWER_TARGET
        assert judged.seeds_needed is None or judged.seeds_needed > 10


def test_the_interval_counts_seeds_and_subjects_not_images():
    # The same study with more images per subject: images within a subject are not new evidence.
    few = verdicts.judge_accuracy(scores(0.01), "proposed", "baseline")
    spreads_without_seeds = {**calibration.SPREADS, "seed": 0.0}
    no_seed = verdicts.judge_accuracy(scores(0.01, spreads=spreads_without_seeds), "proposed", "baseline")
    assert few.high - few.low > no_seed.high - no_seed.low  # seed-to-seed spread widens it
    # One image per subject and one seed per model cannot make an interval.
    table = scores(0.01, seeds=1)
    assert verdicts.judge_accuracy(table, "proposed", "baseline").reason == TOO_FEW_SEEDS
    table = scores(0.01, subjects=2)
    assert verdicts.judge_accuracy(table, "proposed", "baseline").reason == TOO_FEW_SUBJECTS


def test_seeds_are_not_paired_and_models_may_have_different_seeds():
    table = scores(0.05, seeds=6)
    fewer = table[~((table.model == "baseline") & (table.seed >= 4))]
    judged = verdicts.judge_accuracy(fewer, "proposed", "baseline")
    assert judged.counts["seeds of proposed"] == 6 and judged.counts["seeds of baseline"] == 4
    assert judged.verdict == REPRODUCED


def test_power_with_the_seed_spread_alone_is_statsmodels_two_sample_t_power():
    parts = verdicts.AccuracyParts(0.0, {"a": 0.01**2, "b": 0.01**2}, {"a": 5, "b": 5}, 0.0, 10, 50)
    se, df = parts.se_and_df()
    assert df == pytest.approx(8)
    expected = TTestIndPower().power(0.015 / 0.01, nobs1=5, alpha=0.05)
    assert verdicts.power_of(0.015, se, df) == pytest.approx(expected, abs=2e-3)
    # The subjects' spread does not shrink with seeds: past a point, more seeds cannot help.
    wide = verdicts.AccuracyParts(0.0, {"a": 1e-4, "b": 1e-4}, {"a": 5, "b": 5}, 0.01**2, 5, 50)
    assert verdicts.seeds_needed(wide, 0.005) is None
    assert verdicts.seeds_needed(parts, 0.015) == next(
        n for n in range(2, 100) if TTestIndPower().power(1.5, nobs1=n, alpha=0.05) >= 0.8
    )


def test_bad_scores_are_one_line_errors():
    table = scores(0.01)
    with pytest.raises(UserError, match="lack the column"):
        verdicts.judge_accuracy(table.drop(columns="subject"), "proposed", "baseline")
    with pytest.raises(UserError, match="no scores of model 'vnet'"):
        verdicts.judge_accuracy(table, "vnet", "baseline")
    with pytest.raises(UserError, match=r"every dice value must be a number in \[0, 1\]"):
        verdicts.judge_accuracy(table.assign(dice=table.dice * 2), "proposed", "baseline")


# --- stability, convergence, speed, parameters ----------------------------------------------------


def per_run(column, proposed, baseline, epochs):
    """One row per run of both models: `column`'s value and the run's length."""
    rows = [
        {"model": m, "seed": s, column: v, "epochs": epochs}
        for m, values in (("proposed", proposed), ("baseline", baseline))
        for s, v in enumerate(values)
    ]
    return pd.DataFrame(rows)


def drops(proposed, baseline, epochs=100):
    return per_run("drops", proposed, baseline, epochs)


def test_stability_ties_count_and_no_drops_in_either_is_no_difference():
    # The old rule: ties dropped by the Wilcoxon, and 0 vs 0 "not reproduced".
    judged = verdicts.judge_stability(drops([0, 0, 0, 0, 0], [3, 2, 4, 0, 1]), "proposed", "baseline")
    assert judged.verdict == REPRODUCED and judged.effect == pytest.approx(-2.0)
    assert judged.p == pytest.approx(12 / 252)  # exact: 6 of 252 splits as extreme, both ways
    assert (
        verdicts.judge_stability(drops([3, 2, 4, 0, 1], [0] * 5), "proposed", "baseline").verdict
        == CONTRADICTED
    )
    same = verdicts.judge_stability(drops([0] * 5, [0] * 5), "proposed", "baseline")
    assert same.verdict == EQUIVALENT and same.effect == 0
    few = verdicts.judge_stability(drops([0], [5]), "proposed", "baseline")
    assert few.verdict == INCONCLUSIVE and few.reason == TOO_FEW_SEEDS


def test_stability_p_value_is_scipys_permutation_test():
    proposed, baseline = np.array([1.0, 0, 2, 1, 0, 3]), np.array([2.0, 4, 1, 3, 5, 2])
    expected = stats.permutation_test(
        (proposed, baseline),
        lambda a, b: a.mean() - b.mean(),
        permutation_type="independent",
        n_resamples=np.inf,
    ).pvalue
    assert verdicts.permutation_p(proposed, baseline) == pytest.approx(expected)


def reached(proposed, baseline, epochs=50):
    return per_run("epoch", proposed, baseline, epochs)


def test_convergence_is_time_to_event_with_censoring():
    # A run that never converges is censored at its length, not given "epochs + 1".
    runs = reached([17, 20, 18, 19, 25], [36, None, 40, 38, 41])
    judged = verdicts.judge_convergence(runs, "proposed", "baseline", claimed_ratio=36 / 17)
    assert judged.verdict == REPRODUCED and judged.effect == pytest.approx(19 - 40)
    assert judged.power is not None and judged.p < 0.05
    never = verdicts.judge_convergence(reached([None] * 3, [None] * 3), "proposed", "baseline")
    assert never.verdict == INCONCLUSIVE
    assert verdicts.km_median(np.array([2.0, 4.0]), np.array([True, False])) == 2


def test_the_log_rank_statistic_is_scipys():
    rng = np.random.default_rng(3)
    times = np.minimum(np.ceil(rng.exponential(40, 14)), 60)
    events = times < 60
    first = np.arange(14) < 7
    samples = [
        stats.CensoredData(uncensored=times[g & events], right=times[g & ~events]) for g in (first, ~first)
    ]
    assert verdicts.logrank_z(times, events, first)[0] == pytest.approx(stats.logrank(*samples).statistic)


def sessions(ratio, count=5, jitter=0.01, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for session in range(count):
        machine = 1 + rng.normal(0, 0.05)  # the same state of the machine for both models
        base = 30 * machine
        rows.append({"model": "baseline", "session": session, "ms": base})
        rows.append(
            {"model": "proposed", "session": session, "ms": base * ratio * (1 + rng.normal(0, jitter))}
        )
    return pd.DataFrame(rows)


def test_speed_has_an_interval_and_a_cpu_timing_is_not_comparable():
    faster = verdicts.judge_speed(sessions(0.7), "proposed", "baseline", claimed=0.20)
    assert faster.verdict == REPRODUCED and faster.low > 0.2 and faster.effect == pytest.approx(0.3, abs=0.02)
    assert verdicts.judge_speed(sessions(0.9), "proposed", "baseline", claimed=0.20).verdict == CONTRADICTED
    # 22% faster with the paper's spread of sessions: the interval straddles 20%.
    close = verdicts.judge_speed(sessions(0.78, jitter=0.05), "proposed", "baseline", claimed=0.20)
    assert close.verdict == INCONCLUSIVE and close.low < 0.2 < close.high
    cpu = verdicts.judge_speed(
        sessions(0.7), "proposed", "baseline", claimed=0.2, comparable="timed on a CPU"
    )
    assert cpu.verdict == NOT_COMPARABLE and cpu.reason == "timed on a CPU" and cpu.low > 0.2
    one = verdicts.judge_speed(sessions(0.7, count=1), "proposed", "baseline", claimed=0.2)
    assert one.verdict == INCONCLUSIVE and one.reason == "too few sessions"


def test_parameters_are_a_count():
    assert verdicts.judge_parameters(5_850_241, 15_326_529, 0.60).verdict == REPRODUCED  # 61.8% fewer
    assert verdicts.judge_parameters(7_000_000, 15_326_529, 0.60).verdict == CONTRADICTED


# --- calibration: the rules' error rates on simulated studies with a known truth ------------------

# Monte Carlo error: with 5% true and 300 studies, the standard error is 1.3 points.
ERROR_LIMIT = 0.05 + 2 * math.sqrt(0.05 * 0.95 / 300)


def test_accuracy_rule_without_an_effect_errs_at_most_about_five_percent():
    # The paper's 5 seeds and 20 test subjects. Leaving either source of variance out of the
    # interval (seeds or subjects) puts the coverage near 85% here and fails this test.
    rates = calibration.run_accuracy(Scenario("accuracy", "no effect", 0.0, 5, 20), studies=300, seed=11)
    assert rates["reproduced"] <= ERROR_LIMIT and rates["contradicted"] <= ERROR_LIMIT
    assert 0.92 <= rates["coverage"] <= 0.995


@pytest.mark.slow  # a few hundred simulated studies each
@pytest.mark.parametrize("seeds, subjects", [(3, 5), (3, 20), (10, 60)])
def test_accuracy_rule_calibration(seeds, subjects):
    rates = calibration.run_accuracy(
        Scenario("accuracy", "no effect", 0.0, seeds, subjects), studies=300, seed=12
    )
    assert rates["reproduced"] <= ERROR_LIMIT and rates["contradicted"] <= ERROR_LIMIT
    assert 0.92 <= rates["coverage"] <= 0.995


def test_the_calibration_catches_an_anti_conservative_interval():
    # The interval the rule must not use (images resampled, seeds and subjects ignored): the same
    # harness puts its errors far above 5%, so a rule made anti-conservative fails the tests above.
    scenario = Scenario("accuracy", "no effect", 0.0, 5, 20)
    rates = calibration.run_accuracy(scenario, studies=100, seed=13, method="image_bootstrap")
    assert rates["reproduced"] + rates["contradicted"] > 0.2 and rates["coverage"] < 0.8


@pytest.mark.slow  # a few hundred simulated studies each
@pytest.mark.parametrize("seeds", [5, 10])
def test_stability_and_convergence_rules_calibration(seeds):
    for run, claim in (
        (calibration.run_stability, "stability"),
        (calibration.run_convergence, "convergence"),
    ):
        rates = run(Scenario(claim, "no effect", 1.0, seeds, None), studies=300, seed=14)
        assert rates["reproduced"] <= ERROR_LIMIT and rates["contradicted"] <= ERROR_LIMIT, (claim, rates)
    zero = calibration.run_stability(Scenario("stability", "no drops in either", 0.0, seeds, None), 20, 15)
    assert zero["equivalent"] == 1.0


def test_the_paper_effect_is_found_more_often_with_more_seeds():
    few = calibration.run_accuracy(Scenario("accuracy", "paper", 0.01, 3, 20), studies=60, seed=16)
    many = calibration.run_accuracy(Scenario("accuracy", "paper", 0.01, 20, 20), studies=60, seed=16)
    assert many["reproduced"] > few["reproduced"] and many["contradicted"] == 0


# --- the commands ---------------------------------------------------------------------------------


def test_judge_command_on_any_scores_csv(tmp_path):
    path = tmp_path / "scores.csv"
    scores(0.05, seeds=5).replace({"proposed": "mynet", "baseline": "nnunet"}).to_csv(path, index=False)
    result = run_cli("judge", path, "--proposed", "mynet", "--baseline", "nnunet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mynet more accurate than nnunet: reproduced")
    result = run_cli(
        "judge", path, "--proposed", "mynet", "--baseline", "nnunet", "--json", "--claimed", "0.01"
    )
    judged = json.loads(result.stdout)
    assert judged["verdict"] == "reproduced" and judged["low"] > 0 and judged["claimed"] == 0.01
    assert {"effect", "high", "power", "seeds_needed", "reason", "margin"} <= set(judged)


def test_judge_command_errors_are_one_line(tmp_path):
    path = tmp_path / "scores.csv"
    scores(0.05).drop(columns="subject").to_csv(path, index=False)
    assert_one_line_error(
        run_cli("judge", path, "--proposed", "proposed", "--baseline", "baseline"), "subject"
    )
    assert_one_line_error(
        run_cli("judge", tmp_path / "none.csv", "--proposed", "a", "--baseline", "b"),
        "cannot read the scores CSV",
    )


def test_calibrate_command_writes_the_table(tmp_path):
    out = tmp_path / "calibration.csv"
    result = run_cli("calibrate", "--out", out, "--studies", "10", "--seeds", "3", "--subjects", "5")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert set(table.claim) == {"accuracy", "accuracy (5-fold CV)", "stability", "convergence"}
    assert set(table.method) == {"rule", "image_bootstrap"}
    rates = table[list(verdicts.VERDICTS[:4])].sum(axis=1)
    assert np.allclose(rates, 1.0)
    assert "| design | seeds | subjects | no effect: reproduced |" in result.stdout
    assert "| 5-fold CV | 5 | 47 |" in result.stdout
    assert_one_line_error(run_cli("calibrate", "--out", out, "--seeds", "1"), "--seeds takes integers")


# --- multiplicity -----------------------------------------------------------------------------------


def test_sensitivity_readings_get_holm_adjusted_p_values_and_the_primary_does_not():
    from rdiunet.report.claims import Verdict, with_holm

    def judged(p):
        return verdicts.Judgement(
            "accuracy", REPRODUCED, None, 0.1, 0.0, 0.2, p, None, None, 0.005, None, "Dice", "t"
        )

    found = [Verdict("accuracy", "d", REPRODUCED, "", "headline", judged(0.01))]
    found += [
        Verdict("accuracy", "d", REPRODUCED, "", f"r{i}", judged(p)) for i, p in enumerate((0.01, 0.02, 0.04))
    ]
    adjusted = with_holm(found)
    assert adjusted[0].p_holm is None
    expected = multipletests([0.01, 0.02, 0.04], method="holm")[1]
    assert [v.p_holm for v in adjusted[1:]] == pytest.approx(list(expected))


# --- cross-validated studies: folds are the clusters ---------------------------------------------


def cv_scores(effect, seeds=5, subjects=47, seed=0):
    return simulate_scores(np.random.default_rng(seed), effect, seeds, subjects, folds=5)


def test_a_cross_validated_study_is_judged_over_all_subjects_with_folds_as_clusters():
    table = cv_scores(0.05, seeds=10)
    assert table.groupby("image").seed.nunique().max() == 2  # each image scored by its fold's 2 seeds
    judged = verdicts.judge_accuracy(table, "proposed", "baseline", claimed=0.01)
    assert judged.verdict == REPRODUCED and "cross-validation" in judged.method
    assert judged.counts["folds"] == 5 and judged.counts["subjects"] == 47
    assert judged.seeds_needed is None or judged.seeds_needed % 5 == 0  # whole rounds of the folds
    few = verdicts.judge_accuracy(cv_scores(0.05, seeds=2), "proposed", "baseline")
    assert few.verdict == INCONCLUSIVE and few.reason == TOO_FEW_SEEDS  # two folds tested
    leaking = table.assign(fold=np.where(table.seed == 0, 4, table.fold))
    with pytest.raises(UserError, match="an image is scored in two folds"):
        verdicts.judge_accuracy(leaking, "proposed", "baseline")


def test_cross_validation_rule_calibration_and_what_ignoring_the_folds_would_do(monkeypatch):
    scenario = Scenario("accuracy (5-fold CV)", "no effect", 0.0, 5, 47)
    rates = calibration.run_accuracy(scenario, studies=200, seed=21)
    limit = 0.05 + 2 * math.sqrt(0.05 * 0.95 / 200)
    assert rates["reproduced"] <= limit and rates["contradicted"] <= limit and rates["coverage"] >= 0.92
    # Subjects as the clusters, as if each fold's images did not share their runs: too narrow.
    monkeypatch.setattr(
        verdicts.FoldParts, "se_and_df", lambda self, repeats=None: (math.sqrt(self.subject_variance), 46)
    )
    naive = calibration.run_accuracy(scenario, studies=200, seed=21)
    assert naive["coverage"] < 0.88
