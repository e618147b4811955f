"""How fast a model runs, by four protocols (rdiunet.readings.PROTOCOLS).

The paper's "ms per image" comes from an unstated protocol, and the protocols disagree by large
factors on a GPU, so each is measured and named:

- eager_b1: batch 1 in eager mode, timed per call after a warm-up; median, p90, p99 over the runs;
- graphed_b1: batch 1 replayed from a CUDA graph, which removes the per-layer launch cost that
  dominates small models at batch 1 (GPU only);
- best_batch: milliseconds per image at the batch size with the highest throughput;
- end_to_end: batch 1 from a host tensor to a host mask: copy in, forward, sigmoid, threshold,
  copy out, synchronised.

On a GPU each call is timed with CUDA events on the current device after a synchronisation; on the
CPU with perf_counter, at a fixed thread count. Every run feeds a different random image from a
pool (never zeros, which some kernels shortcut). Beside each latency protocol the card's SM clock
and NVML's clock-event (throttle) reasons are recorded before and after the timed runs: a card
held down by its power cap or heat gives another number than a cool one.

Throughput is timed with one event pair around many batches (a synchronisation per batch would
leave the GPU idle between them), over a window of at least THROUGHPUT_WINDOW_S seconds, and of at
least ENERGY_WINDOW_S where NVML measures the energy per image: the card's energy counter moves in
steps and its power reading lags, so a short window would mostly measure those.
"""

import math
import statistics
import time

import numpy as np
import torch
from torch import nn

from rdiunet.nvml import GpuSampler, card_state, load_nvml
from rdiunet.runtime import Runtime

INPUT_POOL = 8
THROUGHPUT_WINDOW_S = 2.0
ENERGY_WINDOW_S = 10.0
GRAPH_UNTIMED_REPLAYS = 10


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

    def loop(self, fn, iterations: int) -> float:
        """Milliseconds of `iterations` calls of fn(i), timed as one window."""
        return self(lambda: [fn(i) for i in range(iterations)])


class PeakMemory:
    """The peak CUDA memory of a block above what was allocated when it began (the model's
    weights and whatever else was alive then); nothing on a CPU."""

    def __init__(self, runtime: Runtime):
        self.device = runtime.device if runtime.cuda else None
        self.baseline = self.peak = None

    def __enter__(self) -> "PeakMemory":
        if self.device is not None:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device is not None:
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.baseline

    def record(self) -> dict:
        if self.peak is None:
            return {}
        return {"peak_memory_mib": self.peak / 2**20, "baseline_memory_mib": self.baseline / 2**20}


def card_record(runtime: Runtime, before: dict) -> dict:
    """The card's SM clock and clock-event reasons before and after a protocol's timed runs."""
    if not before:
        return {}
    return {"card_before": before, "card_after": card_state(runtime.device)}


def input_pool(batch: int, size: int, runtime: Runtime, host: bool = False) -> list[torch.Tensor]:
    """INPUT_POOL distinct random batches, on the device (or on the host, as end_to_end needs)."""
    generator = torch.Generator().manual_seed(batch)
    pool = [torch.rand(batch, 1, size, size, generator=generator) for _ in range(INPUT_POOL)]
    return pool if host else [runtime.prepare_input(x.to(runtime.device)) for x in pool]


def distribution(times: list[float], runs: int, warmup: int) -> dict:
    return {
        "measured": True,
        "ms_per_image": statistics.median(times),
        "batch_size": 1,
        "runs": runs,
        "warmup": warmup,
        "median": statistics.median(times),
        "p90": float(np.percentile(times, 90)),
        "p99": float(np.percentile(times, 99)),
        "mean": statistics.fmean(times),
        "min": min(times),
        "max": max(times),
    }


def not_measured(reason: str) -> dict:
    return {"measured": False, "reason": reason}


def forward_of(model: nn.Module, runtime: Runtime):
    def forward(x):
        with torch.inference_mode(), runtime.autocast():
            return model(x)

    return forward


def eager_b1(model: nn.Module, size: int, runtime: Runtime, runs: int, warmup: int) -> dict:
    """Batch 1, eager; with the peak memory of batch 1 above the model's own."""
    forward, timer = forward_of(model, runtime), Timer(runtime.device)
    with PeakMemory(runtime) as memory:
        pool = input_pool(1, size, runtime)
        for i in range(warmup):
            forward(pool[i % INPUT_POOL])
        before = card_state(runtime.device)
        times = [timer(lambda i=i: forward(pool[i % INPUT_POOL])) for i in range(runs)]
    return distribution(times, runs, warmup) | memory.record() | card_record(runtime, before)


def graphed_b1(model: nn.Module, size: int, runtime: Runtime, runs: int, warmup: int) -> dict:
    """Batch 1 captured once in a CUDA graph and replayed; each run copies a new image into the
    graph's input first (inside the timed call, as serving would)."""
    if not runtime.cuda:
        return not_measured("CUDA graphs need a CUDA device")
    pool = input_pool(1, size, runtime)
    static = pool[0].clone()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad(), runtime.autocast():
            for _ in range(max(3, warmup)):  # cuDNN autotuning and lazy allocations before capture
                model(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad(), runtime.autocast():
            model(static)
    except RuntimeError as error:
        return not_measured(f"the model could not be captured in a CUDA graph ({str(error).splitlines()[0]})")
    timer = Timer(runtime.device)

    def replay(x):
        static.copy_(x)
        graph.replay()

    # The first replays upload the graph and settle the clocks: not what serving a model costs.
    for i in range(GRAPH_UNTIMED_REPLAYS):
        replay(pool[i % INPUT_POOL])
    torch.cuda.synchronize()
    before = card_state(runtime.device)
    times = [timer(lambda i=i: replay(pool[i % INPUT_POOL])) for i in range(runs)]
    return (
        distribution(times, runs, warmup)
        | {"captured": "torch.cuda.CUDAGraph", "untimed_replays": GRAPH_UNTIMED_REPLAYS}
        | card_record(runtime, before)
    )


def end_to_end(model: nn.Module, size: int, runtime: Runtime, runs: int, warmup: int) -> dict:
    """A host tensor in, a host mask out: the latency a caller of the model sees."""
    forward = forward_of(model, runtime)
    pool = input_pool(1, size, runtime, host=True)

    def call(x: torch.Tensor) -> torch.Tensor:
        logits = forward(runtime.prepare_input(x.to(runtime.device)))
        mask = torch.sigmoid(logits.float()) > 0.5
        return mask.to("cpu")  # waits for the device: the mask is on the host when this returns

    for i in range(warmup):
        call(pool[i % INPUT_POOL])
    before = card_state(runtime.device)
    times = []
    for i in range(runs):
        start = time.perf_counter()
        call(pool[i % INPUT_POOL])
        times.append((time.perf_counter() - start) * 1000)
    return (
        distribution(times, runs, warmup)
        | {"includes": "host-to-device copy, forward, sigmoid, threshold, copy back"}
        | card_record(runtime, before)
    )


def timed_window(forward, timer: Timer, pool: list[torch.Tensor], runtime: Runtime, window_s: float):
    """(batches, milliseconds, NVML summary) of one window of at least `window_s` seconds."""
    for i in range(3):
        forward(pool[i % INPUT_POOL])
    per_batch_ms = timer.loop(lambda i: forward(pool[i % INPUT_POOL]), 3) / 3
    batches = max(3, math.ceil(window_s * 1000 / max(per_batch_ms, 1e-3)))
    with GpuSampler(None, runtime.device, period=0.05) as sampler:
        total_ms = timer.loop(lambda i: forward(pool[i % INPUT_POOL]), batches)
    return batches, total_ms, sampler.summary()


def throughput(
    model: nn.Module, size: int, runtime: Runtime, batch_sizes: tuple[int, ...], window_s: float | None = None
) -> list[dict]:
    """Images per second at each batch size above 1, timed as one window (the module's
    docstring), with each batch size's peak memory above the model's own and, where NVML answers,
    its energy per image. `window_s` overrides the window (a timing session's shorter one, whose
    energy is not used)."""
    forward, timer = forward_of(model, runtime), Timer(runtime.device)
    if window_s is None:
        window_s = ENERGY_WINDOW_S if runtime.cuda and load_nvml()[0] is not None else THROUGHPUT_WINDOW_S
    rows = []
    for batch in [b for b in batch_sizes if b > 1]:
        # The previous batch size's inputs are gone before this one's peak is counted.
        try:
            with PeakMemory(runtime) as memory:
                batches, total_ms, energy = timed_window(
                    forward, timer, input_pool(batch, size, runtime), runtime, window_s
                )
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch_size": batch, "skipped": "out of GPU memory"})
            torch.cuda.empty_cache()
            continue
        images = batches * batch
        row = {
            "batch_size": batch,
            "batches": batches,
            "window_s": total_ms / 1000,
            "ms_per_batch": total_ms / batches,
            "images_per_s": images / (total_ms / 1000),
            **memory.record(),
        }
        if energy["available"] and energy["energy_j"] is not None:
            row["energy_per_image_j"] = energy["energy_j"] / images
            row["mean_power_w"] = energy["mean_power_w"]
            row["energy_scope"] = energy["energy_scope"]
            row["card_shared"] = energy["card_shared"]
        rows.append(row)
    return rows


def best_batch(eager: dict, rows: list[dict]) -> dict:
    """The batch size with the highest throughput (batch 1 included, from eager_b1), per image."""
    candidates = [(1000 / eager["median"], 1)] + [
        (r["images_per_s"], r["batch_size"]) for r in rows if "images_per_s" in r
    ]
    images_per_s, batch = max(candidates)
    return {
        "measured": True,
        "ms_per_image": 1000 / images_per_s,
        "batch_size": batch,
        "images_per_s": images_per_s,
        "batch_sizes_tried": [1] + [r["batch_size"] for r in rows],
    }
