import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, assert_one_line_error, run_cli
from torch import nn

from rdiunet.bench import count_flops, count_parameters
from rdiunet.runtime import Runtime
from rdiunet.speed import INPUT_POOL, input_pool


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
    assert bench_json["precision"] == "tf32" and bench_json["settings"]["threads"] == 2
    # The precision as it really was: no autocast; the TF32 switches on, but a CPU has no TF32.
    settings = bench_json["settings"]
    assert settings["autocast_dtype"] is None and settings["tf32_applies"] is False
    assert settings["matmul_allow_tf32"] is True and settings["cudnn_allow_tf32"] is True
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
    pool = input_pool(2, 16, Runtime(torch.device("cpu"), "tf32", channels_last=False))
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


def test_every_speed_protocol_is_measured_or_says_why_not_on_the_cpu(bench_json):
    protocols = bench_json["protocols"]
    assert list(protocols) == ["eager_b1", "graphed_b1", "best_batch", "end_to_end"]
    assert protocols["graphed_b1"] == {"measured": False, "reason": "CUDA graphs need a CUDA device"}
    eager, best, end = protocols["eager_b1"], protocols["best_batch"], protocols["end_to_end"]
    assert (
        eager["measured"] and eager["ms_per_image"] == eager["median"] == bench_json["latency_ms"]["median"]
    )
    assert end["measured"] and end["ms_per_image"] > 0 and "copy back" in end["includes"]
    # best_batch: the batch size of the highest throughput, batch 1 (from eager_b1) included.
    candidates = {1: 1000 / eager["median"]} | {
        r["batch_size"]: r["images_per_s"] for r in bench_json["throughput"] if "images_per_s" in r
    }
    assert best["batch_size"] == max(candidates, key=candidates.get)
    assert best["ms_per_image"] == pytest.approx(1000 / candidates[best["batch_size"]])
    assert best["batch_sizes_tried"] == [1, 4]


def test_precision_readings_are_gpu_readings(bench_json):
    precisions = bench_json["precisions"]
    assert precisions["tf32"] == bench_json["protocols"]["eager_b1"]  # the headline, measured once
    for name in ("fp32", "bf16"):
        assert (
            precisions[name]["measured"] is False
            and "not measured on this device (cpu)" in precisions[name]["reason"]
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_protocol_and_precisions_on_a_gpu(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli(
        *("bench", "--model", "rdiunet", "--size", "64", "--out", out, "--runs", "30", "--warmup", "5"),
        *("--batch-sizes", "1,8", "--model-opt", "widths=8,16,32,64", "--model-opt", "growth=16"),
        process=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["protocols"]["graphed_b1"]["measured"], report["protocols"]["graphed_b1"]
    assert all(report["precisions"][p]["measured"] for p in ("tf32", "fp32", "bf16"))
    assert report["settings"]["tf32_applies"] is True


# --- the GPU acceptance script, as a CPU smoke test ----------------------------------------------


def gpu_check(tmp_path, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict]:
    """benchmarks/gpu_check.sh as a user runs it, and the JSON report it wrote."""
    script = REPO / "benchmarks" / "gpu_check.sh"
    result = subprocess.run(
        ["bash", str(script), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (report_file,) = (tmp_path / "out").glob("gpu_check-*.json")
    report = json.loads(report_file.read_text())
    if report["cuda"]:
        pytest.skip("a CUDA device is here: the script measured (docs/benchmarks.md)")
    return result, report


STEPS = ["tests", "data", "bench", "train", "slots", "bench_large_cl"]


@pytest.mark.slow
def test_gpu_acceptance_script_runs_on_a_cpu_with_its_gpu_parts_marked_skipped(tmp_path):
    # A claim that deadlocks its own process (a second benchmark) or outlives its work would hang
    # here until the timeout, or stop the script: the CPU run claims a stand-in card.
    result, report = gpu_check(tmp_path)
    planned = re.search(r"gpu_check plan: expected (\d+) s on one H100", result.stdout)
    assert planned and int(planned[1]) < 5 * 60
    assert list(report["steps"]) == STEPS
    assert all(step["status"].startswith("skipped (no CUDA device)") for step in report["steps"].values())
    bench_rows = report["steps"]["bench"]["rows"] + report["steps"]["bench_large_cl"]["rows"]
    assert {(row["model"], row["size"], row["layout"]) for row in bench_rows} == {
        (model, size, layout) for model in ("unet", "rdiunet") for size in (64, 96)
        for layout in ("nchw", "channels_last")
    }  # fmt: skip
    for row in bench_rows:
        assert row["settings"]["channels_last"] == (row["layout"] == "channels_last")
        assert row["settings"]["gpu_claim"]["card"] == "standin-gpu-check"
        assert row["settings"]["gpu_claim"]["role"] == "bench"
    trains = report["steps"]["train"]["rows"]
    assert [row["model"] for row in trains] == ["unet", "rdiunet"]
    assert all(row["gpu"] == {"available": False, "reason": "device is cpu, not a GPU"} for row in trains)
    assert all(row["gpu_claim"]["role"] == "train" for row in trains)
    assert [row["gpu_slots"] for row in report["steps"]["slots"]["rows"]] == [1, 2]
    # With one slot the second run waited for the first: the slot runs claimed the stand-in card.
    assert (
        "waiting for a free training slot"
        in (tmp_path / "work" / "slots1" / "run1.log").read_text()
        + (tmp_path / "work" / "slots1" / "run0.log").read_text()
    )
    assert "GPU check on no GPU (CPU smoke test)" in result.stdout and "runs/hour" in result.stdout


def test_the_acceptance_scripts_plan_fits_five_minutes_and_the_docs_show_its_arithmetic():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check as script
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    total = sum(script.ESTIMATES.values())
    assert total < script.BUDGET_S < 5 * 60 or not script.CUDA
    assert total < 290 and [name for name, _ in script.PLAN] == list(script.ESTIMATES)
    docs = (REPO / "docs" / "benchmarks.md").read_text()
    assert f"| **all** | | **{total} s** |" in docs
    for name, seconds in script.ESTIMATES.items():
        assert f"| {name} | " in docs and f"| {seconds} s |" in docs


def test_gpu_acceptance_script_keeps_to_its_budget_and_still_reports(tmp_path):
    result, report = gpu_check(tmp_path, "--budget-s", "3", timeout=120)
    assert list(report["steps"]) == STEPS and report["budget_s"] == 3
    assert all(step["status"].startswith("cut: ") for step in report["steps"].values()), report["steps"]
    assert "written:" in result.stdout


# --- rdiunet speed: every model of a dataset in interleaved sessions ------------------------------


def test_speed_times_every_model_in_interleaved_sessions(tmp_path):
    from conftest import TINY

    out = tmp_path / "speed.json"
    models = {"small": {"model": "rdiunet", **TINY}, "unet": {"model": "unet", "widths": [4, 8, 16, 32, 64]}}
    result = run_cli(
        "speed", "--models-json", json.dumps(models), "--size", "32", "--sessions", "2", "--runs", "3",
        "--warmup", "1", "--batch-sizes", "1,2", "--device", "cpu", "--threads", "1", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    headline = [r for r in report["timings"] if r["protocol"] == "eager_b1" and r["precision"] == "tf32"]
    # One row per model and session, the order alternating so that no model always goes first.
    assert [(r["model"], r["session"]) for r in headline] == [
        ("small", 0),
        ("unet", 0),
        ("unet", 1),
        ("small", 1),
    ]
    assert all(r["ms"] > 0 for r in headline)
    graphed = [r for r in report["timings"] if r["protocol"] == "graphed_b1"]
    assert all(r["ms"] is None and "CUDA" in r["reason"] for r in graphed)
    assert {r["protocol"] for r in report["timings"] if r["ms"]} == {"eager_b1", "best_batch", "end_to_end"}
    assert report["device_type"] == "cpu" and report["sessions"] == 2
    assert report["models"]["small"]["model"] == "rdiunet" and report["models"]["small"]["params"] > 0
    assert "small @ 32px" in result.stdout and "mean of 2 sessions" in result.stdout


def test_speed_needs_models_named_in_one_line(tmp_path):
    out = tmp_path / "speed.json"
    assert_one_line_error(run_cli("speed", "--size", "32", "--out", out), "name the models to time")
    assert_one_line_error(
        run_cli("speed", "--models-json", "{", "--size", "32", "--out", out), "not valid JSON"
    )
    assert not out.exists()
