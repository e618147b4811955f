"""Table 1 (accuracy, speed, size) and Table 2 (stability, convergence), beside the paper's values.

CSV files hold the numbers (means, standard deviations over seeds, paper values, deltas); the
Markdown files show them as "mean ± SD" for reading.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from rdiunet import paper
from rdiunet.fileio import atomic_path

from .collect import Study


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), ignoring missing values."""
    clean = [float(v) for v in values if not missing(v)]
    if not clean:
        return math.nan, math.nan
    return float(np.mean(clean)), float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0


def table1(runs: pd.DataFrame, benches: pd.DataFrame, study: Study) -> pd.DataFrame:
    rows = []
    for dataset in study.datasets:
        for model in study.models:
            group = runs[(runs.dataset == dataset) & (runs.model == model)]
            bench = benches[(benches.dataset == dataset) & (benches.model == model)].iloc[0]
            reported = paper.table1(dataset, model)
            row = {"dataset": dataset, "model": model, "synthetic": study.synthetic, "seeds": len(group)}
            for metric in ("dice", "iou", "dice_dataset", "iou_dataset", "hd95", "energy_j"):
                row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd(group[metric])
            row.update(
                ms_median=bench.ms_median,
                ms_p90=bench.ms_p90,
                ms_p99=bench.ms_p99,
                throughput=bench.throughput,
                throughput_batch=bench.throughput_batch,
                params=int(bench.params),
                gflops=bench.gflops,
                device=bench.device,
            )
            for metric, ours in (
                ("dice", row["dice_mean"]),
                ("iou", row["iou_mean"]),
                ("ms", row["ms_median"]),
            ):
                row[f"paper_{metric}"] = reported.get(metric, math.nan)
                row[f"delta_{metric}"] = ours - row[f"paper_{metric}"]
            row["paper_params"] = paper.PARAMS.get(model, math.nan)
            row["delta_params"] = row["params"] - row["paper_params"]
            rows.append(row)
    return pd.DataFrame(rows)


def table2(runs: pd.DataFrame, study: Study) -> pd.DataFrame:
    rows = []
    for dataset in study.datasets:
        for model in study.models:
            group = runs[(runs.dataset == dataset) & (runs.model == model)].sort_values("seed")
            reported = paper.table2(dataset, model)
            converged = [c for c in group.convergence if c is not None and not pd.isna(c)]
            stability_mean, stability_sd = mean_sd(group.stability)
            convergence_mean, convergence_sd = mean_sd(converged)
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "synthetic": study.synthetic,
                    "threshold": study.threshold(dataset),
                    "epochs": int(group.epochs.max()),
                    "stability_per_seed": ";".join(str(int(s)) for s in group.stability),
                    "stability_mean": stability_mean,
                    "stability_sd": stability_sd,
                    "paper_stability": reported.get("stability", math.nan),
                    "delta_stability": stability_mean - reported.get("stability", math.nan),
                    "convergence_per_seed": ";".join(
                        "none" if c is None or pd.isna(c) else str(int(c)) for c in group.convergence
                    ),
                    "converged_seeds": len(converged),
                    "convergence_mean": convergence_mean,
                    "convergence_sd": convergence_sd,
                    "paper_convergence": reported.get("convergence", math.nan),
                    "delta_convergence": convergence_mean - reported.get("convergence", math.nan),
                }
            )
    return pd.DataFrame(rows)


def fmt(value, digits: int = 3) -> str:
    if missing(value):
        return "–"
    return f"{value:.{digits}f}"


def pm(mean, sd, digits: int = 3) -> str:
    if missing(mean):
        return "–"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def signed(value, digits: int = 3) -> str:
    if missing(value):
        return "–"
    return f"{value:+.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table1_markdown(frame: pd.DataFrame) -> str:
    header = [
        "dataset",
        "model",
        "seeds",
        "Dice",
        "paper",
        "Δ",
        "IoU",
        "paper",
        "Δ",
        "Dice (pooled)",
        "IoU (pooled)",
        "HD95 px",
        "ms/image",
        "paper ms",
        "images/s",
        "params",
        "paper",
        "GFLOPs",
        "energy/run J",
    ]
    rows = [
        [
            r.dataset,
            r.model,
            str(r.seeds),
            pm(r.dice_mean, r.dice_sd),
            fmt(r.paper_dice),
            signed(r.delta_dice),
            pm(r.iou_mean, r.iou_sd),
            fmt(r.paper_iou),
            signed(r.delta_iou),
            pm(r.dice_dataset_mean, r.dice_dataset_sd),
            pm(r.iou_dataset_mean, r.iou_dataset_sd),
            pm(r.hd95_mean, r.hd95_sd, 1),
            fmt(r.ms_median, 2),
            fmt(r.paper_ms, 1),
            fmt(r.throughput, 0),
            f"{r.params / 1e6:.2f}M",
            f"{r.paper_params / 1e6:.1f}M",
            fmt(r.gflops, 2),
            pm(r.energy_j_mean, r.energy_j_sd, 0),
        ]
        for r in frame.itertuples()
    ]
    return markdown_table(header, rows)


def table2_markdown(frame: pd.DataFrame) -> str:
    header = [
        "dataset",
        "model",
        "threshold",
        "epochs",
        "stability per seed",
        "stability",
        "paper",
        "Δ",
        "convergence per seed",
        "convergence",
        "paper",
        "Δ",
    ]
    rows = [
        [
            r.dataset,
            r.model,
            fmt(r.threshold, 2),
            str(r.epochs),
            r.stability_per_seed,
            pm(r.stability_mean, r.stability_sd, 1),
            fmt(r.paper_stability, 0),
            signed(r.delta_stability, 1),
            r.convergence_per_seed,
            pm(r.convergence_mean, r.convergence_sd, 1)
            + (
                f" ({r.converged_seeds} converged)"
                if r.converged_seeds < len(r.convergence_per_seed.split(";"))
                else ""
            ),
            fmt(r.paper_convergence, 0),
            signed(r.delta_convergence, 1),
        ]
        for r in frame.itertuples()
    ]
    return markdown_table(header, rows)


SYNTHETIC_NOTE = (
    "> **Synthetic data.** These numbers come from synthetic stand-ins, not the paper's datasets: "
    "they test the pipeline, not the paper.\n\n"
)


def write_tables(frame1: pd.DataFrame, frame2: pd.DataFrame, out: Path, synthetic: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame, markdown in (("table1", frame1, table1_markdown), ("table2", frame2, table2_markdown)):
        with atomic_path(out / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
        with atomic_path(out / f"{name}.md") as tmp:
            tmp.write_text((SYNTHETIC_NOTE if synthetic else "") + markdown(frame))
        written += [out / f"{name}.csv", out / f"{name}.md"]
    return written
