"""Cost of a model: parameters, FLOPs, latency, throughput, memory and energy.

Latency is timed at batch 1 after a warm-up, over many runs (the paper's "ms per image" is one
number from an unstated protocol; here it is a distribution: median, p90, p99). On a GPU each run
is timed with CUDA events after a synchronisation; on the CPU with perf_counter, at a fixed
thread count. Each run feeds a different random image from a pool (never zeros, which some
kernels shortcut). Throughput is images per second at larger batches. Every setting that changes
speed is recorded beside the numbers.
"""

import copy
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rdiunet.fileio import write_json
from rdiunet.gpu import GpuSampler, driver_version
from rdiunet.models import build
from rdiunet.provenance import environment, now
from rdiunet.runtime import DTYPE_NAMES, Runtime, make_runtime
from rdiunet.settings import BenchSettings

INPUT_POOL = 8
GPU_BATCH_SIZES = (1, 8, 64, 256)
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
    """Parameters and GFLOPs of every registered model in its default configuration (`rdiunet info`)."""
    from rdiunet.models import names

    rows = []
    for name in names():
        model = build(name)
        row = {"name": name, "params": count_parameters(model)}
        row.update({f"gflops_{size}": count_flops(model, size) / 1e9 for size in sizes})
        rows.append(row)
    return rows


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


class Timer:
    """Milliseconds of one call: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000


def input_pool(batch: int, size: int, runtime: Runtime) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    pool = [torch.rand(batch, 1, size, size, generator=generator) for _ in range(INPUT_POOL)]
    return [runtime.prepare_input(x.to(runtime.device)) for x in pool]


def bench_model(
    model: nn.Module,
    size: int,
    runtime: Runtime,
    batch_sizes: tuple[int, ...],
    runs: int,
    warmup: int,
    compile: bool = False,
    throughput_seconds: float = 2.0,
) -> dict:
    """Latency at batch 1 and throughput at each larger batch size of an eval-mode model."""
    device = runtime.device
    model = runtime.prepare_model(model).eval()
    runner = torch.compile(model) if compile else model
    timer = Timer(device)
    if runtime.cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def forward(x):
        with torch.inference_mode(), runtime.autocast():
            runner(x)

    pool = input_pool(1, size, runtime)
    for i in range(warmup):
        forward(pool[i % INPUT_POOL])
    latencies = [timer(lambda i=i: forward(pool[i % INPUT_POOL])) for i in range(runs)]
    latency = {
        "batch_size": 1,
        "runs": runs,
        "warmup": warmup,
        "median": statistics.median(latencies),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "mean": statistics.fmean(latencies),
        "min": min(latencies),
        "max": max(latencies),
    }

    throughput = []
    for batch in [b for b in batch_sizes if b > 1]:
        try:
            pool = input_pool(batch, size, runtime)
            for i in range(3):
                forward(pool[i % INPUT_POOL])
            # Repeat until `throughput_seconds` have passed (at least 3 batches).
            times, images = [], 0
            with GpuSampler(None, device, period=0.05) as sampler:
                while len(times) < 3 or sum(times) < throughput_seconds * 1000:
                    x = pool[len(times) % INPUT_POOL]
                    times.append(timer(lambda x=x: forward(x)))
                    images += batch
            energy = sampler.summary()
            row = {
                "batch_size": batch,
                "batches": len(times),
                "ms_per_batch": statistics.median(times),
                "images_per_s": images / (sum(times) / 1000),
            }
            if energy["available"] and energy["energy_j"] is not None:
                row["energy_per_image_j"] = energy["energy_j"] / images
                row["mean_power_w"] = energy["mean_power_w"]
            throughput.append(row)
        except torch.cuda.OutOfMemoryError:
            throughput.append({"batch_size": batch, "skipped": "out of GPU memory"})
            torch.cuda.empty_cache()

    if runtime.cuda:
        peak = {
            "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_memory_method": "torch.cuda.max_memory_allocated",
        }
    else:
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        peak = {"peak_memory_mib": grown / 1024, "peak_memory_method": "growth of the process's peak RSS"}
    return {"latency_ms": latency, "throughput": throughput, **peak}


def bench(settings: BenchSettings) -> dict:
    """Benchmark one model as `settings` say; the report holds everything needed to read the numbers."""
    settings.check()
    runtime = make_runtime(
        settings.device, amp=settings.amp, channels_last=settings.channels_last, threads=settings.threads
    )
    batch_sizes = settings.batch_sizes or (GPU_BATCH_SIZES if runtime.cuda else CPU_BATCH_SIZES)
    torch.manual_seed(0)
    model = build(settings.model, **settings.model_options)
    flops = count_flops(model, settings.size)
    measured = bench_model(
        model,
        settings.size,
        runtime,
        batch_sizes=batch_sizes,
        runs=settings.runs,
        warmup=settings.warmup,
        compile=settings.compile,
    )
    return {
        "model": settings.model,
        "model_options": settings.model_options,
        "size": settings.size,
        "in_channels": 1,
        "params": count_parameters(model),
        "flops_per_image": flops,
        "gflops_per_image": flops / 1e9,
        **measured,
        "settings": {
            "dtype": DTYPE_NAMES[runtime.amp_dtype],
            "amp": runtime.amp_dtype is not None,
            "channels_last": runtime.channels_last,
            "compile": settings.compile,
            "tf32": runtime.cuda and torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": runtime.cuda and torch.backends.cudnn.benchmark,
            "threads": torch.get_num_threads(),
            "inference_mode": True,
        },
        "environment": {**environment(runtime.device), "driver": driver_version() if runtime.cuda else None},
        "created": now(),
    }


def bench_command(settings: BenchSettings, out: Path) -> None:
    """`rdiunet bench`: write the report to `out` and print the batch-1 latency."""
    report = bench(settings)
    write_json(out, report)
    latency = report["latency_ms"]
    print(
        f"{settings.model} @ {settings.size}px on {report['environment']['device_name']}: batch-1 median "
        f"{latency['median']:.2f} ms (p90 {latency['p90']:.2f}, p99 {latency['p99']:.2f})"
    )
