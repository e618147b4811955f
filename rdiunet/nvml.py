"""Watching a GPU through NVML: power, utilisation, memory, temperature, clocks and energy.

`GpuSampler` reads the card in a background thread and writes the samples to a CSV; energy is the
difference of the card's total energy counter over the window (the parent card's, for a MIG
slice), or the integral of the sampled power where the counter is not supported. Power is NVML's
instantaneous field where the driver offers it (`nvmlDeviceGetPowerUsage` is a one-second average
on recent cards), and the summary says which was read. The card is found by the UUID torch gives
(GPU-... or MIG-...), never by index: NVML's order ignores CUDA_VISIBLE_DEVICES. Without
nvidia-ml-py, a driver or a GPU, the sampler records why and stays out of the way: the run goes on.

What the energy covers. NVML's energy and power are the whole card's (for a MIG slice, its parent
card's): when other work shares the card (another training in a `gpu_slots` slot, someone else's
process), they are not this run's alone. The summary therefore records the scope (`whole card` or
`MIG parent card`), the gpu_slots in force and the compute processes NVML saw on the card at the
start and the end of the window, and says whether the card was shared (rdiunet.report does not
add up or compare the energy of runs that shared a card).

Sample times are monotonic (a clock step during a run cannot bend the power integral or the
durations): each is the wall-clock time of the window's start plus the monotonic time since.
"""

import csv
import io
import itertools
import threading
import time
from pathlib import Path

import torch

SAMPLE_COLUMNS = ("time", "power_w", "utilization_pct", "memory_used_mib", "temperature_c", "sm_clock_mhz")


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


def torch_uuid(device: torch.device) -> str | None:
    """The UUID torch knows a CUDA device by (without NVML's GPU- or MIG- prefix)."""
    uuid = getattr(torch.cuda.get_device_properties(device.index or 0), "uuid", None)
    return None if uuid is None else str(uuid)


def nvml_handle(nvml, device: torch.device | int):
    """The NVML handle of a torch device, matched by UUID in both of NVML's forms (GPU-... for a
    card, MIG-... for a MIG slice): NVML's own order ignores CUDA_VISIBLE_DEVICES, so an index could
    name another card. An int is an NVML index given on purpose (tests, stand-ins)."""
    if not isinstance(device, torch.device):
        return nvml.nvmlDeviceGetHandleByIndex(device)
    uuid = torch_uuid(device)
    if uuid is None:
        raise LookupError(f"torch gives no UUID for {device}, so its NVML handle cannot be told apart")
    for form in (f"GPU-{uuid}", f"MIG-{uuid}", uuid):
        try:
            return nvml.nvmlDeviceGetHandleByUUID(form)
        except Exception:  # NVMLError_NotFound and kin
            continue
    raise LookupError(f"NVML knows no device with the UUID {uuid} of {device}")


def parent_card(nvml, handle):
    """The physical card of a MIG slice's handle (energy and power are the card's), else the handle."""
    try:
        if nvml.nvmlDeviceIsMigDeviceHandle(handle):
            return nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
    except Exception:  # older drivers or stand-ins without MIG support
        pass
    return handle


def instant_power_w(nvml, handle) -> float | None:
    """NVML's instantaneous power field in watts, where the driver offers it."""
    field = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
    if field is None:
        return None
    try:
        (value,) = nvml.nvmlDeviceGetFieldValues(handle, [field])
    except Exception:
        return None
    if getattr(value, "nvmlReturn", 1) != 0:
        return None
    return value.value.uiVal / 1000


def is_torch_device(nvml_uuid: str | None, device: torch.device) -> bool:
    """Whether an NVML UUID (GPU-... or MIG-...) names the torch device: a wrong card must not pass."""
    return bool(nvml_uuid) and nvml_uuid.split("-", 1)[-1] == torch_uuid(device)


# nvmlClocksEventReasons (formerly "throttle reasons"): why the SM clock is below its maximum.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def clock_event_reasons(nvml, handle) -> list[str] | None:
    """The named reasons NVML gives now for the SM clock being held below its maximum."""
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        call = getattr(nvml, name, None)
        mask = None if call is None else _read(call, handle)
        if mask is not None:
            return [label for bit, label in CLOCK_EVENT_REASONS.items() if mask & bit]
    return None


def compute_processes(nvml, handle) -> list[dict] | None:
    """The compute processes NVML sees on a card (pid, MiB used), or None where it cannot tell.
    Pids are the host's: inside a container they differ from os.getpid()."""
    call = getattr(nvml, "nvmlDeviceGetComputeRunningProcesses", None)
    processes = None if call is None else _read(call, handle)
    if processes is None:
        return None
    return [
        {"pid": p.pid, "used_mib": None if p.usedGpuMemory is None else p.usedGpuMemory / 2**20}
        for p in processes
    ]


def card_state(device: torch.device, nvml=None) -> dict:
    """The card's SM clock and clock-event reasons now, for the record beside a latency (empty on
    a CPU or without NVML)."""
    if device.type != "cuda":
        return {}
    if nvml is None:
        nvml, _ = load_nvml()
    if nvml is None:
        return {}
    try:
        handle = parent_card(nvml, nvml_handle(nvml, device))
    except Exception:
        return {}
    return {
        "sm_clock_mhz": _read(nvml.nvmlDeviceGetClockInfo, handle, 1),  # NVML_CLOCK_SM
        "clock_event_reasons": clock_event_reasons(nvml, handle),
    }


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
    run appends to the same file. `summary()` gives energy, power, memory, what the energy covers
    (the module's docstring) and the sampler's own CPU cost. `gpu_slots`: the trainings allowed
    on the card at once while this window runs.
    """

    FLUSH_EVERY_S = 1.0

    def __init__(
        self,
        csv_path: Path | None,
        device: torch.device | int = 0,
        period: float = 0.1,
        nvml=None,
        gpu_slots: int = 1,
    ):
        self.csv_path, self.device, self.period, self.gpu_slots = csv_path, device, period, gpu_slots
        if isinstance(device, torch.device) and device.type != "cuda":
            self.nvml, self.reason = None, f"device is {device.type}, not a GPU"
        elif nvml is not None:
            self.nvml, self.reason = nvml, None
        else:
            self.nvml, self.reason = load_nvml()
        self.samples: list[tuple] = []
        self.power_source = None  # which NVML reading the power samples came from
        self._written = 0
        self.energy_start = self.energy_end = None
        self.cpu_seconds = 0.0
        self.processes_start = self.processes_end = None
        self.write_error = None  # why gpu.csv stopped growing, where the disk refused
        self.scope = None
        self._clock = (time.time(), time.monotonic())  # the window's wall-clock and monotonic origin
        self._stop = threading.Event()
        self._thread = None

    @property
    def available(self) -> bool:
        return self.nvml is not None

    def uuid(self) -> str | None:
        """The UUID of the NVML device sampled (to check it is the torch device's)."""
        get_uuid = getattr(self.nvml, "nvmlDeviceGetUUID", None)
        value = None if get_uuid is None else _read(get_uuid, self.handle)
        return value.decode() if isinstance(value, bytes) else value

    def power_w(self) -> float | None:
        """The card's power: the instantaneous field where it answers, else the averaged reading."""
        if self.power_source != "nvmlDeviceGetPowerUsage":
            power = instant_power_w(self.nvml, self.card)
            if power is not None:
                self.power_source = "NVML_FI_DEV_POWER_INSTANT"
                return power
        self.power_source = "nvmlDeviceGetPowerUsage"  # a one-second average on recent cards
        power = _read(self.nvml.nvmlDeviceGetPowerUsage, self.card)
        return None if power is None else power / 1000

    def sample(self) -> tuple:
        nvml, handle, card = self.nvml, self.handle, self.card
        utilization = _read(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = _read(nvml.nvmlDeviceGetMemoryInfo, handle)
        return (
            self.now(),
            self.power_w(),
            None if utilization is None else utilization.gpu,
            None if memory is None else memory.used / 2**20,
            _read(nvml.nvmlDeviceGetTemperature, card, 0),  # NVML_TEMPERATURE_GPU
            _read(nvml.nvmlDeviceGetClockInfo, card, 1),  # NVML_CLOCK_SM
        )

    def now(self) -> float:
        """A monotonic timestamp on the wall clock of the window's start."""
        wall, monotonic = self._clock
        return wall + time.monotonic() - monotonic

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
        """Append the rows not yet written (the header only once), as one write of whole lines, so
        that a killed job leaves at most a cut last line. Where the disk refuses (full, read-only),
        the samples stay in memory for the summary, the CSV stops growing and the summary says so:
        the training goes on."""
        if self.csv_path is None or self.write_error:
            return
        rows = self.samples[self._written :]
        lines = io.StringIO()
        writer = csv.writer(lines)
        if self._written == 0 and (not self.csv_path.exists() or self.csv_path.stat().st_size == 0):
            writer.writerow(SAMPLE_COLUMNS)
        for row in rows:
            writer.writerow(["" if v is None else round(v, 3) for v in row])
        try:
            with open(self.csv_path, "a", newline="") as handle:
                handle.write(lines.getvalue())
        except OSError as error:
            self.write_error = f"{self.csv_path}: {error.strerror}; samples after {self._written} not written"
            return
        self._written += len(rows)

    def __enter__(self) -> "GpuSampler":
        if self.available:
            try:
                self.handle = nvml_handle(self.nvml, self.device)
                self.card = parent_card(self.nvml, self.handle)
            except Exception as error:
                self.nvml, self.reason = None, f"no NVML handle for {self.device} ({error}); not sampled"
        if self.available:
            self._clock = (time.time(), time.monotonic())
            self.scope = "whole card" if self.card is self.handle else "MIG parent card"
            self.processes_start = compute_processes(self.nvml, self.card)
            self.energy_start = _read(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.card)
            self.samples.append(self.sample())
            self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.samples.append(self.sample())
            self.energy_end = _read(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.card)
            self.processes_end = compute_processes(self.nvml, self.card)
        self._flush()

    def energy_so_far(self) -> tuple[float | None, str]:
        """(joules since the window opened, how they were measured)."""
        if not self.available:
            return None, "unavailable"
        end = self.energy_end
        if end is None and self.energy_start is not None:
            end = _read(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.card)
        if self.energy_start is not None and end is not None:
            return (end - self.energy_start) / 1000, "total energy counter"
        energy = integrate_power(list(self.samples))
        return energy, "integrated power samples" if energy is not None else "unavailable"

    def card_shared(self) -> str | None:
        """Why the card's energy is not this window's work alone, or None where nothing says so."""
        reasons = []
        if self.scope == "MIG parent card":
            reasons.append("a MIG slice: energy and power are the parent card's")
        if self.gpu_slots > 1:
            reasons.append(f"gpu_slots {self.gpu_slots}: other trainings could run on the card")
        seen = [p for p in (self.processes_start, self.processes_end) if p is not None]
        if any(len(processes) > 1 for processes in seen):
            most = max(len(processes) for processes in seen)
            reasons.append(f"NVML saw {most} compute processes on the card")
        return "; ".join(reasons) or None

    def summary(self) -> dict:
        if not self.available:
            return {"available": False, "reason": self.reason}
        samples = list(self.samples)
        written = {"samples_not_written": self.write_error} if self.write_error else {}
        powers = [s[1] for s in samples if s[1] is not None]
        memory = [s[3] for s in samples if s[3] is not None]
        utilization = [s[2] for s in samples if s[2] is not None]
        energy, method = self.energy_so_far()
        seconds = samples[-1][0] - samples[0][0]
        return {
            "available": True,
            "energy_j": energy,
            "energy_method": method,
            "energy_scope": self.scope,
            "gpu_slots": self.gpu_slots,
            "processes_start": self.processes_start,
            "processes_end": self.processes_end,
            "card_shared": self.card_shared(),
            "power_source": self.power_source,
            "device_uuid": self.uuid(),
            "seconds": seconds,
            "samples": len(samples),
            "mean_power_w": sum(powers) / len(powers) if powers else None,
            "max_power_w": max(powers, default=None),
            "peak_memory_used_mib": max(memory, default=None),
            "mean_utilization_pct": sum(utilization) / len(utilization) if utilization else None,
            **written,
            "sampler_cpu_s": self.cpu_seconds,
            "sampler_cpu_share": self.cpu_seconds / seconds if seconds > 0 else None,
        }
