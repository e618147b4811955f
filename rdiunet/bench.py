"""Cost of a model: parameters, FLOPs, speed by every protocol (rdiunet/speed.py) and, on a GPU,
in every precision reading, throughput, memory and energy. Every setting that changes speed is
recorded beside the numbers (bench.json).
"""

import copy
import resource
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rdiunet.fileio import write_json
from rdiunet.gpu import driver_version
from rdiunet.models import build, check_fits
from rdiunet.provenance import environment, now
from rdiunet.runtime import Runtime, make_runtime, set_precision
from rdiunet.settings import BenchSettings
from rdiunet.speed import best_batch, eager_b1, end_to_end, graphed_b1, not_measured, throughput

GPU_BATCH_SIZES = (1, 8, 64, 256)
LATENCY_KEYS = ("batch_size", "runs", "warmup", "median", "p90", "p99", "mean", "min", "max")
CPU_BATCH_SIZES = (1, 8)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, size: int, in_channels: int = 1) -> int:
    """Forward FLOPs for one `size` x `size` image, counted by torch's FlopCounterMode.

    Convolutions and matrix products count 2 FLOPs per multiply-add; element-wise work (BN, ReLU,
    the involution's per-pixel products) is not counted, as in most published FLOP tables. A copy
    of the model runs on the meta device: shapes only, no arithmetic, so any size is cheap and the
    original keeps its weights and train/eval mode.
    """
    shape_only = copy.deepcopy(model).to("meta").eval()
    image = torch.empty(1, in_channels, size, size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        shape_only(image)
    return counter.get_total_flops()


def model_costs(sizes: tuple[int, ...] = (128, 256)) -> list[dict]:
    """Parameters and GFLOPs of every registered model in its default configuration (`rdiunet
    info`); a model whose optional package is missing says what to install instead."""
    from rdiunet.models import missing_packages, names
    from rdiunet.models.registry import install_hint

    rows = []
    for name in names():
        missing = missing_packages(name)
        if missing:
            rows.append({"name": name, "needs": ", ".join(missing), "install": install_hint(missing)})
            continue
        model = build(name)
        row = {"name": name, "params": count_parameters(model)}
        row.update({f"gflops_{size}": count_flops(model, size) / 1e9 for size in sizes})
        rows.append(row)
    return rows


def run_protocol(
    name: str,
    model: nn.Module,
    size: int,
    runtime: Runtime,
    settings: BenchSettings,
    batch_sizes,
    window_s: float | None = None,
):
    """One protocol's measurement (rdiunet/speed.py); `window_s`: best_batch's throughput window."""
    if name == "graphed_b1":
        return graphed_b1(model, size, runtime, settings.runs, settings.warmup)
    if name == "end_to_end":
        return end_to_end(model, size, runtime, settings.runs, settings.warmup)
    eager = eager_b1(model, size, runtime, settings.runs, settings.warmup)
    if name == "eager_b1":
        return eager
    return best_batch(eager, throughput(model, size, runtime, batch_sizes, window_s))


def measure(model: nn.Module, size: int, runtime: Runtime, settings: BenchSettings, batch_sizes) -> dict:
    """Every protocol at the runtime's precision, and the throughput rows best_batch comes from."""
    eager = eager_b1(model, size, runtime, settings.runs, settings.warmup)
    rows = throughput(model, size, runtime, batch_sizes)
    return {
        "protocols": {
            "eager_b1": eager,
            "graphed_b1": run_protocol("graphed_b1", model, size, runtime, settings, batch_sizes),
            "best_batch": best_batch(eager, rows),
            "end_to_end": run_protocol("end_to_end", model, size, runtime, settings, batch_sizes),
        },
        "throughput": rows,
    }


def other_precisions(
    model, size: int, runtime: Runtime, settings: BenchSettings, batch_sizes, measured: dict
):
    """The speed readings: the headline protocol in each precision reading, on a GPU."""
    results = {}
    for precision in settings.precisions:
        if precision == runtime.precision:
            results[precision] = measured[settings.protocol]
        elif not runtime.cuda:
            reason = (
                f"not measured on this device ({runtime.device.type}): TF32 and bfloat16 are GPU readings"
            )
            results[precision] = not_measured(reason)
        else:
            set_precision(precision)
            try:
                other = replace(runtime, precision=precision)
                results[precision] = run_protocol(
                    settings.protocol, model, size, other, settings, batch_sizes
                )
            finally:
                set_precision(runtime.precision)
    return results


def peak_memory(runtime: Runtime, measured: dict, rss_before: int) -> dict:
    """The largest peak of the measurements, labelled with what it covers."""
    if not runtime.cuda:
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        return {"peak_memory_mib": grown / 1024, "peak_memory_method": "growth of the process's peak RSS"}
    peaks = [measured["protocols"]["eager_b1"]] + measured["throughput"]
    peaks = [entry["peak_memory_mib"] for entry in peaks if "peak_memory_mib" in entry]
    return {
        "peak_memory_mib": max(peaks, default=None),
        "peak_memory_method": (
            "the largest torch.cuda.max_memory_allocated above what was allocated before "
            "(the model's weights), over eager batch 1 and each throughput batch size; inputs and "
            "activations, not the CUDA context or cuDNN workspaces outside the caching allocator"
        ),
    }


def bench(settings: BenchSettings) -> dict:
    """Benchmark one model as `settings` say; the report holds everything needed to read the numbers.
    The card is held for the benchmark alone while it runs, and let go when it ends (or fails)."""
    settings.check()
    check_fits(settings.model, settings.size, settings.model_options)
    runtime = make_runtime(
        settings.device,
        precision=settings.precision,
        channels_last=settings.channels_last,
        threads=settings.threads,
        role="bench",
    )
    with runtime:
        return bench_on(runtime, settings)


def bench_on(runtime: Runtime, settings: BenchSettings) -> dict:
    batch_sizes = settings.batch_sizes or (GPU_BATCH_SIZES if runtime.cuda else CPU_BATCH_SIZES)
    torch.manual_seed(0)
    model = build(settings.model, **settings.model_options)
    flops = count_flops(model, settings.size)
    model = runtime.prepare_model(model).eval()
    runner = torch.compile(model) if settings.compile else model
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    measured = measure(runner, settings.size, runtime, settings, batch_sizes)
    peak = peak_memory(runtime, measured, rss_before)
    settings_now = runtime.settings()  # before other precisions flip the switches and back
    precisions = other_precisions(
        runner, settings.size, runtime, settings, batch_sizes, measured["protocols"]
    )
    eager = measured["protocols"]["eager_b1"]
    return {
        "model": settings.model,
        "model_options": settings.model_options,
        "size": settings.size,
        "in_channels": 1,
        "params": count_parameters(model),
        "flops_per_image": flops,
        "gflops_per_image": flops / 1e9,
        "precision": runtime.precision,
        "protocol": settings.protocol,
        "protocols": measured["protocols"],
        "precisions": precisions,
        "latency_ms": {k: v for k, v in eager.items() if k in LATENCY_KEYS},
        "throughput": measured["throughput"],
        **peak,
        "settings": {
            **settings_now,
            "compile": settings.compile,
            "cudnn_benchmark": runtime.cuda and torch.backends.cudnn.benchmark,
            "threads": torch.get_num_threads(),
            "inference_mode": True,
        },
        "environment": {**environment(runtime.device), "driver": driver_version() if runtime.cuda else None},
        "created": now(),
    }


def bench_command(settings: BenchSettings, out: Path) -> None:
    """`rdiunet bench`: write the report to `out` and print each protocol's ms per image."""
    report = bench(settings)
    write_json(out, report)
    speeds = ", ".join(
        f"{name} {p['ms_per_image']:.2f}" if p["measured"] else f"{name} not measured"
        for name, p in report["protocols"].items()
    )
    print(
        f"{settings.model} @ {settings.size}px, {report['precision']}, on "
        f"{report['environment']['device_name']}: ms per image: {speeds}"
    )
