import json

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from torch import nn

from rdiunet.bench import INPUT_POOL, count_flops, count_parameters, input_pool
from rdiunet.runtime import Runtime


def test_flops_of_a_convolution_are_two_per_multiply_add():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    assert count_flops(conv, size=10, in_channels=3) == 2 * 3 * 8 * 9 * 10 * 10


def test_flop_count_leaves_the_model_untouched():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)).train()
    before = [p.detach().clone() for p in model.parameters()]
    count_flops(model, size=16)
    assert model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_parameter_count():
    assert count_parameters(nn.Linear(10, 3)) == 33


# --- rdiunet bench on the CPU ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = run_cli(
        "bench",
        "--model",
        "rdiunet",
        "--size",
        "32",
        "--out",
        out,
        "--device",
        "cpu",
        "--batch-sizes",
        "1,4",
        "--threads",
        "2",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def test_bench_json_is_self_describing(bench_json):
    assert {
        "model",
        "size",
        "params",
        "flops_per_image",
        "latency_ms",
        "throughput",
        "peak_memory_mib",
        "settings",
        "environment",
        "created",
    } <= set(bench_json)
    assert bench_json["settings"]["dtype"] == "float32" and bench_json["settings"]["threads"] == 2
    assert bench_json["environment"]["torch"] == torch.__version__
    assert bench_json["environment"]["device"] == "cpu" and bench_json["environment"]["device_name"]


def test_bench_latency_percentiles_and_throughput_are_sane(bench_json):
    latency = bench_json["latency_ms"]
    assert latency["runs"] >= 200
    assert 0 < latency["min"] <= latency["median"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    (row,) = bench_json["throughput"]
    assert row["batch_size"] == 4 and row["images_per_s"] > 0 and row["batches"] >= 3


def test_bench_params_equal_rdiunet_info(bench_json):
    info = {row["name"]: row for row in json.loads(run_cli("info", "--json").stdout)}
    assert bench_json["params"] == info["rdiunet"]["params"]
    # FLOPs scale with pixels: 32^2 is 1/16 of 128^2.
    assert bench_json["gflops_per_image"] == pytest.approx(info["rdiunet"]["gflops_128"] / 16)


def test_bench_inputs_differ_between_runs_and_are_not_zero():
    pool = input_pool(2, 16, Runtime(torch.device("cpu"), None, channels_last=False))
    assert len(pool) == INPUT_POOL
    assert all(x.abs().sum() > 0 for x in pool)
    assert len({float(x.sum()) for x in pool}) == INPUT_POOL


def test_bench_bad_options_are_one_line(tmp_path):
    assert_one_line_error(
        run_cli("bench", "--model", "unet", "--size", "30", "--out", tmp_path / "b.json"), "multiple of 16"
    )
    assert_one_line_error(
        run_cli(
            "bench", "--model", "unet", "--size", "32", "--out", tmp_path / "b.json", "--batch-sizes", "1,x"
        ),
        "--batch-sizes",
    )
    assert_one_line_error(
        run_cli(
            "bench", "--model", "unet", "--size", "32", "--out", tmp_path / "b.json", "--device", "cuda:0"
        )
        if not torch.cuda.is_available()
        else run_cli("bench", "--model", "vnet", "--size", "32", "--out", tmp_path),
        "cuda" if not torch.cuda.is_available() else "unknown model",
    )
    assert not (tmp_path / "b.json").exists()
