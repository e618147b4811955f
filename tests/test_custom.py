"""A study of one's own: docs/custom.md followed step by step, and README's extension examples."""

import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
import yaml
from conftest import BIN, REPO, copy_workflow, job_env
from test_folder import write_pairs

from rdiunet.configuration import check_config
from rdiunet.data.sources import jsrt
from rdiunet.models import build, check_models, missing_packages
from rdiunet.readings import resolve_models

CUSTOM = REPO / "docs" / "custom.md"


def code_block(text: str, first_line: str) -> str:
    """The fenced code block whose first line is `first_line`."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        if block.splitlines()[0].strip() == first_line:
            return block
    raise AssertionError(f"no code block starting with {first_line!r}")


def write_model(folder):
    """Step 1: the model file of docs/custom.md, outside the package."""
    package = folder / "mynets"
    package.mkdir(parents=True)
    (package / "dsunet.py").write_text(code_block(CUSTOM.read_text(), "# mynets/dsunet.py"))
    return folder


def test_the_documented_model_builds_by_its_import_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_model(tmp_path)))
    model = build("mynets.dsunet:build", widths=[8, 16, 32])
    assert model(torch.rand(2, 1, 32, 48)).shape == (2, 1, 32, 48)


@pytest.mark.slow
def test_a_study_of_ones_own_runs_as_the_docs_say(tmp_path):
    code = write_model(tmp_path / "code")
    data = write_pairs(tmp_path / "scans", subjects=8, frames=4)
    workflow = copy_workflow(tmp_path / "workflow")
    # Step 3: copy the template and edit the copy.
    shutil.copytree(workflow / "profiles" / "custom", workflow / "profiles" / "mystudy")
    profile = workflow / "profiles" / "mystudy" / "config.yaml"
    profile.write_text(
        profile.read_text().replace("profiles/custom/study.yaml", "profiles/mystudy/study.yaml")
    )
    study_file = workflow / "profiles" / "mystudy" / "study.yaml"
    study = yaml.safe_load(study_file.read_text())
    study["datasets"]["mine"].update(
        images=str(data / "images" / "*.png"),
        masks=str(data / "masks" / "{name}"),
        size=32,
        epochs=4,
        batch_size=4,
    )
    # Demo-sized: narrow models, two seeds, the CPU.
    study["models"]["dsunet"]["widths"] = [8, 16, 32, 64]
    study["models"]["monai_unet"] = {"channels": [8, 16, 32, 64, 128]}
    study["models"]["unet"] = {"widths": [8, 16, 32, 64, 128]}
    if missing_packages("monai_unet"):  # the MONAI baseline trains wherever monai is installed
        del study["models"]["monai_unet"]
        study["compare"]["baselines"].remove("monai_unet")
    study["seeds"] = [0, 1]
    study["training"] |= {"device": "cpu", "threads": 1, "lr": 1.0e-3}
    study["bench"] = {
        "device": "cpu",
        "threads": 1,
        "runs": 10,
        "warmup": 2,
        "sessions": 2,
        "batch_sizes": [1, 4],
    }
    study_file.write_text(yaml.safe_dump(study))

    env = job_env(PATH=os.pathsep.join([str(BIN), os.environ["PATH"]]), PYTHONPATH=str(code))
    result = subprocess.run(
        [str(BIN / "snakemake"), "--profile", "profiles/mystudy"],
        cwd=workflow,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "is replaced by additional config" in result.stderr  # the paper's config.yaml is not merged in

    out = workflow / "study"
    models = list(study["models"])
    baseline = study["compare"]["baselines"][0]
    # Only the study's own dataset and models were planned and trained.
    assert sorted(p.name for p in (out / "results").iterdir()) == ["mine"]
    table1 = pd.read_csv(out / "reports" / "table1.csv")
    table2 = pd.read_csv(out / "reports" / "table2.csv")
    assert sorted(table1.model) == sorted(table2.model) == sorted(models)
    assert set(table1.dataset) == {"mine"}
    # Not the paper's study: none of its numbers beside these.
    assert not [column for column in [*table1.columns, *table2.columns] if column.startswith("paper_")]
    assert "paper" not in (out / "reports" / "table1.md").read_text().splitlines()[0]
    claims = pd.read_csv(out / "reports" / "claims.csv")
    headline = claims[claims.reading == "headline"].set_index("claim")
    assert headline.loc["accuracy", "statement"] == f"dsunet is more accurate than {baseline} (Dice) on mine"
    assert headline.loc["parameters", "statement"] == f"dsunet has fewer parameters than {baseline}"
    robustness = pd.read_csv(out / "reports" / "robustness.csv")
    assert "accuracy: mine" in robustness.columns
    if len(study["compare"]["baselines"]) > 1:
        assert "baseline = unet" in set(robustness.reading)
    html = (out / "reports" / "report.html").read_text()
    assert f"<title>{study['title']}</title>" in html
    for label in models:
        assert label in html
    assert "RDIU-Net" not in html and "Reproducing:" not in html and 'id="paper-check"' not in html
    # The data's provenance: every file with its checksum, one digest in the report.
    summary = yaml.safe_load((out / "data" / "prepared" / "mine.json").read_text())
    assert len(summary["files"]) == 2 * 32 and summary["raw"][0]["sha256"] in html


def test_readme_examples_match_the_code(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Adding a model or a dataset") : readme.index("## Citing")]
    # The study configuration: valid, and its models check out (the factory from docs/custom.md).
    study = yaml.safe_load(code_block(section, "# profiles/mystudy/study.yaml"))
    config = check_config(
        {**study, "seeds": [0]} | {"datasets": {"mine": {**study["datasets"]["mine"], "epochs": 1}}}
    )
    sys.path.insert(0, str(write_model(tmp_path / "code")))
    try:
        check_models({k: v for k, v in resolve_models(config).items() if not missing_packages(v["model"])})
    finally:
        sys.path.remove(str(tmp_path / "code"))
    # The registered model, run as the file it shows (in its own process: it registers a name).
    model_file = code_block(section, "# rdiunet/models/tiny_unet.py")
    check = textwrap.dedent(
        f"""
        import importlib.util, sys, types, torch
        import rdiunet.models
        source = {model_file!r}
        module = types.ModuleType("rdiunet.models.tiny_unet")
        module.__package__ = "rdiunet.models"
        sys.modules[module.__name__] = module
        exec(compile(source, "tiny_unet.py", "exec"), module.__dict__)
        model = rdiunet.models.build("tiny_unet", width=4)
        assert model(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)
        assert "tiny_unet" in rdiunet.models.names()
        """
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # The source's functions: the signatures it names are those of the smallest real source.
    names = re.search(r"\.\.\.  # (.*)", code_block(section, "# rdiunet/data/sources/kvasir.py")).group(1)
    for signature in re.findall(r"(\w+)\(([^)]*)\)", names):
        function, parameters = signature
        real = {"synth_kvasir": jsrt.synth_jsrt}.get(function) or getattr(jsrt, function)
        assert [p.strip() for p in parameters.split(",")] == list(inspect.signature(real).parameters), (
            function
        )
