"""CITATION.cff is valid Citation File Format 1.2.0 and names what the suite stands on.

The schema is the Citation File Format project's own (tests/data/cff-1.2.0.schema.json, as
shipped with cffconvert 2.0.0, CC-BY-4.0): `cffconvert --validate` checks against the same file,
but pins a jsonschema older than the one Snakemake needs, so the check runs here with ours.
"""

import copy
import json

import jsonschema
import pytest
import yaml
from conftest import REPO

SCHEMA = json.loads((REPO / "tests" / "data" / "cff-1.2.0.schema.json").read_text())


def citation() -> dict:
    # CFF is YAML 1.2; its keys and values here are plain strings, numbers and lists.
    return yaml.safe_load((REPO / "CITATION.cff").read_text())


def problems(document: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def test_citation_file_is_valid_cff_1_2_0():
    assert problems(citation()) == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d.pop("cff-version"),
        lambda d: d.update({"license": "not-a-licence"}),
        lambda d: d["references"][0].pop("title"),
    ],
)
def test_the_check_rejects_a_broken_file(break_it):
    document = copy.deepcopy(citation())
    break_it(document)
    assert problems(document)


def test_references_name_the_paper_the_baseline_the_block_and_the_three_datasets():
    titles = " | ".join(reference["title"] for reference in citation()["references"])
    for expected in (
        "RDIU-Net: Lightweight Medical Image Segmentation Network",
        "U-Net: Convolutional Networks for Biomedical Image Segmentation",
        "Involution",
        "Ultrasound Nerve Segmentation",
        "chest radiographs",  # JSRT
        "ISIC 2018",
    ):
        assert expected in titles, expected
    isic = next(r for r in citation()["references"] if r["title"].startswith("ISIC 2018"))
    assert isic["license"] == "CC-BY-NC-4.0"
