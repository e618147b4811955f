"""GPUs: choosing and claiming a card for a job, and never falling back to the CPU in silence.

Claiming. Snakemake never sets CUDA_VISIBLE_DEVICES for local jobs, and counts `resources: gpu=1`
only against a `--resources gpu=N` limit, so on a workstation several jobs could start on one
card. Every GPU job therefore claims its card, also when one GPU is visible:

- a training job holds the card shared and one of its `gpu_slots` training slots (default 1: one
  training per card; more let small models fill a large card);
- a benchmark holds the card exclusively: it waits until no other rdiunet job holds the card, and
  while it waits no new job starts on it, so its timing and energy are its own.

The holds are flock() locks on files in a private per-user folder (0700, owned by the user,
checked); the files are opened without following symbolic links and never written. The kernel
drops a process's locks when it ends, however it ends (SIGKILL included). A job that a scheduler
gave its own card (Slurm sets SLURM_JOB_ID and restricts CUDA_VISIBLE_DEVICES) claims nothing.

No silent CPU fallback. When a GPU is asked for (`cuda`) or expected (`auto` inside a Slurm GPU
allocation, or where nvidia-smi lists a GPU) and torch cannot use CUDA, the job stops in one line
naming torch's version and CUDA build, the driver, and the fix.
"""

import fcntl
import os
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rdiunet.errors import UserError
from rdiunet.nvidia_smi import listed_gpus, nvidia_smi
from rdiunet.nvml import load_nvml, nvml_handle

LOCK_DIR_ENV = "RDIUNET_GPU_LOCK_DIR"
ROLES = ("train", "bench")

# Locks this process holds; the descriptors must stay open for the locks to stay held.
_held: list[int] = []


@dataclass(frozen=True)
class GpuCandidate:
    """A visible GPU: its torch ordinal, a stable key for its lock files, and how busy it is."""

    index: int
    key: str
    busy: tuple = ()


# --- the private lock folder ---------------------------------------------------------------------


def lock_dir() -> Path:
    """$RDIUNET_GPU_LOCK_DIR, else $XDG_RUNTIME_DIR/rdiunet-gpu-locks, else a per-user folder in
    the temporary directory; created 0700 and checked to be the user's own."""
    if os.environ.get(LOCK_DIR_ENV):
        path = Path(os.environ[LOCK_DIR_ENV])
    elif os.environ.get("XDG_RUNTIME_DIR") and Path(os.environ["XDG_RUNTIME_DIR"]).is_dir():
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "rdiunet-gpu-locks"
    else:
        path = Path(tempfile.gettempdir()) / f"rdiunet-gpu-locks-{os.getuid()}"
    return private_folder(path)


def private_folder(path: Path) -> Path:
    fix = f"set {LOCK_DIR_ENV} to a folder of your own"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as error:
        raise UserError(f"cannot use the GPU lock folder {path} ({error.strerror}); {fix}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UserError(f"the GPU lock folder {path} is a link or not a folder; {fix}")
    if info.st_uid != os.getuid():
        raise UserError(f"the GPU lock folder {path} belongs to another user (uid {info.st_uid}); {fix}")
    if info.st_mode & 0o077:
        raise UserError(f"the GPU lock folder {path} is open to other users; chmod 700 it, or {fix}")
    return path


def open_lock(path: Path) -> int:
    """A descriptor of the lock file, created if needed; never a link, never truncated or written."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise UserError(f"cannot open the GPU lock file {path} ({error.strerror})") from None


def try_flock(path: Path, mode: int) -> int | None:
    """The descriptor holding `mode` (LOCK_SH or LOCK_EX) on `path`, or None if that must wait."""
    fd = open_lock(path)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def release(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


# --- claiming ------------------------------------------------------------------------------------


def try_train(directory: Path, key: str, slots: int) -> list[int] | None:
    """A training job's hold on card `key`: the card shared (no benchmark on it) and a free slot."""
    gate = try_flock(directory / f"gpu-{key}.gate", fcntl.LOCK_SH)  # a waiting benchmark closes it
    if gate is None:
        return None
    card = try_flock(directory / f"gpu-{key}.card", fcntl.LOCK_SH)
    release(gate)
    if card is None:
        return None
    for slot in range(slots):
        held = try_flock(directory / f"gpu-{key}.slot{slot}", fcntl.LOCK_EX)
        if held is not None:
            return [card, held]
    release(card)
    return None


def try_bench(directory: Path, key: str) -> list[int] | None:
    """A benchmark's hold on card `key`: its gate and the card, both exclusively."""
    gate = try_flock(directory / f"gpu-{key}.gate", fcntl.LOCK_EX)
    if gate is None:
        return None
    card = try_flock(directory / f"gpu-{key}.card", fcntl.LOCK_EX)
    if card is None:
        release(gate)
        return None
    return [card, gate]


def claim_gpu(
    candidates: list[GpuCandidate],
    role: str = "train",
    slots: int = 1,
    directory: Path | None = None,
    wait_s: float = 7 * 24 * 3600,
    poll_s: float = 2.0,
) -> GpuCandidate:
    """Hold a card for this process (as long as it lives): for training, the least busy card with
    a free slot; for a benchmark, a card to itself. Waits, saying so once, while none can be had."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    directory = private_folder(directory) if directory else lock_dir()
    ordered = sorted(candidates, key=lambda c: (c.busy, c.index))
    deadline = time.monotonic() + wait_s
    announced, gate = False, None
    while True:
        if role == "train":
            for candidate in ordered:
                held = try_train(directory, candidate.key, slots)
                if held is not None:
                    _held.extend(held)
                    return candidate
        elif gate is None:
            for candidate in ordered:  # a card that is free right now
                held = try_bench(directory, candidate.key)
                if held is not None:
                    _held.extend(held)
                    return candidate
            # None is: close the least busy card's gate, so that no new job starts on it while
            # this benchmark waits for the jobs already there.
            gate = try_flock(directory / f"gpu-{ordered[0].key}.gate", fcntl.LOCK_EX)
        else:
            card = try_flock(directory / f"gpu-{ordered[0].key}.card", fcntl.LOCK_EX)
            if card is not None:
                _held.extend([card, gate])
                return ordered[0]
        if time.monotonic() > deadline:
            release(gate)
            raise UserError(
                f"no GPU became free for this {role} job within {wait_s:.0f} s (locks in {directory}); "
                "run fewer jobs at once (--resources gpu=N)"
            )
        if not announced:
            what = "a card to itself" if role == "bench" else "a free training slot"
            print(
                f"waiting for {what} (other rdiunet jobs hold the GPUs; locks in {directory})",
                file=sys.stderr,
            )
            announced = True
        time.sleep(poll_s)


def visible_gpus() -> list[GpuCandidate]:
    """The GPUs torch can see (CUDA_VISIBLE_DEVICES applies), least busy first where NVML tells."""
    nvml, _ = load_nvml()
    candidates = []
    for index in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        key = str(uuid) if uuid is not None else f"index{index}"
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


def scheduler_assigned() -> str | None:
    """How a scheduler gave this job its own GPU(s), or None."""
    job, visible = os.environ.get("SLURM_JOB_ID"), os.environ.get("CUDA_VISIBLE_DEVICES")
    if job and visible:
        return f"Slurm job {job} was given GPU(s) {visible}"
    return None


# --- no silent CPU fallback -----------------------------------------------------------------------


def gpu_expected() -> str | None:
    """Why this job should have a GPU though it did not ask by name, or None."""
    if os.environ.get("SLURM_JOB_ID"):
        for variable in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES"):
            if os.environ.get(variable):
                return f"this Slurm job has GPUs ({variable}={os.environ[variable]})"
    listed = listed_gpus()
    if listed:
        return f"nvidia-smi lists {len(listed)} GPU(s) ({listed[0]})"
    return None


def driver_version() -> str | None:
    nvml, _ = load_nvml()
    if nvml is not None:
        version = nvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    versions = nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
    return versions[0] if versions else None


def no_cuda(reason: str) -> UserError:
    build = torch.version.cuda or "none: a CPU-only build"
    return UserError(
        f"{reason}, but torch {torch.__version__} (CUDA build: {build}) cannot use CUDA "
        f"(NVIDIA driver: {driver_version() or 'not found'}); install the torch build for this driver "
        "(README, 'The right wheels'), or pass --device cpu (config: device: cpu) to use the CPU on purpose"
    )


def choose_device(spec: str = "auto", role: str = "train", slots: int = 1) -> torch.device:
    """`auto` (a GPU when there is one, else the CPU), `cpu`, `cuda` or `cuda:i`; a GPU is claimed
    for this job as the module's docstring says."""
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        if not torch.cuda.is_available():
            reason = gpu_expected()
            if reason:
                raise no_cuda(reason)
            return torch.device("cpu")
        spec = "cuda"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        raise UserError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise no_cuda(f"--device {spec} asks for a GPU")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"--device {spec}: only {count} CUDA device(s) visible")
    assigned = scheduler_assigned()
    if assigned:
        print(f"{assigned}: using it without a local claim", file=sys.stderr, flush=True)
        return torch.device("cuda", device.index or 0)
    candidates = [c for c in visible_gpus() if device.index is None or c.index == device.index]
    claimed = claim_gpu(candidates, role, slots)
    print(f"claimed GPU cuda:{claimed.index} ({claimed.key}) for {role}", file=sys.stderr, flush=True)
    return torch.device("cuda", claimed.index)
