"""GPUs: choosing (and claiming) a device, and watching it through NVML.

Device choice. Snakemake never sets CUDA_VISIBLE_DEVICES for local jobs, so on a machine with
several GPUs concurrent jobs (limited by `resources: gpu=1` and `--resources gpu=N`) must not all
pick cuda:0. A job that was not pinned to one device (`--device auto` or `cuda` with several
visible) claims the least-busy visible GPU that no other job holds, by taking an exclusive lock
on a per-GPU lock file. The operating system releases the lock when the process ends, however it
ends (SIGKILL and crashes included), so a lock can never outlive its job.

Monitoring. `GpuSampler` reads power, utilisation, memory, temperature and SM clock through NVML
in a background thread and writes them to a CSV; energy is the difference of the GPU's total
energy counter over the window, or the integral of the sampled power where the counter is not
supported. Without nvidia-ml-py, a driver or a GPU, the sampler records why and stays out of the
way: the run goes on.
"""

import csv
import fcntl
import itertools
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rdiunet.errors import UserError

LOCK_DIR_ENV = "RDIUNET_GPU_LOCK_DIR"
SAMPLE_COLUMNS = ("time", "power_w", "utilization_pct", "memory_used_mib", "temperature_c", "sm_clock_mhz")

# Locks this process holds; the file objects must stay open for the locks to stay held.
_held_locks: list = []


# --- NVML ----------------------------------------------------------------------------------------


def load_nvml():
    """(the initialised pynvml module, None) or (None, why it is unavailable)."""
    try:
        import pynvml
    except ImportError as error:
        return None, f"nvidia-ml-py is not installed ({error})"
    try:
        pynvml.nvmlInit()
    except Exception as error:  # NVMLError subclasses, or OSError when the library is missing
        return None, f"NVML is unavailable ({error}); no NVIDIA driver or GPU"
    return pynvml, None


def nvml_handle(nvml, device: torch.device | int):
    """The NVML handle of a torch device (matched by UUID, since NVML ignores CUDA_VISIBLE_DEVICES)."""
    if isinstance(device, torch.device):
        index = device.index or 0
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is not None:
            try:
                return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            except nvml.NVMLError:
                pass
        device = index
    return nvml.nvmlDeviceGetHandleByIndex(device)


def _read(call, *args):
    """One NVML reading, or None where the device does not support it."""
    try:
        return call(*args)
    except Exception:
        return None


def integrate_power(samples: list[tuple]) -> float | None:
    """Energy in joules from (time, power W, ...) samples by the trapezoid rule."""
    points = [(s[0], s[1]) for s in samples if s[1] is not None]
    if len(points) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(points))


class GpuSampler:
    """Samples one GPU every `period` seconds while the `with` block runs, appending to `csv_path`.

    `nvml` is the pynvml module (or a stand-in with the same functions); by default the real one
    is loaded. Rows reach the CSV about once a second, so a killed job keeps its samples; a resumed
    run appends to the same file. `summary()` gives energy, power, memory and the sampler's own
    CPU cost.
    """

    FLUSH_EVERY_S = 1.0

    def __init__(self, csv_path: Path | None, device: torch.device | int = 0, period: float = 0.1, nvml=None):
        self.csv_path, self.device, self.period = csv_path, device, period
        if isinstance(device, torch.device) and device.type != "cuda":
            self.nvml, self.reason = None, f"device is {device.type}, not a GPU"
        elif nvml is not None:
            self.nvml, self.reason = nvml, None
        else:
            self.nvml, self.reason = load_nvml()
        self.samples: list[tuple] = []
        self._written = 0
        self.energy_start = self.energy_end = None
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = None

    @property
    def available(self) -> bool:
        return self.nvml is not None

    def sample(self) -> tuple:
        nvml, handle = self.nvml, self.handle
        power = _read(nvml.nvmlDeviceGetPowerUsage, handle)
        utilization = _read(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = _read(nvml.nvmlDeviceGetMemoryInfo, handle)
        return (
            time.time(),
            None if power is None else power / 1000,
            None if utilization is None else utilization.gpu,
            None if memory is None else memory.used / 2**20,
            _read(nvml.nvmlDeviceGetTemperature, handle, 0),  # NVML_TEMPERATURE_GPU
            _read(nvml.nvmlDeviceGetClockInfo, handle, 1),  # NVML_CLOCK_SM
        )

    def _loop(self) -> None:
        start = time.thread_time()
        last_flush = time.monotonic()
        while not self._stop.wait(self.period):
            self.samples.append(self.sample())
            if time.monotonic() - last_flush > self.FLUSH_EVERY_S:
                self._flush()
                last_flush = time.monotonic()
        self.cpu_seconds = time.thread_time() - start

    def _flush(self) -> None:
        """Append the rows not yet written (the header only once)."""
        if self.csv_path is None:
            return
        new = not self.csv_path.exists()
        rows = self.samples[self._written :]
        with open(self.csv_path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(SAMPLE_COLUMNS)
            for row in rows:
                writer.writerow(["" if v is None else round(v, 3) for v in row])
        self._written += len(rows)

    def __enter__(self) -> "GpuSampler":
        if self.available:
            try:
                self.handle = nvml_handle(self.nvml, self.device)
            except Exception as error:
                self.nvml, self.reason = None, f"no NVML handle for {self.device} ({error})"
        if self.available:
            self.energy_start = _read(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)
            self.samples.append(self.sample())
            self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.samples.append(self.sample())
            self.energy_end = _read(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)
        self._flush()

    def energy_so_far(self) -> tuple[float | None, str]:
        """(joules since the window opened, how they were measured)."""
        if not self.available:
            return None, "unavailable"
        end = self.energy_end
        if end is None and self.energy_start is not None:
            end = _read(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)
        if self.energy_start is not None and end is not None:
            return (end - self.energy_start) / 1000, "total energy counter"
        energy = integrate_power(list(self.samples))
        return energy, "integrated power samples" if energy is not None else "unavailable"

    def summary(self) -> dict:
        if not self.available:
            return {"available": False, "reason": self.reason}
        samples = list(self.samples)
        powers = [s[1] for s in samples if s[1] is not None]
        memory = [s[3] for s in samples if s[3] is not None]
        utilization = [s[2] for s in samples if s[2] is not None]
        energy, method = self.energy_so_far()
        seconds = samples[-1][0] - samples[0][0]
        return {
            "available": True,
            "energy_j": energy,
            "energy_method": method,
            "seconds": seconds,
            "samples": len(samples),
            "mean_power_w": sum(powers) / len(powers) if powers else None,
            "max_power_w": max(powers, default=None),
            "peak_memory_used_mib": max(memory, default=None),
            "mean_utilization_pct": sum(utilization) / len(utilization) if utilization else None,
            "sampler_cpu_s": self.cpu_seconds,
            "sampler_cpu_share": self.cpu_seconds / seconds if seconds > 0 else None,
        }


def driver_version() -> str | None:
    nvml, _ = load_nvml()
    if nvml is None:
        return None
    version = nvml.nvmlSystemGetDriverVersion()
    return version.decode() if isinstance(version, bytes) else version


# --- device choice -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuCandidate:
    """A visible GPU: its torch ordinal, a stable key for its lock file, and how busy it is."""

    index: int
    key: str
    busy: tuple = ()


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV, "/tmp/rdiunet-gpu-locks"))


def try_lock(path: Path):
    """An open file holding an exclusive lock on `path`, or None if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - kept open: closing it would release the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def claim_gpu(
    candidates: list[GpuCandidate], directory: Path | None = None, wait_s: float = 3600, poll_s: float = 2.0
) -> GpuCandidate:
    """Lock the least busy free candidate (the lock lives as long as this process); wait if none is free."""
    directory = directory or lock_dir()
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        for candidate in sorted(candidates, key=lambda c: (c.busy, c.index)):
            handle = try_lock(directory / f"gpu-{candidate.key}.lock")
            if handle is not None:
                _held_locks.append(handle)
                return candidate
        if time.monotonic() > deadline:
            raise UserError(
                f"all {len(candidates)} GPUs stayed claimed by other rdiunet jobs for {wait_s:.0f} s "
                f"(locks in {directory}); run fewer jobs at once (--resources gpu=N)"
            )
        if not announced:
            print(
                f"all GPUs are claimed by other jobs; waiting (locks in {directory})",
                file=sys.stderr,
                flush=True,
            )
            announced = True
        time.sleep(poll_s)


def visible_gpus() -> list[GpuCandidate]:
    """The GPUs torch can see (CUDA_VISIBLE_DEVICES applies), least busy first where NVML tells."""
    nvml, _ = load_nvml()
    candidates = []
    for index in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        key = f"{uuid}" if uuid is not None else f"index{index}"
        busy = ()
        if nvml is not None:
            try:
                handle = nvml_handle(nvml, torch.device("cuda", index))
                busy = (
                    nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                    nvml.nvmlDeviceGetMemoryInfo(handle).used,
                )
            except Exception:
                busy = ()
        candidates.append(GpuCandidate(index, key, busy))
    return candidates


def choose_device(spec: str = "auto") -> torch.device:
    """`auto` (a GPU when there is one, else the CPU), `cpu`, `cuda` or `cuda:i` (pinned).

    With `auto` or `cuda` and several visible GPUs, the job claims a free one (see the module doc).
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: no CUDA device is available here; use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None:
        if device.index >= count:
            raise UserError(f"--device {spec}: only {count} CUDA device(s) visible")
        return device
    if count == 1:
        return torch.device("cuda", 0)
    claimed = claim_gpu(visible_gpus())
    print(f"claimed GPU cuda:{claimed.index} ({claimed.key})", file=sys.stderr, flush=True)
    return torch.device("cuda", claimed.index)
