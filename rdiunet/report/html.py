"""The HTML report: one self-contained file (figures embedded as data URIs, no network needed)."""

import base64
import csv
import json
from collections import defaultdict
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from rdiunet import paper
from rdiunet.fileio import atomic_path, read_json
from rdiunet.provenance import now

from .claims import RULES
from .collect import Study, run_dir
from .tables import fmt, pm, signed

FIGURE_KINDS = (
    (
        "dice_curves",
        "Validation Dice per epoch (Fig. 8): mean over seeds with a ±1 SD band; the dashed line is "
        "the Table 2 convergence threshold.",
    ),
    (
        "examples",
        "Example test predictions (Fig. 7): image, ground truth, and each model's prediction (red) "
        "with the ground-truth outline (green) and the image's Dice.",
    ),
    (
        "dice_distribution",
        "Per-image test Dice, averaged over seeds: box per model with every image over it.",
    ),
    ("gpu_power", "GPU power during training (first seed) and energy per training run, from NVML."),
)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figures_by_dataset(figures: Path, study: Study) -> dict[str, list[dict]]:
    found = defaultdict(list)
    for dataset in study.datasets:
        for kind, caption in FIGURE_KINDS:
            png = figures / f"{kind}_{dataset}.png"
            if png.exists():
                found[dataset].append({"src": data_uri(png), "caption": caption, "name": png.name})
    return dict(found)


def rule_times(timing: Path) -> list[dict]:
    """Per-rule job counts and run times from Snakemake's benchmark files (logs/timing/<rule>/...)."""
    by_rule = defaultdict(list)
    for tsv in sorted(timing.glob("**/*.tsv")) if timing.exists() else []:
        with open(tsv) as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows:
            by_rule[tsv.relative_to(timing).parts[0]].append(float(rows[-1]["s"]))
    return [
        {"rule": rule, "jobs": len(s), "total_s": sum(s), "max_s": max(s)}
        for rule, s in sorted(by_rule.items())
    ]


def provenance(results: Path, data: Path, study: Study) -> dict:
    environments, devices, commits, settings = [], set(), set(), set()
    for dataset, model, seed in study.runs():
        run_file = run_dir(results, dataset, model, seed) / "run.json"
        if run_file.exists():
            run = read_json(run_file)
            environments.append(run["environment"])
            devices.add(run["environment"]["device_name"])
            commits.add(run["environment"].get("git_commit") or "unknown")
            settings.add(json.dumps(run["settings"], sort_keys=True))
    first = environments[0] if environments else {}
    versions = {k: first.get(k) for k in ("rdiunet", "python", "torch", "numpy", "cuda", "cudnn", "platform")}
    checksums = []
    for dataset in study.datasets:
        summary_file = data / f"{dataset}.json"
        if summary_file.exists():
            summary = read_json(summary_file)
            for raw in summary.get("raw", []):
                checksums.append(
                    {"dataset": dataset, "file": raw["name"], "bytes": raw["bytes"], "sha256": raw["sha256"]}
                )
    driver = None
    for dataset in study.datasets:
        for model in study.models:
            bench_file = results / dataset / model / "bench.json"
            if bench_file.exists():
                bench = read_json(bench_file)["environment"]
                devices.add(bench["device_name"])
                driver = driver or bench.get("driver")
    return {
        "versions": versions,
        "devices": sorted(devices),
        "driver": driver,
        "git_commits": sorted(commits),
        "settings": [json.loads(s) for s in sorted(settings)],
        "checksums": checksums,
    }


def table_rows(frame: pd.DataFrame) -> list[dict]:
    return frame.to_dict("records")


def render(
    claims: pd.DataFrame,
    table1: pd.DataFrame,
    table2: pd.DataFrame,
    figures: dict,
    config: dict,
    study: Study,
    provenance_info: dict,
    times: list[dict],
) -> str:
    environment = Environment(
        loader=PackageLoader("rdiunet.report", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    environment.filters.update(fmt=fmt, pm=pm, signed=signed)
    template = environment.get_template("report.html.j2")
    return template.render(
        synthetic=study.synthetic,
        claims=table_rows(claims),
        rules=RULES,
        table1=table_rows(table1),
        table2=table_rows(table2),
        figures=figures,
        config_yaml=json.dumps(config, indent=2),
        provenance=provenance_info,
        times=times,
        paper_hardware=paper.HARDWARE,
        created=now(),
        seeds=len(study.seeds),
    )


def write_report(html: str, out: Path) -> Path:
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out
