"""Table 1 (accuracy, speed, size) and Table 2 (stability, convergence), beside the paper's values.

CSV files hold the numbers (means and standard deviations over seeds, paper values, deltas); the
Markdown files show them as "mean ± SD" for reading. Both follow the column lists in columns.py.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from rdiunet import paper
from rdiunet.fileio import atomic_path
from rdiunet.metrics import TEST_METRICS
from rdiunet.verdicts import km_median

from . import paper_check
from .claims import accuracy
from .collect import BENCH_COLUMNS, SHARED_ENERGY, Collection, Study, collect, curve_table
from .columns import TABLE1, TABLE2, fields, missing, rendered, without_paper
from .findings import flagged_in

# Per-run quantities Table 1 averages over seeds: every test metric, and training energy.
AVERAGED = (*TEST_METRICS, "energy_j")


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), ignoring missing values."""
    clean = [float(v) for v in values if not missing(v)]
    if not clean:
        return math.nan, math.nan
    return float(np.mean(clean)), float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0


def add_paper(row: dict, columns, reported: dict) -> None:
    """paper_KEY and delta_KEY (ours - paper) for every column that has a paper value."""
    for column in columns:
        if column.paper:
            key = column.paper.key
            ours = row.get(f"{column.key}_mean", row.get(column.key))
            row[f"paper_{key}"] = reported.get(key, math.nan)
            row[f"delta_{key}"] = ours - row[f"paper_{key}"]


def selected(frame: pd.DataFrame, dataset: str, model: str) -> pd.DataFrame:
    return frame[(frame.dataset == dataset) & (frame.model == model)]


def synthetic(collection: Collection, study: Study, dataset: str, model: str) -> bool:
    return study.synthetic or any(r.startswith(f"{dataset}/{model}/") for r in collection.synthetic_runs)


def table1(collection: Collection, study: Study) -> pd.DataFrame:
    rows = []
    for dataset in study.datasets:
        for model in study.models_of(dataset):
            runs = collection.runs
            group = selected(runs[runs.checkpoint == study.checkpoint], dataset, model)
            bench = selected(collection.benches, dataset, model)
            row = {
                "dataset": dataset,
                "model": model,
                "synthetic": synthetic(collection, study, dataset, model),
                "seeds": len(group),
                "design": design(collection, study, dataset, model),
            }
            for metric in AVERAGED:
                row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd(group[metric])
            for key in BENCH_COLUMNS[2:]:  # a missing bench.json leaves a gap, stated in the report
                row[key] = bench.iloc[0][key] if len(bench) else math.nan
            row["ms_per_image"] = headline_ms(collection, study, dataset, model)
            row["vs_baseline"] = against_baseline(collection, study, dataset, model)
            flagged = flagged_in(collection.findings, dataset, (model,))
            row["flagged"] = "; ".join(f"seed {seed} {finding}" for _, seed, finding in flagged) or "–"
            if study.is_papers_study:  # the paper's numbers only beside a study of its models and data
                source, base = study.plan.source(dataset), study.plan.base(model)
                add_paper(row, TABLE1, paper.table1(source, base))
                row["paper_consistent"] = paper_check.consistent(source, base)
            rows.append(row)
    return pd.DataFrame(rows)


def design(collection: Collection, study: Study, dataset: str, model: str) -> str:
    """How the test images were chosen, and how many subjects were tested (by the valid runs)."""
    images = selected(collection.per_image, dataset, model)
    if images.empty:
        subjects = 0
    else:
        images = images[images.checkpoint == study.checkpoint]
        subjects = (images["group"] if "group" in images else images["id"]).nunique()
    folds = study.folds_of(dataset)
    if folds:
        return f"{folds}-fold CV, {subjects} subjects tested"
    return f"test split, {subjects} subjects"


def against_baseline(collection: Collection, study: Study, dataset: str, model: str) -> str:
    """Table 1's mark: the model's accuracy against the headline baseline, by the verdict engine."""
    baseline = study.plan.headline.baseline
    if model == baseline:
        return "(baseline)"
    per_image = collection.per_image[collection.per_image.checkpoint == study.checkpoint]
    verdict = accuracy(study, dataset, per_image, model, baseline, "table1", collection.findings)
    j = verdict.judgement
    if j is None:
        return verdict.verdict
    interval = "" if math.isnan(j.low) else f" [{j.low:+.3f}, {j.high:+.3f}]"
    reason = f" ({j.reason})" if j.reason else ""
    return f"{j.effect:+.3f}{interval} {j.verdict}{reason}"


def headline_ms(collection: Collection, study: Study, dataset: str, model: str) -> float:
    """The headline protocol's ms per image in the headline precision: the mean over the
    interleaved timing sessions (speed.json)."""
    speeds = collection.speeds
    found = speeds[
        (speeds.dataset == dataset)
        & (speeds.model == model)
        & (speeds.protocol == study.protocol)
        & (speeds.precision == study.plan.headline.precision)
    ]
    return float(found.ms.iloc[0]) if len(found) else math.nan


def per_seed(values) -> str:
    return ";".join("none" if missing(v) or pd.isna(v) else str(int(v)) for v in values)


def table2(collection: Collection, study: Study) -> pd.DataFrame:
    """Stability and convergence on the headline curve, with the drops per 100 epochs: a count
    that grows with the run's length (the paper does not give its length)."""
    curves = curve_table(collection.histories, study, study.curve)
    rows = []
    for dataset in study.datasets:
        for model in study.models_of(dataset):
            group = selected(curves, dataset, model).sort_values("seed")
            converged = [c for c in group.convergence if c is not None and not pd.isna(c)]
            row = {
                "dataset": dataset,
                "model": model,
                "synthetic": synthetic(collection, study, dataset, model),
                "seeds": len(group),
                "threshold": study.threshold(dataset),
                "epochs": int(group.epochs.max()) if len(group) else 0,
                "stability_per_seed": per_seed(group.stability),
                "convergence_per_seed": per_seed(group.convergence),
                "converged_seeds": len(converged),
            }
            row["stability_mean"], row["stability_sd"] = mean_sd(group.stability)
            row["drops_per_100_mean"], row["drops_per_100_sd"] = mean_sd(100 * group.stability / group.epochs)
            row["curve"] = study.curve
            epochs = group.epochs.to_numpy(float)
            reached = group.convergence.notna().to_numpy()
            median = km_median(
                np.where(reached, group.convergence.fillna(0).to_numpy(float), epochs), reached
            )
            row["convergence"] = median if math.isfinite(median) else math.nan
            if study.is_papers_study:
                add_paper(row, TABLE2, paper.table2(study.plan.source(dataset), study.plan.base(model)))
            rows.append(row)
    return pd.DataFrame(rows)


def shown_columns(columns, study: Study) -> tuple:
    """A table's columns, the paper's values beside them only in a study of the paper's models on
    its datasets."""
    return columns if study.is_papers_study else without_paper(columns)


def markdown(frame: pd.DataFrame, columns) -> str:
    table = rendered(columns, frame.to_dict("records"))
    lines = ["| " + " | ".join(cell["value"] for cell in table["header"]) + " |"]
    lines.append("|" + "---|" * len(table["header"]))
    lines += ["| " + " | ".join(cell["value"] for cell in row) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"


def csv_frame(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """The frame with the shown fields first, in column order, then everything else it holds."""
    if frame.empty:
        return frame
    shown = fields(columns, frame.iloc[0].to_dict())
    return frame[shown + [name for name in frame.columns if name not in shown]]


SYNTHETIC_NOTE = (
    "> **Synthetic data.** These numbers come from synthetic stand-ins, not the paper's datasets: "
    "they test the pipeline, not the paper.\n\n"
)


def notes(collection: Collection, study: Study) -> str:
    """What a reader must know before the numbers: synthetic data, and runs left out."""
    text = SYNTHETIC_NOTE if collection.synthetic(study) else ""
    if collection.excluded:
        left_out = "; ".join(f"{e.label}: {e.reason}" for e in collection.excluded)
        text += (
            f"> **Left out** ({len(collection.excluded)}): {left_out}. "
            "The seeds column counts the runs that remain.\n\n"
        )
    if collection.shared_energy:
        text += f"> **Energy not shown** for {len(collection.shared_energy)} run(s). {SHARED_ENERGY}: "
        text += "; ".join(collection.shared_energy) + ".\n\n"
    return text


PAPER_CHECK_NOTE = (
    "\n† The paper's Dice and IoU for this cell cannot both come from one set of binary predictions, "
    "averaged per image or pooled (reports/paper_check.csv; docs/report.md).\n"
)


def write_tables(collection: Collection, study: Study, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame, columns in (
        ("table1", table1(collection, study), shown_columns(TABLE1, study)),
        ("table2", table2(collection, study), shown_columns(TABLE2, study)),
    ):
        with atomic_path(out / f"{name}.csv") as tmp:
            csv_frame(frame, columns).to_csv(tmp, index=False)
        marked = name == "table1" and bool(
            frame.get("paper_consistent", pd.Series(dtype=object)).eq(False).any()
        )
        with atomic_path(out / f"{name}.md") as tmp:
            tmp.write_text(
                notes(collection, study) + markdown(frame, columns) + (PAPER_CHECK_NOTE if marked else "")
            )
        written += [out / f"{name}.csv", out / f"{name}.md"]
    with atomic_path(out / "paper_check.csv") as tmp:
        paper_check.paper_check().to_csv(tmp, index=False)
    return [*written, out / "paper_check.csv"]


def tables_command(results: Path, data: Path, config: dict, out: Path) -> None:
    """`rdiunet tables`: both tables from a results tree."""
    study = Study.from_config(config)
    for path in write_tables(collect(results, study, data), study, out):
        print(path)
