import csv
import os
import queue
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from rdiunet import gpu
from rdiunet import nvml as nvml_module
from rdiunet.errors import UserError
from rdiunet.gpu import GpuCandidate, claim_gpu
from rdiunet.nvml import GpuSampler, is_torch_device, load_nvml


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_sampled_card_is_the_torch_device():
    # A wrong card must not pass: NVML's handle is looked up by the UUID torch gives.
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    with GpuSampler(None, device, period=0.05) as sampler:
        pass
    assert sampler.available, sampler.reason
    assert is_torch_device(sampler.uuid(), device)
    assert not is_torch_device(sampler.uuid().replace("-", "-0", 1), device)


# --- finding the card in NVML (stand-ins: no GPU here) ------------------------------------------


class UuidNVML(StandInNVML):
    """A stand-in NVML that knows its devices by UUID only, with MIG slices and instant power."""

    NVML_FI_DEV_POWER_INSTANT = 186

    def __init__(self, uuids, mig_parent=None, instant=True, **kwargs):
        super().__init__(**kwargs)
        self.uuids, self.mig_parent, self.instant = uuids, mig_parent, instant

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.uuids:
            raise FakeNVMLError("Not Found")
        return uuid

    def nvmlDeviceGetHandleByIndex(self, index):
        raise AssertionError("the card must never be found by index")

    def nvmlDeviceGetUUID(self, handle):
        return handle

    def nvmlDeviceIsMigDeviceHandle(self, handle):
        return handle.startswith("MIG-")

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle):
        return self.mig_parent

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if handle.startswith("MIG-"):
            raise FakeNVMLError("Not Supported on a MIG slice")
        return super().nvmlDeviceGetTotalEnergyConsumption(handle)

    def nvmlDeviceGetFieldValues(self, handle, fields):
        assert fields == [self.NVML_FI_DEV_POWER_INSTANT] and not handle.startswith("MIG-")
        value = SimpleNamespace(uiVal=int(self.watts * 1000) + 7)  # tell it from the average
        return [SimpleNamespace(nvmlReturn=0 if self.instant else 3, value=value)]


def pretend_torch_uuid(monkeypatch, uuid):
    monkeypatch.setattr(nvml_module, "torch_uuid", lambda device: uuid)


def test_a_card_is_found_by_its_uuid_and_power_is_the_instant_field(monkeypatch):
    pretend_torch_uuid(monkeypatch, "1234")
    nvml = UuidNVML({"GPU-1234"}, watts=200)
    with GpuSampler(None, torch.device("cuda", 0), period=0.02, nvml=nvml) as sampler:
        time.sleep(0.1)
    summary = sampler.summary()
    assert summary["device_uuid"] == "GPU-1234"
    assert summary["power_source"] == "NVML_FI_DEV_POWER_INSTANT"
    assert summary["max_power_w"] == pytest.approx(200.007)
    assert summary["energy_method"] == "total energy counter"


def test_without_the_instant_field_the_averaged_power_is_read_and_said(monkeypatch):
    pretend_torch_uuid(monkeypatch, "1234")
    nvml = UuidNVML({"GPU-1234"}, watts=200, instant=False)
    with GpuSampler(None, torch.device("cuda", 0), period=0.02, nvml=nvml) as sampler:
        time.sleep(0.05)
    summary = sampler.summary()
    assert summary["power_source"] == "nvmlDeviceGetPowerUsage" and summary["max_power_w"] == 200


def test_a_mig_slice_is_found_and_energy_is_its_parent_cards(monkeypatch):
    pretend_torch_uuid(monkeypatch, "abcd")
    nvml = UuidNVML({"MIG-abcd", "GPU-parent"}, mig_parent="GPU-parent", watts=100)
    with GpuSampler(None, torch.device("cuda", 0), period=0.02, nvml=nvml) as sampler:
        time.sleep(0.1)
    summary = sampler.summary()
    assert summary["device_uuid"] == "MIG-abcd"
    assert summary["energy_method"] == "total energy counter" and summary["energy_j"] > 0


def test_an_unknown_uuid_is_not_sampled_rather_than_guessed_by_index(monkeypatch):
    pretend_torch_uuid(monkeypatch, "elsewhere")
    with GpuSampler(None, torch.device("cuda", 0), nvml=UuidNVML({"GPU-1234"})) as sampler:
        pass
    summary = sampler.summary()
    assert not summary["available"] and "NVML knows no device with the UUID elsewhere" in summary["reason"]


# --- claiming a card across processes ------------------------------------------------------------

CLAIMER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rdiunet.gpu import GpuCandidate, claim_gpu
    directory, role, slots, keys = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
    candidates = [GpuCandidate(i, key, (i,)) for i, key in enumerate(keys)]
    print("ready", flush=True)  # imports done: from here on, any delay is the claim's
    claimed = claim_gpu(candidates, role, slots, Path(directory), wait_s=120, poll_s=0.05)
    print(claimed.card.key, flush=True)
    time.sleep(120)
    """
)


class Claimers:
    """Real processes claiming fake cards; their lines are read as they come, and they are killed
    at the end of the test."""

    def __init__(self, directory):
        self.directory, self.processes, self.lines = directory, [], {}

    def start(self, role="train", slots=1, keys="card0"):
        process = subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(self.directory), role, str(slots), keys],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        self.lines[process] = lines = queue.Queue()
        threading.Thread(target=self.read, args=(process, lines), daemon=True).start()
        assert self.next_line(process, 60) == "ready"
        return process

    @staticmethod
    def read(process, lines):
        for line in process.stdout:
            if not line.startswith("waiting for"):  # the one notice a waiting job prints
                lines.put(line.strip())

    def next_line(self, process, timeout):
        try:
            return self.lines[process].get(timeout=timeout)
        except queue.Empty:
            return None

    def holding(self, process, timeout=30) -> str:
        """The card `process` claimed (waits until it has)."""
        line = self.next_line(process, timeout)
        assert line, f"no claim within {timeout} s"
        return line

    def waiting(self, process, seconds=1.0) -> bool:
        """True if `process` claims nothing within `seconds` (it polls every 0.05 s)."""
        line = self.next_line(process, seconds)
        if line is not None:
            self.lines[process].queue.appendleft(line)  # for holding() to read
        return line is None and process.poll() is None

    def end(self, process):
        process.send_signal(signal.SIGKILL)  # the kernel drops its locks, however it ends
        process.wait()

    def close(self):
        for process in self.processes:
            process.kill()
            process.wait()


@pytest.fixture
def claimers(tmp_path):
    group = Claimers(tmp_path / "locks")
    yield group
    group.close()


def test_two_trainings_on_one_card_wait_for_each_other(claimers):
    first = claimers.start()
    assert claimers.holding(first) == "card0"
    second = claimers.start()
    assert claimers.waiting(second)
    claimers.end(first)
    assert claimers.holding(second) == "card0"


@pytest.mark.slow  # real processes, a few seconds each
def test_gpu_slots_two_lets_exactly_two_trainings_share_a_card(claimers):
    first, second = claimers.start(slots=2), claimers.start(slots=2)
    assert claimers.holding(first) == claimers.holding(second) == "card0"
    third = claimers.start(slots=2)
    assert claimers.waiting(third)
    claimers.end(second)
    assert claimers.holding(third) == "card0"


@pytest.mark.slow  # real processes, a few seconds each
def test_a_benchmark_waits_for_training_and_closes_the_card_to_new_jobs(claimers):
    training = claimers.start(slots=2)
    assert claimers.holding(training) == "card0"
    bench = claimers.start(role="bench")
    assert claimers.waiting(bench)
    # A free slot is left, but the waiting benchmark has closed the card: no new training starts.
    late = claimers.start(slots=2)
    assert claimers.waiting(late)
    claimers.end(training)
    assert claimers.holding(bench) == "card0"
    assert claimers.waiting(late)
    claimers.end(bench)
    assert claimers.holding(late) == "card0"


@pytest.mark.slow  # real processes, a few seconds each
def test_a_training_waits_for_a_benchmark_and_a_benchmark_for_another(claimers):
    bench = claimers.start(role="bench")
    assert claimers.holding(bench) == "card0"
    training, other_bench = claimers.start(), claimers.start(role="bench")
    assert claimers.waiting(training) and claimers.waiting(other_bench)
    claimers.end(bench)
    # Exactly one of them gets the card; the other goes on waiting.
    got = [p for p in (training, other_bench) if not claimers.waiting(p, 3)]
    assert len(got) == 1 and claimers.holding(got[0]) == "card0"


@pytest.mark.slow  # real processes, a few seconds each
def test_a_benchmark_takes_a_free_card_when_another_is_busy(claimers):
    training = claimers.start(keys="card0,card1")
    assert claimers.holding(training) == "card0"  # least busy first
    bench = claimers.start(role="bench", keys="card0,card1")
    assert claimers.holding(bench) == "card1"


def test_least_busy_free_card_is_chosen_first(tmp_path):
    candidates = [GpuCandidate(0, "a", (50, 0)), GpuCandidate(1, "b", (5, 0)), GpuCandidate(2, "c", (20, 0))]
    with claim_gpu(candidates, directory=tmp_path) as claim:
        assert claim.card.key == "b"


# --- claims within one process: re-entrant, released when the work ends --------------------------

ONE_CARD = [GpuCandidate(0, "card0")]


def quick_claim(directory, role="train", candidates=ONE_CARD):
    """A claim that gives up after a second instead of waiting for a week."""
    return claim_gpu(candidates, role, directory=directory, wait_s=1, poll_s=0.05)


def test_two_benchmarks_in_one_process_share_its_claim_and_keep_others_out(claimers):
    first = quick_claim(claimers.directory, "bench")
    second = quick_claim(claimers.directory, "bench")  # gpu_check's bench step does this
    assert second is first and first.card.key == "card0"
    other = claimers.start()
    assert claimers.waiting(other)
    first.release()
    assert claimers.waiting(other)  # the second benchmark still holds the card
    second.release()
    assert claimers.holding(other) == "card0"
    assert gpu.held_claims() == []


def test_a_training_after_a_benchmark_in_one_process_uses_the_benchmarks_claim(claimers):
    with quick_claim(claimers.directory, "bench") as bench, quick_claim(claimers.directory) as training:
        assert training is bench and bench.role == "bench"
        late = claimers.start()
        assert claimers.waiting(late)
    assert claimers.holding(late) == "card0"


def test_a_benchmark_inside_a_training_of_the_same_process_is_refused(tmp_path):
    with quick_claim(tmp_path) as training:
        with pytest.raises(RuntimeError, match="holds card0 for train and now asks for it as bench"):
            quick_claim(tmp_path, "bench")
        assert training.users == 1
    assert gpu.held_claims() == []


def test_a_second_card_can_still_be_claimed_beside_a_held_one(tmp_path):
    with (
        quick_claim(tmp_path, candidates=[GpuCandidate(0, "a")]) as first,
        quick_claim(tmp_path, "bench", candidates=[GpuCandidate(1, "b")]) as second,
    ):
        assert (first.card.key, second.card.key) == ("a", "b")
        assert len(gpu.held_claims()) == 2


@pytest.fixture
def fake_card(monkeypatch, tmp_path, global_switches):
    """torch believes in one CUDA card, card0 (computing on it would still fail: no CUDA here)."""
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(gpu, "visible_gpus", lambda: [GpuCandidate(0, "card0")])
    yield
    assert gpu.held_claims() == [], "a claim outlived the work that took it"


def test_a_failed_benchmark_lets_go_of_its_card(fake_card, claimers):
    from rdiunet.bench import bench
    from rdiunet.settings import BenchSettings

    with pytest.raises(UserError, match="unknown model"):
        bench(BenchSettings(model="vnet", size=64, device="cuda"))  # claims, then build() fails
    other = claimers.start(role="bench")
    assert claimers.holding(other, timeout=10) == "card0"


def test_work_that_raises_inside_a_runtime_lets_go_of_its_card(fake_card, claimers):
    from rdiunet.runtime import make_runtime

    with pytest.raises(ZeroDivisionError), make_runtime("cuda") as runtime:
        assert runtime.claim.record() == {
            "card": "card0", "index": 0, "role": "train", "gpu_slots": 1, "how": "claimed",
        }  # fmt: skip
        other = claimers.start()
        assert claimers.waiting(other)
        raise ZeroDivisionError("the work failed")
    assert claimers.holding(other, timeout=10) == "card0"


def test_a_training_that_fails_on_its_card_lets_go_of_it(fake_card, claimers, tmp_path):
    from conftest import prepared_jsrt, tiny_settings

    from rdiunet.train import train

    data = prepared_jsrt(tmp_path / "data", n=12, size=32)
    with pytest.raises((AssertionError, RuntimeError)):  # this torch cannot put the model on CUDA
        train(tiny_settings(data, device="cuda", deterministic=False), tmp_path / "run")
    other = claimers.start(role="bench")
    assert claimers.holding(other, timeout=10) == "card0"


def test_a_standin_card_makes_a_cpu_job_claim_as_a_gpu_job_would(monkeypatch, claimers):
    from rdiunet.runtime import make_runtime

    monkeypatch.setenv(gpu.LOCK_DIR_ENV, str(claimers.directory))
    monkeypatch.setenv(gpu.STANDIN_ENV, "smoke")
    with make_runtime("cpu", role="bench") as runtime:
        assert runtime.device == torch.device("cpu") and runtime.claim.card.key == "standin-smoke"
        other = claimers.start(keys="standin-smoke")
        assert claimers.waiting(other)
    assert claimers.holding(other, timeout=10) == "standin-smoke"
    monkeypatch.delenv(gpu.STANDIN_ENV)
    with make_runtime("cpu") as runtime:
        assert runtime.claim is None


def test_no_card_free_within_the_wait_is_one_line(tmp_path, claimers):
    holder = claimers.start(keys="only")
    assert claimers.holding(holder) == "only"
    with pytest.raises(UserError, match="no GPU became free for this bench job within 0 s"):
        claim_gpu([GpuCandidate(0, "only")], "bench", directory=claimers.directory, wait_s=0.2, poll_s=0.05)


# --- the private lock folder ---------------------------------------------------------------------


def test_the_lock_folder_is_private_and_the_users_own(monkeypatch, tmp_path):
    monkeypatch.delenv(gpu.LOCK_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = gpu.lock_dir()
    assert folder == tmp_path / "rdiunet-gpu-locks"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()


def test_a_planted_symlink_is_never_followed_or_written(tmp_path):
    locks = gpu.private_folder(tmp_path / "locks")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (locks / "gpu-card0.gate").symlink_to(victim)
    with pytest.raises(UserError, match=r"cannot open the GPU lock file .*gpu-card0.gate"):
        claim_gpu([GpuCandidate(0, "card0")], directory=locks, wait_s=0)
    assert victim.read_text() == "precious"


def test_an_existing_lock_file_is_not_truncated(tmp_path):
    locks = gpu.private_folder(tmp_path / "locks")
    (locks / "gpu-card0.card").write_text("left by someone")
    claim_gpu([GpuCandidate(0, "card0")], directory=locks, wait_s=0).release()
    assert (locks / "gpu-card0.card").read_text() == "left by someone"


@pytest.mark.parametrize(
    "problem, says",
    [("link", "is a link or not a folder"), ("open", "is open to other users; chmod 700 it"), ("file", "")],
)
def test_an_unusable_lock_folder_is_one_line(problem, says, tmp_path):
    folder = tmp_path / "locks"
    if problem == "link":
        (tmp_path / "elsewhere").mkdir()
        folder.symlink_to(tmp_path / "elsewhere")
    elif problem == "open":
        folder.mkdir()
        folder.chmod(0o777)
    else:
        folder.write_text("")
    with pytest.raises(UserError, match=f"GPU lock folder {folder}") as error:
        gpu.private_folder(folder)
    assert says in str(error.value) and gpu.LOCK_DIR_ENV in str(error.value)


# --- never a silent CPU fallback (only where torch cannot use CUDA) -----------------------------

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use CUDA here")


@needs_no_cuda
def test_asking_for_cuda_without_cuda_names_torch_the_driver_and_the_fix():
    with pytest.raises(UserError) as error:
        gpu.choose_device("cuda")
    message = str(error.value)
    assert f"torch {torch.__version__}" in message and "CUDA build:" in message
    assert "NVIDIA driver: not found" in message and "--device cpu" in message


@needs_no_cuda
def test_auto_in_a_slurm_gpu_job_without_cuda_stops_in_one_line():
    env = {**os.environ, "SLURM_JOB_ID": "42", "SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0"}
    result = run_cli(
        "bench", "--model", "unet", "--size", "64", "--out", "x.json", "--device", "auto", env=env
    )
    assert_one_line_error(result, "this Slurm job has GPUs (SLURM_JOB_GPUS=0)", "cannot use CUDA")


@needs_no_cuda
def test_auto_where_nvidia_smi_lists_a_gpu_stops_instead_of_training_on_the_cpu(monkeypatch, tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(UserError, match=r"nvidia-smi lists 1 GPU\(s\) \(GPU 0: NVIDIA H100"):
        gpu.choose_device("auto")


@needs_no_cuda
def test_auto_without_any_gpu_is_the_cpu_and_claims_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert gpu.choose_device("auto") == (torch.device("cpu"), None)
    assert gpu.choose_device("cpu") == (torch.device("cpu"), None)
    assert not (tmp_path / "locks").exists()


def test_only_a_single_card_a_scheduler_gave_the_job_is_used_without_a_claim(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu.scheduler_assigned(1) == "Slurm job 7 was given one GPU (3)"
    # snakemake run inside `salloc --gpus=4`: the allocation's jobs share its cards, so they claim.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert gpu.scheduler_assigned(4) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu.scheduler_assigned(1) is None  # a Slurm job without a GPU of its own still claims


def test_jobs_of_a_multi_gpu_allocation_claim_their_cards(fake_card, monkeypatch, claimers):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(gpu, "visible_gpus", lambda: [GpuCandidate(0, "card0"), GpuCandidate(1, "card1")])
    holder = claimers.start(keys="card0,card1")
    assert claimers.holding(holder) == "card0"
    device, claim = gpu.choose_device("cuda", "bench")
    with claim:
        assert device == torch.device("cuda", 1) and claim.card.key == "card1" and claim.how == "claimed"


# --- the GPU path with stand-ins: the current device, native bf16, the run device's RNG --------


@pytest.fixture
def global_switches():
    """make_runtime sets torch's global switches: restore them after the test."""
    from rdiunet.runtime import NEW_TF32_API

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    switches = [(matmul, "fp32_precision"), (cudnn.conv, "fp32_precision")] if NEW_TF32_API else []
    switches = switches or [(matmul, "allow_tf32"), (cudnn, "allow_tf32")]
    switches.append((cudnn, "benchmark"))
    saved = [getattr(owner, name) for owner, name in switches]
    yield
    for (owner, name), value in zip(switches, saved, strict=True):
        setattr(owner, name, value)


def bf16_card(native: bool):
    """torch.cuda.is_bf16_supported of an Ampere-or-newer card (native) or of a T4/V100, where
    bfloat16 is only emulated and cuDNN has no bfloat16 convolutions."""
    return lambda including_emulation=True: native or including_emulation


def test_the_claimed_card_becomes_the_current_device(monkeypatch, global_switches):
    from rdiunet import runtime

    current = []
    monkeypatch.setattr(runtime, "choose_device", lambda spec, role, slots: (torch.device("cuda", 1), None))
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_card(native=True))
    chosen = runtime.make_runtime("cuda", precision="auto")
    # CUDA events, synchronize and new tensors use the current device: it must be the claimed one.
    assert current == [torch.device("cuda", 1)] and chosen.device == torch.device("cuda", 1)
    assert chosen.precision == "bf16"


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "tf32")])
def test_auto_precision_is_bf16_only_where_the_card_has_it_natively(monkeypatch, native, expected):
    from rdiunet.runtime import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_card(native))
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("auto", "cpu") == "tf32"


def test_only_the_run_devices_cuda_rng_state_is_saved_and_restored(monkeypatch):
    from rdiunet import checkpoints

    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or "state")
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", state, device))
    )
    saved = checkpoints.rng_state(torch.device("cuda", 2))
    assert saved["cuda"] == "state" and calls == [("get", torch.device("cuda", 2))]
    # Resumed on another claimed card (fewer GPUs visible, say): that card's generator gets it.
    checkpoints.set_rng_state(saved, torch.device("cuda", 0))
    assert calls[-1] == ("set", "state", torch.device("cuda", 0))
    calls.clear()
    checkpoints.set_rng_state(saved, torch.device("cpu"))  # a CPU resume touches no CUDA state
    assert calls == []


@pytest.mark.parametrize(
    "visible, count",
    [("0,1", 2), ("", 0), ("-1", 0), ("0,-1,2", 1), ("GPU-ab,GPU-cd", 2), ("1,NoDevFiles", 1)],
)
def test_the_workflow_counts_the_gpus_cuda_visible_devices_leaves(monkeypatch, visible, count):
    from rdiunet.nvidia_smi import local_gpu_count

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)  # CUDA stops at the first invalid entry
    assert local_gpu_count() == count


def test_an_nvml_uuid_names_the_torch_device_only_when_it_is_that_card(monkeypatch):
    pretend_torch_uuid(monkeypatch, "1234-abcd")
    card = torch.device("cuda", 0)
    assert is_torch_device("GPU-1234-abcd", card) and is_torch_device("MIG-1234-abcd", card)
    assert not is_torch_device("GPU-1234-abce", card) and not is_torch_device(None, card)


# --- what a shared card measures, and the card's clocks -----------------------------------------


class BusyNVML(UuidNVML):
    """A card with compute processes on it, and clock-event reasons."""

    def __init__(self, uuids, processes=1, reasons=0, **kwargs):
        super().__init__(uuids, **kwargs)
        self.processes, self.reasons = processes, reasons

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=100 + i, usedGpuMemory=2**30) for i in range(self.processes)]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self.reasons


def busy_summary(monkeypatch, nvml, **kwargs) -> dict:
    pretend_torch_uuid(monkeypatch, "abcd")
    with GpuSampler(None, torch.device("cuda", 0), period=0.02, nvml=nvml, **kwargs) as sampler:
        time.sleep(0.05)
    return sampler.summary()


def test_energy_records_its_scope_and_a_card_used_alone_is_not_shared(monkeypatch):
    summary = busy_summary(monkeypatch, BusyNVML({"GPU-abcd"}))
    assert summary["energy_scope"] == "whole card" and summary["gpu_slots"] == 1
    assert summary["processes_start"] == summary["processes_end"] == [{"pid": 100, "used_mib": 1024.0}]
    assert summary["card_shared"] is None


@pytest.mark.parametrize(
    "nvml, options, says",
    [
        (lambda: BusyNVML({"GPU-abcd"}, processes=3), {}, "NVML saw 3 compute processes on the card"),
        (lambda: BusyNVML({"GPU-abcd"}), {"gpu_slots": 2}, "gpu_slots 2: other trainings could run"),
        (
            lambda: BusyNVML({"MIG-abcd", "GPU-parent"}, mig_parent="GPU-parent"),
            {},
            "a MIG slice: energy and power are the parent card's",
        ),
    ],
)
def test_a_shared_card_is_said_to_be_shared(monkeypatch, nvml, options, says):
    summary = busy_summary(monkeypatch, nvml(), **options)
    assert says in summary["card_shared"]
    if "MIG" in says:
        assert summary["energy_scope"] == "MIG parent card"


def test_sample_times_are_monotonic_when_the_wall_clock_steps_back(monkeypatch):
    wall = iter(range(2_000_000_000, 0, -1000))  # every reading of the wall clock is earlier
    monkeypatch.setattr(time, "time", lambda: float(next(wall)))
    with GpuSampler(None, 0, period=0.01, nvml=StandInNVML(energy_counter=False)) as sampler:
        time.sleep(0.1)
    stamps = [sample[0] for sample in sampler.samples]
    assert len(stamps) > 3 and stamps == sorted(stamps)
    assert sampler.summary()["energy_j"] > 0  # the power integral did not run backwards


def test_the_card_state_names_why_its_clock_is_held_down(monkeypatch):
    from rdiunet.nvml import card_state

    pretend_torch_uuid(monkeypatch, "abcd")
    nvml = BusyNVML({"GPU-abcd"}, reasons=0x4 | 0x40)
    assert card_state(torch.device("cuda", 0), nvml) == {
        "sm_clock_mhz": 1755,
        "clock_event_reasons": ["sw_power_cap", "hw_thermal_slowdown"],
    }
    assert card_state(torch.device("cpu"), nvml) == {}


# --- the torch build against the driver -----------------------------------------------------------


@pytest.mark.parametrize(
    "torch_version, build, driver_cuda, says",
    [
        ("2.13.0+cu130", "13.0", "12.8", "needs CUDA 13.0 but this machine has NVIDIA driver 570.86 (CUDA"),
        ("2.13.0+cpu", None, "13.0", "is a CPU build but this machine has NVIDIA driver 570.86"),
        ("2.13.0+cu130", "13.0", "11.4", "too old for any torch 2.13.0 build: update it to 525+"),
    ],
)
def test_a_torch_build_the_driver_cannot_run_is_named_with_the_one_to_install(
    monkeypatch, torch_version, build, driver_cuda, says
):
    monkeypatch.setattr(gpu, "driver_cuda_version", lambda: driver_cuda)
    monkeypatch.setattr(gpu, "driver_version", lambda: "570.86")
    monkeypatch.setattr(torch, "__version__", torch_version)
    monkeypatch.setattr(torch.version, "cuda", build)
    advice = gpu.wheel_advice()
    assert says in advice and "\n" not in advice
    if driver_cuda == "12.8":
        assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" in advice
        assert "(cu130 needs driver 580 or newer)" in advice
    if build is None:
        assert "whl/cu130" in advice


@pytest.mark.parametrize("build, driver_cuda", [("12.8", "13.0"), ("12.6", "12.8"), ("13.0", None)])
def test_a_torch_build_the_driver_can_run_needs_no_advice(monkeypatch, build, driver_cuda):
    monkeypatch.setattr(gpu, "driver_cuda_version", lambda: driver_cuda)
    monkeypatch.setattr(torch.version, "cuda", build)
    assert gpu.wheel_advice() is None


def test_the_drivers_cuda_version_is_read_from_nvidia_smi_without_nvml(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    header = "| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: 12.8 |"
    fake.write_text(f"#!/bin/sh\necho '{header}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(gpu, "load_nvml", lambda: (None, "no NVML"))
    assert gpu.driver_cuda_version() == "12.8"


def test_a_user_who_set_the_new_tf32_switches_can_still_record_the_settings(global_switches):
    from rdiunet.runtime import NEW_TF32_API, Runtime

    if not NEW_TF32_API:
        pytest.skip(f"torch {torch.__version__} has only the legacy TF32 switches")
    torch.backends.cuda.matmul.fp32_precision = "ieee"  # the new API: the legacy reading now raises
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    settings = Runtime(torch.device("cpu"), "tf32", False).settings()
    assert settings["matmul_allow_tf32"] is False and settings["cudnn_allow_tf32"] is True
    assert settings["matmul_fp32_precision"] == "ieee"
