"""The columns of Table 1 and Table 2, each defined once: key, header, format, and the paper's value.

The table builders (tables.py) compute the fields each column names; the CSV writer writes those
fields in column order, and the Markdown file and the HTML page render their cells from the same
list, so a header and its cells cannot disagree anywhere. Adding a column is one line in TABLE1 or
TABLE2 (docs/report.md, "Adding a column").
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

Format = Callable[[Mapping, str], str]  # (row, field) -> the cell's text


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


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


def text(row: Mapping, field: str) -> str:
    return str(row[field])


def fixed(digits: int) -> Format:
    return lambda row, field: fmt(row[field], digits)


def plus_minus(digits: int) -> Format:
    """Signed: a difference to the paper."""
    return lambda row, field: signed(row[field], digits)


def mean_sd(digits: int) -> Format:
    """`mean ± SD` over seeds, from the fields FIELD_mean and FIELD_sd."""
    return lambda row, field: pm(row[f"{field}_mean"], row[f"{field}_sd"], digits)


def millions(digits: int) -> Format:
    return lambda row, field: "–" if missing(row[field]) else f"{row[field] / 1e6:.{digits}f}M"


INCONSISTENT = " †"


def checked(digits: int) -> Format:
    """The paper's value, marked † where its Dice and IoU cannot come from one set of masks."""
    return lambda row, field: (
        fmt(row[field], digits) + (INCONSISTENT if row.get("paper_consistent") is False else "")
    )


def kaplan_meier(row: Mapping, field: str) -> str:
    """The Kaplan-Meier median epoch (runs that never converged censored at their length),
    saying how many runs converged when not all of them did."""
    converged, seeds = row["converged_seeds"], row["seeds"]
    if missing(row[field]):
        return f"not reached ({converged} of {seeds} converged)"
    note = f" ({converged} of {seeds} converged)" if converged < seeds else ""
    return f"{row[field]:.0f}{note}"


@dataclass(frozen=True)
class Paper:
    """The paper's value beside a column: field paper_KEY, and delta_KEY = ours - paper."""

    key: str  # the key in rdiunet.paper's table
    format: Format
    header: str = "paper"
    delta: Format | None = None  # shows a "Δ" cell when given


@dataclass(frozen=True)
class Column:
    key: str  # the field in the table's frame (FIELD_mean and FIELD_sd for mean_sd formats)
    header: str
    format: Format = text
    paper: Paper | None = None
    text: bool = False  # left-aligned text rather than a number


TABLE1 = (
    Column("dataset", "dataset", text=True),
    Column("model", "model", text=True),
    Column("seeds", "seeds"),
    Column("design", "test design", text=True),
    Column("dice", "Dice", mean_sd(3), Paper("dice", checked(3), delta=plus_minus(3))),
    Column("iou", "IoU", mean_sd(3), Paper("iou", checked(3), delta=plus_minus(3))),
    Column("vs_baseline", "Δ Dice vs baseline [95% CI], verdict", text=True),
    Column("dice_dataset", "Dice (pooled)", mean_sd(3)),
    Column("iou_dataset", "IoU (pooled)", mean_sd(3)),
    Column("hd95_median", "HD95 (px)", mean_sd(1)),
    Column("ms_per_image", "ms/image", fixed(2), Paper("ms", fixed(1), header="paper ms")),
    Column("throughput", "images/s", fixed(0)),
    Column("params", "params", millions(2), Paper("params", millions(1))),
    Column("gflops", "GFLOPs", fixed(2)),
    Column("energy_j", "energy/run (J)", mean_sd(0)),
    Column("flagged", "flagged runs (kept)", text=True),
)

TABLE2 = (
    Column("dataset", "dataset", text=True),
    Column("model", "model", text=True),
    Column("threshold", "threshold", fixed(2)),
    Column("epochs", "epochs"),
    Column("stability_per_seed", "stability per seed", text=True),
    Column("stability", "stability", mean_sd(1), Paper("stability", fixed(0), delta=plus_minus(1))),
    Column("drops_per_100", "drops / 100 epochs", mean_sd(1)),
    Column("convergence_per_seed", "convergence per seed", text=True),
    Column(
        "convergence",
        "convergence (KM median)",
        kaplan_meier,
        Paper("convergence", fixed(0), delta=plus_minus(0)),
    ),
)


def without_paper(columns) -> tuple:
    """The columns without the paper's values beside them: a study of other models or data."""
    return tuple(replace(column, paper=None) for column in columns)


def header(columns) -> list[dict]:
    """The header cells: {"value", "text"} each."""
    cells = []
    for column in columns:
        cells.append({"value": column.header, "text": column.text})
        if column.paper:
            cells.append({"value": column.paper.header, "text": False})
            if column.paper.delta:
                cells.append({"value": "Δ", "text": False})
    return cells


def row_cells(columns, row: Mapping) -> list[dict]:
    """One row's cells, in the order of `header`."""
    cells = []
    for column in columns:
        cells.append({"value": column.format(row, column.key), "text": column.text})
        if column.paper:
            cells.append({"value": column.paper.format(row, f"paper_{column.paper.key}"), "text": False})
            if column.paper.delta:
                cells.append({"value": column.paper.delta(row, f"delta_{column.paper.key}"), "text": False})
    return cells


def rendered(columns, rows: list[Mapping]) -> dict:
    """A table as text cells, for the Markdown file and the HTML page alike."""
    return {"header": header(columns), "rows": [row_cells(columns, row) for row in rows]}


def fields(columns, row: Mapping) -> list[str]:
    """The frame fields the columns show, in column order (for the CSV)."""
    names = []
    for column in columns:
        summarised = f"{column.key}_mean" in row
        names += [f"{column.key}_mean", f"{column.key}_sd"] if summarised else [column.key]
        if column.paper:
            names += [f"paper_{column.paper.key}", f"delta_{column.paper.key}"]
    return names
