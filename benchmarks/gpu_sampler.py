"""The NVML sampler's own cost: CPU time of its thread per second of sampling.

With a GPU and driver the real NVML is measured; without one, a stand-in that answers at once
measures the sampler's Python overhead alone (the floor; real NVML calls add their driver time).

    python benchmarks/gpu_sampler.py [--seconds 5] [--period 0.1]
"""

import argparse
import time
from types import SimpleNamespace

from rdiunet.nvml import GpuSampler, load_nvml

INSTANT_NVML = SimpleNamespace(
    NVMLError=Exception,
    nvmlDeviceGetHandleByIndex=lambda index: index,
    nvmlDeviceGetPowerUsage=lambda handle: 150_000,
    nvmlDeviceGetTotalEnergyConsumption=lambda handle: int(time.time() * 150_000),
    nvmlDeviceGetUtilizationRates=lambda handle: SimpleNamespace(gpu=50),
    nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(used=2**30),
    nvmlDeviceGetTemperature=lambda handle, sensor: 50,
    nvmlDeviceGetClockInfo=lambda handle, clock: 1500,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--period", type=float, default=0.1)
    args = parser.parse_args()
    real, reason = load_nvml()
    cases = [("stand-in NVML (Python overhead only)", INSTANT_NVML)]
    cases += [("real NVML", real)] if real is not None else []
    print("| NVML | period (ms) | samples | sampler CPU per second | CPU per sample (ms) |")
    print("|---|---|---|---|---|")
    for label, nvml in cases:
        with GpuSampler(None, 0, period=args.period, nvml=nvml) as sampler:
            time.sleep(args.seconds)
        summary = sampler.summary()
        per_sample = 1000 * summary["sampler_cpu_s"] / summary["samples"]
        print(
            f"| {label} | {args.period * 1000:.0f} | {summary['samples']} | "
            f"{summary['sampler_cpu_share']:.2%} | {per_sample:.3f} |"
        )
    if real is None:
        print(f"\nreal NVML not measured: {reason}")


if __name__ == "__main__":
    main()
