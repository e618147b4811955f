"""Involution: shifted-product accumulation (rdiunet) against the unfold formulation, on CPU.

Measures forward+backward time (median of repeats) and peak resident memory above the baseline of
a fresh process holding only the inputs, for K in {3, 7}. Each case runs in its own processes so
that one case's peak cannot hide another's. Memory is measured in a separate process started with
MALLOC_MMAP_THRESHOLD_ low: glibc then returns every freed tensor to the system at once, so the
resident-set peak follows the live tensors instead of heap fragmentation. That setting slows the
allocator, so times come from a process with the default allocator.

    python benchmarks/involution.py [--batch 4] [--channels 64] [--size 128] [--repeats 5]
"""

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time

import torch

from rdiunet.models.involution import Involution, involve, involve_unfold

IMPLEMENTATIONS = {"shifted (rdiunet)": involve, "unfold (reference)": involve_unfold}


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_now_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def run_case(label: str, kernel_size: int, args: argparse.Namespace, results) -> None:
    """Put (median seconds, peak MiB above baseline) of forward+backward on `results`."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = Involution(args.channels, kernel_size=kernel_size)
    x = torch.randn(args.batch, args.channels, args.size, args.size, requires_grad=True)
    apply = IMPLEMENTATIONS[label]
    baseline = rss_now_mib()
    times = []
    for _ in range(args.repeats + 1):  # the first pass warms up the allocator and is not timed
        start = time.perf_counter()
        out = apply(x, module.kernel(x), kernel_size, 1)
        out.sum().backward()
        times.append(time.perf_counter() - start)
        x.grad = None
        module.zero_grad()
        del out
    results.put((statistics.median(times[1:]), rss_peak_mib() - baseline))


def measure(label: str, kernel_size: int, args: argparse.Namespace, low_mmap: bool):
    """Run one case in a fresh process; `low_mmap` makes its RSS follow live memory."""
    if low_mmap:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    else:
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    context = mp.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=run_case, args=(label, kernel_size, args, results))
    worker.start()
    result = results.get()
    worker.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    rows = []
    for kernel_size in (3, 7):
        for label in IMPLEMENTATIONS:
            seconds, _ = measure(label, kernel_size, args, low_mmap=False)
            _, peak = measure(label, kernel_size, args, low_mmap=True)
            rows.append((label, kernel_size, seconds, peak))

    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads; input {args.batch}x{args.channels}x{args.size}x{args.size} "
        f"float32, forward+backward, median of {args.repeats}"
    )
    print("| K | implementation | time (ms) | peak memory (MiB) |")
    print("|---|---|---|---|")
    for label, kernel_size, seconds, peak in rows:
        print(f"| {kernel_size} | {label} | {seconds * 1000:.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
