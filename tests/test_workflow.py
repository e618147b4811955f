import re
import shutil
import tomllib
import zipfile
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_workflow, snakemake  # noqa: E402
from packaging.requirements import Requirement
from snakemake.utils import validate
from snakemake_interface_common.exceptions import WorkflowError

from rdiunet import paper
from rdiunet.data import sources
from rdiunet.data.folder import FOLDER
from rdiunet.report.figure_kinds import FIGURE_KINDS
from rdiunet.settings import BenchSettings, TrainSettings, plain


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> number of jobs."""
    stats = output.split("Job stats:", 1)[1]
    return {
        rule: int(count)
        for rule, count in re.findall(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE)
        if rule != "total"
    }


@pytest.mark.slow
def test_paper_run_plans_the_full_grid(tmp_path):
    result = snakemake(copy_workflow(tmp_path), "-n")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    # One download per source; nerve_by_image and nerve_cv prepare nerve's archives again, each by
    # its own split.
    assert jobs["download"] == 3 and jobs["prepare"] == 5
    # The readings' runs: the headline pair on 3 datasets, rdiunet_k3, unet_classic and monai_unet
    # against the headline partner on 3 datasets, the headline pair on nerve_by_image and on
    # nerve_cv (5 folds, one per seed): 19 pairs x 5 seeds.
    assert jobs["train"] == 19 * 5
    assert jobs["bench"] == 19
    assert jobs["speed"] == 5  # every model of a dataset in one job of interleaved sessions
    assert jobs["tables"] == jobs["figures"] == jobs["report"] == jobs["all"] == 1
    for variant in ("results/nerve_by_image/rdiunet/seed4", "results/jsrt/unet_classic/seed0"):
        assert variant in result.stdout
    assert "results/nerve_by_image/unet_classic" not in result.stdout  # one factor at a time


@pytest.mark.slow
def test_lint_is_clean():
    for profile in ((), ("--profile", "profiles/demo")):
        result = snakemake(REPO, "--lint", *profile)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Lints for" not in result.stdout + result.stderr, result.stdout


SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def rule_resources(output: str) -> dict[str, set[str]]:
    """A dry run's resources per rule: rule -> the distinct `resources:` lines of its jobs."""
    found: dict[str, set[str]] = {}
    for block in re.split(r"^rule ", output, flags=re.MULTILINE)[1:]:
        rule = block.split(":", 1)[0]
        line = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        found.setdefault(rule, set()).add(line.group(1) if line else "")
    return found


def fake_nvidia_smi(folder, cards: int):
    """A stand-in nvidia-smi listing `cards` GPUs: the workflow counts them (no GPU here)."""
    folder.mkdir(exist_ok=True)
    lines = "".join(f'echo "GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:04d})"\n' for i in range(cards))
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{lines}")
    (folder / "nvidia-smi").chmod(0o755)
    return folder


@pytest.mark.slow
def test_a_workstation_run_is_limited_to_its_gpus_times_the_training_slots(tmp_path):
    folder = copy_workflow(tmp_path / "workflow")
    (folder / "slots.yaml").write_text("training: {gpu_slots: 2}\n")
    bin_folder = fake_nvidia_smi(tmp_path / "bin", cards=2)
    result = snakemake(folder, "-n", "--cores", "4", "--configfile", "slots.yaml", path=bin_folder)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    # The README's one command, as typed: the workflow profile makes killed jobs rerun.
    assert "workflow specific profile profiles/default" in output
    assert "GPU limit 4: 2 GPU(s) here x 2 training slot(s) each" in output
    resources = rule_resources(output)
    assert all(line.startswith("tmpdir=/tmp, gpu=1,") for line in resources["train"]), resources["train"]
    assert all(line.startswith("tmpdir=/tmp, gpu=2,") for line in resources["bench"])  # a whole card
    # A limit given on the command line is the user's: nothing is counted, and a benchmark takes
    # all of a limit smaller than a card's slots rather than wait for ever.
    given = ("--resources", "gpu=1", "--configfile", "slots.yaml")
    result = snakemake(folder, "-n", "--cores", "4", *given, path=bin_folder)
    assert result.returncode == 0 and "GPU limit" not in result.stdout + result.stderr
    assert all(line.startswith("tmpdir=/tmp, gpu=1,") for line in rule_resources(result.stdout)["bench"])


@pytest.mark.slow
def test_a_machine_without_gpus_or_a_cpu_config_asks_for_none(tmp_path):
    folder = copy_workflow(tmp_path / "workflow")
    result = snakemake(folder, "-n", "--cores", "4", path=tmp_path / "no-nvidia-smi-here")
    assert result.returncode == 0, result.stderr[-3000:]
    resources = rule_resources(result.stdout)
    assert all("gpu=0" in line for rule in ("train", "bench") for line in resources[rule])


@pytest.mark.slow
def test_slurm_profile_dry_run_asks_each_gpu_job_for_one_gpu(tmp_path, monkeypatch):
    folder = copy_workflow(tmp_path / "workflow")
    monkeypatch.setenv("RDIUNET_SLURM_PARTITION", "gpu-long")
    result = snakemake(folder, "-n", "--profile", "profiles/slurm")  # no conda on this machine
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Using profiles profiles/slurm and workflow specific profile profiles/default" in result.stderr
    resources = rule_resources(result.stdout)
    for rule in ("train", "bench"):
        assert all("gpu=1" in line and "slurm_partition=gpu-long" in line for line in resources[rule])
    assert {line.split("runtime=")[1].split(",")[0] for line in resources["train"]} == {"360", "480"}
    assert all("slurm_extra=--signal=TERM@120" in line for line in resources["train"])
    assert all("gpu=" not in line for line in resources["prepare"])


def paper_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def validation_error(config: dict) -> str | None:
    """What Snakemake's own validation (as common.smk calls it) says of `config`; None if valid."""
    try:
        validate(config, str(SCHEMA))
    except WorkflowError as error:
        return str(error)
    return None


@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda c: c.update(seeds=[-1, 2]), "seeds"),
        (lambda c: c["datasets"].update(brain=c["datasets"].pop("jsrt")), "brain"),
        (lambda c: c["datasets"]["nerve"].update(size=100), "size"),
        (lambda c: c["training"].update(amp="fp8"), "amp"),
    ],
)
def test_invalid_config_is_refused_naming_the_key(edit, key):
    config = paper_config()
    assert validation_error(config) is None
    edit(config)
    message = validation_error(config)
    assert message is not None and key in message


@pytest.mark.slow
def test_invalid_config_stops_snakemake_before_any_job(tmp_path):
    folder = copy_workflow(tmp_path)
    config = paper_config()
    config["datasets"]["nerve"]["size"] = 100
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(folder, "-n")
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "Error: the configuration: datasets.nerve.size: 100 is not a multiple of 16" in message
    assert "Job stats" not in message and "properties" not in message  # one line, no schema dump


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit,line",
    [
        (
            lambda c: c["models"]["unet"].update(widths="wide"),
            "Error in the configuration: models.unet: invalid option for model 'unet': widths='wide'",
        ),
        (  # eight poolings take jsrt's 256 px but not nerve's and isic's 128
            lambda c: c["models"]["unet"].update(widths=[2, 4, 8, 16, 32, 64, 128, 256, 512]),
            "Error in the configuration: models.unet: model 'unet' {'widths': [2, 4, 8, 16, 32, 64, 128, "
            "256, 512]} cannot take 128x128 images",
        ),
        (
            lambda c: c["models"].update(mine={"factory": "no_such_package.nets:build"}),
            "Error in the configuration: models.mine: cannot import the model factory",
        ),
    ],
)
def test_a_bad_model_stops_snakemake_in_one_line_before_any_job(tmp_path, edit, line):
    folder = copy_workflow(tmp_path)
    config = paper_config()
    edit(config)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(folder, "-n")
    assert result.returncode != 0
    lines = [text for text in (result.stdout + result.stderr).splitlines() if "Error" in text]
    assert len(lines) == 1 and lines[0].startswith(line), lines
    assert "Job stats" not in result.stdout + result.stderr


def test_config_errors_are_one_line_with_the_key_path(tmp_path):
    from rdiunet.configuration import check_config
    from rdiunet.errors import UserError

    def problem(edit) -> str:
        config = paper_config()
        edit(config)
        with pytest.raises(UserError) as error:
            check_config(config)
        assert "\n" not in str(error.value)
        return str(error.value)

    assert problem(lambda c: c["datasets"]["nerve"].update(epochs="four")) == (
        "the configuration: datasets.nerve.epochs: 'four' is not of type integer"
    )
    unknown = problem(lambda c: c.update(foo=1))
    assert unknown.startswith("the configuration: unknown key 'foo' at the top level; known keys: bench,")
    assert "unknown key 'bar' at datasets.nerve_cv" in problem(
        lambda c: c["datasets"]["nerve_cv"].update(bar=1)
    )
    with pytest.raises(UserError, match="the configuration is empty"):
        check_config(None)
    # A variant whose source has no entry takes a source entry's defaults, not a KeyError.
    config = paper_config()
    del config["datasets"]["nerve"], config["datasets"]["nerve_by_image"]
    config["datasets"]["nerve_cv"].update(size=128, threshold=0.7, epochs=4, batch_size=8)
    check_config(config)
    from rdiunet.readings import DATASET_DEFAULTS, WORKFLOW_KEYS, resolve

    assert resolve(config, WORKFLOW_KEYS).datasets["nerve_cv"]["split_by"] == "subject"
    schema = yaml.safe_load(SCHEMA.read_text())["$defs"]["dataset"]["properties"]
    assert {key: spec["default"] for key, spec in schema.items()} == DATASET_DEFAULTS


@pytest.mark.slow
def test_an_unknown_key_stops_snakemake_in_one_line(tmp_path):
    folder = copy_workflow(tmp_path)
    (folder / "extra.yaml").write_text("foo: 1\n")
    result = snakemake(folder, "-n", "--configfile", "extra.yaml")
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "foo" in line]
    assert errors == [
        "Error: the configuration: unknown key 'foo' at the top level; known keys: "
        + errors[0].split("known keys: ")[1]
    ]
    assert len((result.stdout + result.stderr).splitlines()) < 15


def schema_defaults(section: str) -> dict:
    properties = yaml.safe_load(SCHEMA.read_text())["properties"][section]["properties"]
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


# Snakemake's threads per job: the rule's `threads:` and --threads, where the command line's own
# default (None, torch's choice) serves people running `rdiunet` by hand.
JOB_SCHEDULING = {"threads"}


@pytest.mark.parametrize("section,settings", [("training", TrainSettings), ("bench", BenchSettings)])
def test_schema_defaults_equal_the_settings_defaults(section, settings):
    defaults = schema_defaults(section)
    assert set(defaults) <= {f.name for f in fields(settings)}  # no default of the schema's alone
    compared = set(defaults) - JOB_SCHEDULING
    assert len(compared) >= 4  # the comparison must compare something
    for key in compared:
        assert defaults[key] == plain(getattr(settings, key)), key


def test_schema_dataset_names_are_the_registered_sources():
    schema = yaml.safe_load(SCHEMA.read_text())
    source_enum = schema["$defs"]["dataset_fields"]["properties"]["source"]["enum"]
    assert source_enum == sorted([*sources.names(), FOLDER])
    assert sorted(schema["properties"]["datasets"]["properties"]) == sources.names()


def test_the_schema_names_no_model_the_registry_checks_instead():
    # Options are checked against each builder's signature (rdiunet.models.check_models), so a
    # new model needs no schema line.
    schema = yaml.safe_load(SCHEMA.read_text())
    assert "properties" not in schema["properties"]["models"]
    assert set(schema["$defs"]["model_entry"]["properties"]) == {"model", "factory"}


def test_margin_defaults_are_the_verdict_engines():
    from rdiunet.verdicts import MARGINS

    margins = yaml.safe_load(SCHEMA.read_text())["properties"]["margins"]["properties"]
    assert {claim: spec["default"] for claim, spec in margins.items()} == MARGINS


def test_failed_runs_policies_are_the_reports():
    from rdiunet.report.findings import POLICIES

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["failed_runs"]
    assert tuple(schema["enum"]) == POLICIES and schema["default"] == POLICIES[0]


def test_stability_drop_default_is_the_papers():
    assert (
        yaml.safe_load(SCHEMA.read_text())["properties"]["stability_drop"]["default"] == paper.STABILITY_DROP
    )


def test_conda_envs_are_pinned_and_agree_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    # The optional baselines' packages are pinned where the models are trained.
    extras = {Requirement(r).name.lower(): Requirement(r) for r in project["optional-dependencies"]["monai"]}
    pinned = {}
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pips = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
        indexes = [line.split()[1] for line in pips if line.startswith("--extra-index-url ")]
        for line in (line for line in pips if not line.startswith("--")):
            requirement = Requirement(line)
            assert str(requirement.specifier).startswith("=="), f"{env_file.name}: {line} is not pinned"
            version = str(requirement.specifier)[2:]
            if requirement.name == "torch":
                # A build chosen on purpose: a local label (+cu130, +cpu) from PyTorch's own index.
                build = version.partition("+")[2]
                assert build and indexes == [f"https://download.pytorch.org/whl/{build}"], line
                assert (build == "cpu") == (env_file.name != "train.yaml"), f"{env_file.name}: {line}"
            name = requirement.name.lower()
            assert name in declared | extras, f"{env_file.name}: {name} is not a dependency in pyproject.toml"
            specifier = (declared | extras)[name].specifier
            assert specifier.contains(version), f"{env_file.name}: {line} vs {specifier}"
            release = version.partition("+")[0]  # one release everywhere, whatever the build
            assert pinned.setdefault(name, release) == release, f"{name} pinned to two versions"
    # Every runtime dependency is in some environment, except the workflow engine itself.
    outside = {"snakemake", "snakemake-executor-plugin-slurm"}
    assert set(declared) - outside <= set(pinned)
    assert set(extras) <= set(pinned)
    # The workflow's configuration check needs Draft202012Validator: jsonschema 4, at run time.
    assert not declared["jsonschema"].specifier.contains("3.2.0")


# --- the demo, end to end (the `demo` fixture is in conftest.py) ------------------------------------


DEMO_RUNS = {
    "nerve": ("unet", "unet_classic", "rdiunet"),
    "jsrt": ("unet", "unet_classic", "rdiunet"),
    "isic": ("unet", "unet_classic", "rdiunet"),
    "nerve_by_image": ("unet", "rdiunet"),
    "nerve_cv": ("unet", "rdiunet"),
}
DEMO_SEEDS = {"nerve_cv": (0, 1, 2)}  # a 3-fold dataset's own seeds; the others have 0 and 1


@pytest.mark.slow
def test_demo_outputs_meet_the_data_contracts(demo):
    root = demo / "demo"
    assert sorted(p.name for p in (root / "data" / "raw").iterdir()) == ["isic", "jsrt", "nerve"]
    for dataset, n_images in (
        ("nerve", None),
        ("jsrt", 60),
        ("isic", 80),
        ("nerve_by_image", None),
        ("nerve_cv", None),
    ):
        with np.load(root / "data" / "prepared" / f"{dataset}.npz") as npz:
            assert {"images", "masks", "ids", "groups", "split"} <= set(npz.files)
            assert npz["images"].shape[1:] == (64, 64) and npz["masks"].max() == 1
            if n_images:
                assert len(npz["ids"]) == n_images
        summary = yaml.safe_load((root / "data" / "prepared" / f"{dataset}.json").read_text())
        assert summary["synthetic"] is True
        assert summary["split"]["by"] == ("image" if dataset == "nerve_by_image" else "subject")
        results = sorted(p.name for p in (root / "results" / dataset).iterdir())
        assert results == sorted([*DEMO_RUNS[dataset], "speed.json"])
        speed = yaml.safe_load((root / "results" / dataset / "speed.json").read_text())
        timed = {(row["model"], row["session"]) for row in speed["timings"] if row["ms"] is not None}
        assert timed == {(model, s) for model in DEMO_RUNS[dataset] for s in range(3)}  # 3 sessions each
        for model in DEMO_RUNS[dataset]:
            bench = yaml.safe_load((root / "results" / dataset / model / "bench.json").read_text())
            assert bench["latency_ms"]["median"] > 0
            for seed in DEMO_SEEDS.get(dataset, (0, 1)):
                run = root / "results" / dataset / model / f"seed{seed}"
                for name in (
                    "history.csv",
                    "metrics.json",
                    "per_image.csv",
                    "run.json",
                    "checkpoint.pt",
                    "best.pt",
                    "gpu.csv",
                ):
                    assert (run / name).exists(), run / name
                metrics = yaml.safe_load((run / "metrics.json").read_text())
                # The demo's promise for the headline pair; the textbook U-Net (no batch norm,
                # dropout 0.5) learns more slowly, as the paper's baseline did, and a 3-fold run
                # trains on a third of the images (one fold tests, one validates).
                promise = 0.9 if model != "unet_classic" and dataset != "nerve_cv" else 0.2
                assert metrics["dice"] > promise, (run, metrics["dice"])
                assert yaml.safe_load((run / "run.json").read_text())["data"]["synthetic"] is True
    table1 = (root / "reports" / "table1.md").read_text()
    assert table1.startswith("> **Synthetic data.**")
    assert len((root / "reports" / "table1.csv").read_text().splitlines()) == 1 + 13
    assert (root / "logs" / "timing" / "train" / "jsrt" / "unet" / "seed0.tsv").exists()
    for name in ("report.html", "claims.csv", "robustness.csv", "paper_check.csv"):
        assert (root / "reports" / name).exists(), name
    robustness = (root / "reports" / "robustness.csv").read_text().splitlines()
    readings = [line.split(",")[0] for line in robustness[1:]]
    assert readings[:2] == ["headline", "baseline = unet_classic"]
    assert set(readings[2:4]) == {"nerve = nerve_by_image", "nerve = nerve_cv"}
    for reading in ("curve = val_soft_dice", "curve = train_soft_dice", "curve = val_dice_pooled"):
        assert reading in readings
    for reading in ("checkpoint = best_loss", "checkpoint = last", "protocol = graphed_b1"):
        assert reading in readings
    assert {"protocol = best_batch", "protocol = end_to_end", "precision = fp32", "summary"} <= set(readings)
    # The readings of the same runs: in every run folder and benchmark.
    run = root / "results" / "jsrt" / "rdiunet" / "seed0"
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"train_soft_dice", "val_soft_dice", "val_dice_pooled"} <= set(header)
    assert set(yaml.safe_load((run / "metrics.json").read_text())["checkpoints"]) == {
        "best_dice",
        "best_loss",
        "last",
    }
    protocols = yaml.safe_load((root / "results" / "jsrt" / "rdiunet" / "bench.json").read_text())[
        "protocols"
    ]
    assert all(protocols[p]["measured"] for p in ("eager_b1", "best_batch", "end_to_end"))
    assert protocols["graphed_b1"] == {"measured": False, "reason": "CUDA graphs need a CUDA device"}
    figures = {p.name for p in (root / "reports" / "figures").glob("*.svg")}
    assert figures == {f"{kind}_{d}.svg" for kind in FIGURE_KINDS for d in DEMO_RUNS}


@pytest.mark.slow
def test_snakemake_report_collects_the_marked_outputs(demo, tmp_path):
    result = snakemake(demo, "--profile", "profiles/demo", "--report", str(tmp_path / "report.zip"))
    assert result.returncode == 0, result.stderr[-3000:]
    names = zipfile.ZipFile(tmp_path / "report.zip").namelist()
    assert any(n.endswith("report.html") for n in names) and any(n.endswith("table1.md") for n in names)


@pytest.mark.slow
def test_the_demos_cross_validated_dataset_tests_every_subject_once_per_model(demo):
    root = demo / "demo"
    summary = yaml.safe_load((root / "data" / "prepared" / "nerve_cv.json").read_text())
    assert summary["folds"]["k"] == 3 and summary["folds"]["by"] == "subject"
    subjects = sum(summary["folds"]["subjects"])
    for model in DEMO_RUNS["nerve_cv"]:
        tested = {}
        for seed in DEMO_SEEDS["nerve_cv"]:
            run = root / "results" / "nerve_cv" / model / f"seed{seed}"
            scores = pd.read_csv(run / "per_image.csv")
            assert yaml.safe_load((run / "metrics.json").read_text())["fold"]["test"] == seed % 3
            for group in scores[scores.checkpoint == "best_dice"].group.unique():
                tested.setdefault(group, []).append(seed)
        assert len(tested) == subjects and all(len(seeds) == 1 for seeds in tested.values()), tested
    claims = pd.read_csv(root / "reports" / "claims.csv")
    accuracy = claims[(claims.reading == "nerve = nerve_cv") & (claims.claim == "accuracy")].iloc[0]
    assert f"{subjects} subjects" in accuracy.evidence and "cross-validation" in accuracy.evidence
    table1 = pd.read_csv(root / "reports" / "table1.csv").set_index(["dataset", "model"])
    assert table1.loc[("nerve_cv", "rdiunet")].design == f"3-fold CV, {subjects} subjects tested"


@pytest.mark.slow
def test_demo_rerun_does_nothing_and_a_deleted_run_reruns_alone(demo):
    again = snakemake(demo, "--profile", "profiles/demo", "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    runs = sorted((demo / "demo" / "results").glob("*/*/seed*/metrics.json"))
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    shutil.rmtree(demo / "demo" / "results" / "jsrt" / "rdiunet" / "seed1")
    plan = snakemake(demo, "--profile", "profiles/demo", "-n")
    assert planned_jobs(plan.stdout) == {"train": 1, "tables": 1, "figures": 1, "report": 1, "all": 1}
    result = snakemake(demo, "--profile", "profiles/demo")
    assert result.returncode == 0, result.stderr[-3000:]
    changed = [p for p in runs if p.stat().st_mtime_ns != stamps[p]]
    assert changed == [demo / "demo" / "results" / "jsrt" / "rdiunet" / "seed1" / "metrics.json"]


def test_paper_config_uses_the_paper_thresholds():
    from rdiunet import paper

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    headline = {name: d["threshold"] for name, d in config["datasets"].items() if "source" not in d}
    assert headline == paper.THRESHOLDS
    assert config["stability_drop"] == paper.STABILITY_DROP
    assert config["training"]["lr"] == 1e-4  # Adam at the paper's learning rate
    assert len(config["seeds"]) >= 5  # the claim verdicts need five seeds
