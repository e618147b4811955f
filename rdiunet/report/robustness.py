"""The robustness matrix: every claim judged under every reading, and which verdicts hold under all.

Rows are readings (the headline, the primary analysis, first; each other row, a sensitivity
analysis, changes one choice); columns are the claims per headline dataset (parameters once). A
reading that cannot change a claim (a benchmark precision for accuracy, a Dice curve for speed, a
dataset variant for another dataset's column) shows "same runs" rather than a verdict. Below the
rows, one line per column: "robust (verdict)" when the headline's verdict is decisive and every
reading that can change the claim gives the same; "not settled (...)" when the headline's is not
decisive (inconclusive is never robust); else "depends on: ..." naming the readings that differ
(a reading the device could not measure is not counted either way).
"""

import pandas as pd

from rdiunet.readings import Plan
from rdiunet.verdicts import ALPHA, CONTRADICTED, DECISIVE, NOT_COMPARABLE, NOT_MEASURED, REPRODUCED

from .claims import PER_DATASET, Verdict, can_change

SAME_RUNS = "same runs"


def column_name(claim: str, dataset: str | None) -> str:
    return claim if dataset is None else f"{claim}: {dataset}"


def claim_columns(plan: Plan) -> list[str]:
    datasets = plan.headline.datasets
    return [column_name(c, d) for c in PER_DATASET for d in datasets] + ["parameters"]


def cell(verdict: Verdict) -> str:
    """The verdict as the matrix shows it; a sensitivity result that Holm's adjustment does not
    keep below alpha says so."""
    text = verdict.verdict
    if (
        verdict.p_holm is not None
        and verdict.verdict in (REPRODUCED, CONTRADICTED)
        and verdict.p_holm >= ALPHA
    ):
        text += " (not after Holm)"
    return text


def matrix(found: list[Verdict], plan: Plan) -> pd.DataFrame:
    """One row per reading, one cell per claim column."""
    rows = []
    for reading in plan.readings:
        row = {"reading": reading.name, "factor": reading.factor}
        mine = [v for v in found if v.reading == reading.name]
        for claim in PER_DATASET:
            for label in reading.datasets:
                headline_dataset = reading.stands_for.get(label, label)
                match = [v for v in mine if v.claim == claim and v.dataset == label]
                if not can_change(reading, claim, label):
                    row[column_name(claim, headline_dataset)] = SAME_RUNS
                elif match:
                    row[column_name(claim, headline_dataset)] = cell(match[0])
        match = [v for v in mine if v.claim == "parameters"]
        changes = can_change(reading, "parameters")
        row["parameters"] = (cell(match[0]) if match else None) if changes else SAME_RUNS
        rows.append(row)
    return pd.DataFrame(rows, columns=["reading", "factor", *claim_columns(plan)])


def bare(text: str | None) -> str | None:
    return None if text is None else text.removesuffix(" (not after Holm)")


def summary(frame: pd.DataFrame, plan: Plan) -> dict[str, str]:
    """Per claim column: robust, not settled, or depends on which readings."""
    lines = {}
    for column in claim_columns(plan):
        headline = bare(frame[column].iloc[0]) if len(frame) else None
        if headline not in DECISIVE:
            lines[column] = f"not settled ({headline or 'not judged'})"
            continue
        others = frame.iloc[1:]
        # Readings the device could not measure say nothing either way; they are not counted.
        judged = others[
            others[column].notna() & ~others[column].isin((SAME_RUNS, NOT_MEASURED, NOT_COMPARABLE))
        ]
        differ = [row["reading"] for row in judged.to_dict("records") if bare(row[column]) != headline]
        lines[column] = f"depends on: {', '.join(differ)}" if differ else f"robust ({headline})"
    return lines


def robustness_frame(found: list[Verdict], plan: Plan, synthetic: bool = False) -> pd.DataFrame:
    """The matrix with its summary as a last row (reading "summary"): reports/robustness.csv."""
    frame = matrix(found, plan)
    lines = summary(frame, plan)
    table = pd.concat(
        [frame, pd.DataFrame([{"reading": "summary", "factor": "", **lines}])], ignore_index=True
    )
    return table.assign(synthetic=synthetic)
