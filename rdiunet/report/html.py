"""The HTML report: one self-contained file (figures embedded as data URIs, no network needed)."""

import base64
import csv
import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from rdiunet import paper
from rdiunet.data import sources
from rdiunet.data.folder import FOLDER
from rdiunet.fileio import atomic_path, read_json
from rdiunet.provenance import now
from rdiunet.readings import CHECKPOINTS, CURVES, PRECISION_READINGS, PRECISIONS, PROTOCOLS
from rdiunet.runfolder import RunFolder, bench_path

from . import paper_check
from .claims import RULES, claims_frame, evaluate_claims
from .collect import SHARED_ENERGY, Collection, Study, collect
from .columns import TABLE1, TABLE2, rendered
from .figure_kinds import FIGURE_KINDS
from .robustness import claim_columns, matrix, robustness_frame, summary
from .scaling import growth_table
from .tables import shown_columns, table1, table2


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figures_by_dataset(figures: Path, study: Study) -> dict[str, list[dict]]:
    found = defaultdict(list)
    for dataset in study.datasets:
        for kind, caption in FIGURE_KINDS.items():
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


def provenance(results: Path, data: Path, collection: Collection, study: Study) -> dict:
    environments, devices, commits, settings = [], set(), set(), set()
    for dataset, model, seed in zip(
        collection.runs.dataset, collection.runs.model, collection.runs.seed, strict=True
    ):
        run = RunFolder.of(results, dataset, model, int(seed)).read_run()
        environment = run.get("environment") or {}
        environments.append(environment)
        devices.add(environment.get("device_name", "unknown"))
        commits.add(environment.get("git_commit") or "unknown")
        settings.add(json.dumps(run.get("settings"), sort_keys=True))
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
    for dataset, model in study.plan.pairs:
        bench_file = bench_path(results, dataset, model)
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
        "unchecked_data": collection.unchecked_data,
    }


def data_terms(study: Study) -> list[dict]:
    """Source, licence and terms of every dataset source the report's runs use (a folder
    dataset is the researcher's own: its terms are theirs to state)."""
    used = sorted({study.plan.source(dataset) for dataset in study.datasets} - {FOLDER})
    return [{"name": name, **asdict(sources.get(name).terms)} for name in used]


def render(page: dict) -> str:
    environment = Environment(
        loader=PackageLoader("rdiunet.report", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    return environment.get_template("report.html.j2").render(**page)


def write_report(html: str, out: Path) -> Path:
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out


def report_command(results: Path, data: Path, figures: Path, timing: Path, config: dict, out: Path) -> None:
    """`rdiunet report`: report.html and claims.csv beside it."""
    study = Study.from_config(config)
    collection = collect(results, study, data)
    verdicts = evaluate_claims(collection, study)
    synthetic = collection.synthetic(study)
    claims = claims_frame(verdicts, synthetic)
    robustness = matrix(verdicts, study.plan)
    checks = paper_check.paper_check()
    page = {
        "synthetic": synthetic,
        # Data that is synthetic although the configuration says it is not: the worst mix-up.
        "mislabelled": [] if study.synthetic else collection.synthetic_runs,
        "excluded": collection.excluded,
        "shared_energy": collection.shared_energy,
        "shared_energy_why": SHARED_ENERGY,
        "claims": claims[claims.primary].to_dict("records"),
        "sensitivity": claims[~claims.primary].to_dict("records"),
        "headline": study.plan.headline,
        "readings": study.plan.readings,
        "robustness": robustness.to_dict("records"),
        "robustness_columns": claim_columns(study.plan),
        "robustness_summary": summary(robustness, study.plan),
        "paper_check": checks.to_dict("records"),
        "growth": growth_table(collection, study).to_dict("records"),
        "choices": {
            "curve": CURVES,
            "checkpoint": CHECKPOINTS,
            "precision": {p: PRECISIONS[p] for p in PRECISION_READINGS},
            "protocol": PROTOCOLS,
        },
        "rules": RULES,
        "table1": rendered(shown_columns(TABLE1, study), table1(collection, study).to_dict("records")),
        "table2": rendered(shown_columns(TABLE2, study), table2(collection, study).to_dict("records")),
        "title": study.report_title,
        "papers_study": study.is_papers_study,
        "figures": figures_by_dataset(figures, study),
        "config_yaml": json.dumps(config, indent=2),
        "provenance": provenance(results, data, collection, study),
        "times": rule_times(timing),
        "paper_hardware": paper.HARDWARE,
        "paper_citation": paper.CITATION,
        "data_terms": data_terms(study),
        "created": now(),
        "seeds": len(study.seeds),
    }
    write_report(render(page), out)
    for name, frame in (
        ("claims.csv", claims),
        ("robustness.csv", robustness_frame(verdicts, study.plan, synthetic)),
    ):
        with atomic_path(out.with_name(name)) as tmp:
            frame.to_csv(tmp, index=False)
    print(out)
