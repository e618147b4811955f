import json
import subprocess
import sys

import pytest
from conftest import run_cli

from rdiunet.bench import count_parameters
from rdiunet.models import build, missing_packages, names


def test_info_json_lists_every_model_with_its_cost():
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(names())
    for name, row in rows.items():
        if missing_packages(name):
            assert row["needs"] and "params" not in row
            continue
        assert row["params"] == count_parameters(build(name))
        # Convolution FLOPs scale with the number of pixels: 4x from 128^2 to 256^2.
        assert row["gflops_256"] == pytest.approx(4 * row["gflops_128"], rel=1e-6)
        assert row["gflops_128"] > 0
    assert rows["rdiunet"]["gflops_128"] < rows["unet"]["gflops_128"]


def test_info_table_is_human_readable():
    result = run_cli("info")
    assert result.returncode == 0
    assert "unet" in result.stdout and "GFLOPs@128" in result.stdout


def test_unknown_verb_exits_non_zero_with_usage():
    result = run_cli("nonsense", process=True)
    assert result.returncode != 0
    assert "invalid choice" in result.stderr


def test_python_dash_m_rdiunet_is_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "rdiunet", "info", "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert {row["name"] for row in json.loads(result.stdout)} == set(names())
