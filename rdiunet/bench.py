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
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rdiunet.gpu import GpuSampler, driver_version
from rdiunet.provenance import environment, now

INPUT_POOL = 8


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


def input_pool(batch: int, size: int, device: torch.device, channels_last: bool) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    pool = [torch.rand(batch, 1, size, size, generator=generator) for _ in range(INPUT_POOL)]
    pool = [x.to(device) for x in pool]
    return [x.contiguous(memory_format=torch.channels_last) for x in pool] if channels_last else pool


def bench_model(
    model: nn.Module,
    size: int,
    device: torch.device,
    batch_sizes: tuple[int, ...] = (1, 8),
    runs: int = 200,
    warmup: int = 20,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    compile: bool = False,
    throughput_seconds: float = 2.0,
) -> dict:
    """Latency at batch 1 and throughput at each larger batch size of an eval-mode model."""
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    runner = torch.compile(model) if compile else model
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    timer = Timer(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def forward(x):
        with torch.inference_mode(), autocast:
            runner(x)

    pool = input_pool(1, size, device, channels_last)
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
            pool = input_pool(batch, size, device, channels_last)
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

    if cuda:
        peak = {
            "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_memory_method": "torch.cuda.max_memory_allocated",
        }
    else:
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        peak = {"peak_memory_mib": grown / 1024, "peak_memory_method": "growth of the process's peak RSS"}
    return {"latency_ms": latency, "throughput": throughput, **peak}


def bench_report(
    name: str,
    options: dict,
    model: nn.Module,
    size: int,
    device: torch.device,
    amp: torch.dtype | None,
    channels_last: bool,
    compile: bool,
    **bench_options,
) -> dict:
    """bench_model's numbers with everything needed to read them: model, costs, device, settings."""
    flops = count_flops(model, size)
    measured = bench_model(
        model, size, device, amp=amp, channels_last=channels_last, compile=compile, **bench_options
    )
    cuda = device.type == "cuda"
    return {
        "model": name,
        "model_options": options,
        "size": size,
        "in_channels": 1,
        "params": count_parameters(model),
        "flops_per_image": flops,
        "gflops_per_image": flops / 1e9,
        **measured,
        "settings": {
            "dtype": {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[amp],
            "amp": amp is not None,
            "channels_last": channels_last,
            "compile": compile,
            "tf32": cuda and torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": cuda and torch.backends.cudnn.benchmark,
            "threads": torch.get_num_threads(),
            "inference_mode": True,
        },
        "environment": {**environment(device), "driver": driver_version() if cuda else None},
        "created": now(),
    }
