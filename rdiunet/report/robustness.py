"""The robustness matrix: every claim judged under every reading, and which claims hold under all.

Rows are readings (the headline first; each other row changes one choice); columns are the claims:
accuracy per headline dataset, then speed, parameters, stability and convergence (their overall
verdicts over the datasets). Below the rows, one line per claim: "robust" when every row where the
claim is judged gives the headline's verdict, else "depends on: ..." naming the readings that
flip it.
"""

import pandas as pd

from rdiunet.readings import Plan

from .claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Verdict

OVERALL = ("speed", "parameters", "stability", "convergence")
JUDGED = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


def claim_columns(plan: Plan) -> list[str]:
    return [f"accuracy: {dataset}" for dataset in plan.headline.datasets] + list(OVERALL)


def matrix(verdicts: list[Verdict], plan: Plan) -> pd.DataFrame:
    """One row per reading, one verdict per claim column."""
    rows = []
    for reading in plan.readings:
        row = {"reading": reading.name, "factor": reading.factor}
        for v in verdicts:
            if v.reading != reading.name:
                continue
            if v.claim == "accuracy" and v.dataset != "all":
                row[f"accuracy: {reading.stands_for[v.dataset]}"] = v.verdict
            elif v.claim in OVERALL and v.dataset == "all":
                row[v.claim] = v.verdict
        rows.append(row)
    return pd.DataFrame(rows, columns=["reading", "factor", *claim_columns(plan)])


def summary(frame: pd.DataFrame, plan: Plan) -> dict[str, str]:
    """Per claim column: "robust (verdict)" or "depends on: reading, reading"."""
    lines = {}
    for column in claim_columns(plan):
        judged = frame[frame[column].isin(JUDGED)]
        if judged.empty:
            lines[column] = "not judged under any reading"
            continue
        rows = judged.to_dict("records")
        reference = rows[0][column]  # the headline's, where it is judged
        flips = [row["reading"] for row in rows if row[column] != reference]
        lines[column] = f"depends on: {', '.join(flips)}" if flips else f"robust ({reference})"
    return lines


def robustness_frame(verdicts: list[Verdict], plan: Plan) -> pd.DataFrame:
    """The matrix with its summary as a last row (reading "summary"): reports/robustness.csv."""
    frame = matrix(verdicts, plan)
    lines = summary(frame, plan)
    return pd.concat(
        [frame, pd.DataFrame([{"reading": "summary", "factor": "", **lines}])], ignore_index=True
    )
