import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch

from rdiunet import gpu
from rdiunet.gpu import GpuCandidate, GpuSampler, claim_gpu, load_nvml


class FakeNVMLError(Exception):
    pass


class StandInNVML:
    """The slice of pynvml that the sampler uses, with a clock-driven power and energy model."""

    NVMLError = FakeNVMLError

    def __init__(self, watts: float = 200.0, energy_counter: bool = True):
        self.watts, self.energy_counter = watts, energy_counter
        self.start = time.time()

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"handle{index}"

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(self.watts * 1000)  # milliwatts

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_counter:
            raise FakeNVMLError("Not Supported")
        return int((time.time() - self.start) * self.watts * 1000) + 5_000_000  # millijoules

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=3 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 55

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 1755


def sample_for(seconds: float, **kwargs) -> tuple[GpuSampler, float]:
    start = time.time()
    with GpuSampler(kwargs.pop("csv_path", None), 0, period=0.02, **kwargs) as sampler:
        time.sleep(seconds)
    return sampler, time.time() - start


def test_energy_is_the_difference_of_the_energy_counter(tmp_path):
    sampler, elapsed = sample_for(0.5, nvml=StandInNVML(watts=200), csv_path=tmp_path / "gpu.csv")
    summary = sampler.summary()
    assert summary["available"] and summary["energy_method"] == "total energy counter"
    # 200 W for the window, not the counter's absolute value (5 kJ at start).
    assert summary["energy_j"] == pytest.approx(200 * elapsed, rel=0.1)
    assert summary["mean_power_w"] == summary["max_power_w"] == 200
    assert summary["peak_memory_used_mib"] == 3 * 1024
    assert summary["samples"] >= 10
    with open(tmp_path / "gpu.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["samples"]
    assert rows[0] | {"time": ""} == {
        "time": "",
        "power_w": "200.0",
        "utilization_pct": "87",
        "memory_used_mib": "3072.0",
        "temperature_c": "55",
        "sm_clock_mhz": "1755",
    }


def test_energy_falls_back_to_integrating_power_where_the_counter_is_unsupported():
    sampler, elapsed = sample_for(0.5, nvml=StandInNVML(watts=100, energy_counter=False))
    summary = sampler.summary()
    assert summary["energy_method"] == "integrated power samples"
    assert summary["energy_j"] == pytest.approx(100 * summary["seconds"], rel=1e-6)
    assert summary["seconds"] == pytest.approx(elapsed, abs=0.1)


def test_resumed_window_appends_to_the_same_csv(tmp_path):
    for _ in range(2):
        sample_for(0.1, nvml=StandInNVML(), csv_path=tmp_path / "gpu.csv")
    lines = (tmp_path / "gpu.csv").read_text().splitlines()
    assert lines.count(lines[0]) == 1 and len(lines) > 4


def test_sampler_overhead_is_recorded():
    sampler, _ = sample_for(0.3, nvml=StandInNVML())
    summary = sampler.summary()
    assert 0 <= summary["sampler_cpu_share"] < 0.5


def test_missing_library_is_recorded_and_the_run_goes_on(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml now raises ImportError
    nvml, reason = load_nvml()
    assert nvml is None and "nvidia-ml-py is not installed" in reason
    with GpuSampler(tmp_path / "gpu.csv", 0) as sampler:
        pass
    assert sampler.summary() == {"available": False, "reason": reason}
    assert (tmp_path / "gpu.csv").read_text().startswith("time,power_w")


def test_missing_driver_is_recorded(monkeypatch):
    def fail():
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "pynvml", SimpleNamespace(nvmlInit=fail))
    nvml, reason = load_nvml()
    assert nvml is None and "no NVIDIA driver" in reason


def test_cpu_device_is_not_sampled():
    with GpuSampler(None, torch.device("cpu")) as sampler:
        pass
    assert sampler.summary() == {"available": False, "reason": "device is cpu, not a GPU"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_nvml_on_a_gpu(tmp_path):
    device = torch.device("cuda", 0)
    x = torch.randn(4096, 4096, device=device)
    with GpuSampler(tmp_path / "gpu.csv", device, period=0.05) as sampler:
        for _ in range(50):
            x = x @ x
            x = x / x.norm()
        torch.cuda.synchronize()
    summary = sampler.summary()
    assert summary["available"] and summary["energy_j"] > 0 and summary["max_power_w"] > 0


# --- claiming a GPU across processes ----------------------------------------------------------------

CLAIMER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rdiunet.gpu import GpuCandidate, claim_gpu
    candidates = [GpuCandidate(i, f"fake{i}", (busy,)) for i, busy in enumerate([30, 10, 20])]
    claimed = claim_gpu(candidates, Path(sys.argv[1]), wait_s=60, poll_s=0.05)
    print(claimed.key, flush=True)
    time.sleep(60)
    """
)


def start_claimer(lock_dir):
    return subprocess.Popen([sys.executable, "-c", CLAIMER, str(lock_dir)], stdout=subprocess.PIPE, text=True)


def test_concurrent_jobs_claim_different_gpus_and_a_killed_job_frees_its_own(tmp_path):
    holders = [start_claimer(tmp_path) for _ in range(3)]
    try:
        claimed = [p.stdout.readline().strip() for p in holders]
        assert sorted(claimed) == ["fake0", "fake1", "fake2"]
        waiting = start_claimer(tmp_path)  # all three are taken: this one must wait
        time.sleep(0.5)
        assert waiting.poll() is None
        victim = holders[claimed.index("fake2")]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert waiting.stdout.readline().strip() == "fake2"  # the dead job's lock is gone
        holders.append(waiting)
    finally:
        for process in holders:
            process.kill()
            process.wait()


def test_least_busy_free_gpu_is_chosen_first(tmp_path):
    candidates = [GpuCandidate(0, "a", (50, 0)), GpuCandidate(1, "b", (5, 0)), GpuCandidate(2, "c", (20, 0))]
    first = claim_gpu(candidates, tmp_path)
    second = claim_gpu(candidates, tmp_path)
    assert (first.key, second.key) == ("b", "c")
    # Both locks are held by this very process: another process sees only "a" free.
    code = f"""
from pathlib import Path
from rdiunet.gpu import GpuCandidate, claim_gpu
print(claim_gpu({candidates!r}, Path({str(tmp_path)!r}), wait_s=0).key)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "a", result.stderr


def test_no_free_gpu_within_the_wait_is_a_clear_error(tmp_path):
    candidates = [GpuCandidate(0, "only")]
    claim_gpu(candidates, tmp_path)
    code = f"""
from pathlib import Path
from rdiunet.gpu import GpuCandidate, claim_gpu
claim_gpu([GpuCandidate(0, "only")], Path({str(tmp_path)!r}), wait_s=0.2, poll_s=0.05)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "stayed claimed by other rdiunet jobs" in result.stderr


def test_pinned_devices_and_the_cpu_claim_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, str(tmp_path))
    assert gpu.choose_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert gpu.choose_device("auto") == torch.device("cpu")
    assert not os.listdir(tmp_path)
