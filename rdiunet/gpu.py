"""GPUs: choosing and claiming a card for a job, and never falling back to the CPU in silence.

Claiming. Snakemake never sets CUDA_VISIBLE_DEVICES for local jobs, and counts `resources: gpu=1`
only against a `--resources gpu=N` limit, so on a workstation several jobs could start on one
card. Every GPU job therefore claims its card, also when one GPU is visible:

- a training job holds the card shared and one of its `gpu_slots` training slots (default 1: one
  training per card; more let small models fill a large card);
- a benchmark holds the card exclusively: it waits until no other rdiunet job holds the card, and
  while it waits no new job starts on it, so its timing and energy are its own.

The holds are flock() locks on files in a private per-user folder (0700, owned by the user,
checked); the files are opened without following symbolic links and never written. A claim is
released when the work that took it ends (it is a context manager; rdiunet.runtime.Runtime passes
it on), also on error, and the kernel drops whatever a process still holds when it ends, however
it ends (SIGKILL included). Within one process a claim is re-entrant: work that asks for a card
the process already holds, for the same role or a weaker one (training under a benchmark), is
handed the same claim, since flock() locks belong to each open file and a second set would wait
on the first for ever. A Slurm job that sees exactly one card (SLURM_JOB_ID set, one entry in
CUDA_VISIBLE_DEVICES) was given it alone and claims nothing; with several visible cards the jobs
of the allocation claim among them as on a workstation.

No silent CPU fallback. When a GPU is asked for (`cuda`) or expected (`auto` inside a Slurm GPU
allocation, or where nvidia-smi lists a GPU) and torch cannot use CUDA, the job stops in one line
naming torch's version and CUDA build, the driver, and the fix.
"""

import fcntl
import os
import re
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rdiunet.errors import UserError
from rdiunet.nvidia_smi import listed_gpus, nvidia_smi
from rdiunet.nvml import load_nvml, nvml_handle

LOCK_DIR_ENV = "RDIUNET_GPU_LOCK_DIR"
STANDIN_ENV = "RDIUNET_STANDIN_GPU"
ROLES = ("train", "bench")


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


# How strong a role's hold is: a process holding a card for a role may be handed it again for that
# role or a weaker one.
ROLE_STRENGTH = {"train": 0, "bench": 1}


@dataclass(eq=False)
class Claim:
    """This process's hold on one card, shared by every piece of work in the process that asked for
    it; the locks are let go when the last of them releases it (or the process ends)."""

    card: GpuCandidate
    role: str
    slots: int
    how: str  # "claimed", or why no lock was needed (a card the scheduler gave the job)
    fds: list[int] = field(default_factory=list)
    users: int = 1

    def release(self) -> None:
        with _claims_lock:
            if self.users == 0:
                return
            self.users -= 1
            if self.users == 0:
                release(*self.fds)
                self.fds = []
                if _claims.get(self.card.key) is self:
                    del _claims[self.card.key]

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def record(self) -> dict:
        """What run.json and bench.json keep: which card, for what, and how it was got."""
        return {
            "card": self.card.key,
            "index": self.card.index,
            "role": self.role,
            "gpu_slots": self.slots,
            "how": self.how,
        }


# The claims this process holds, by card key. flock() locks belong to each open file, so a second
# claim of a card this process already holds would wait on the process's own locks for ever: it is
# handed the existing claim instead.
_claims: dict[str, Claim] = {}
_claims_lock = threading.Lock()


def held_claims() -> list[Claim]:
    with _claims_lock:
        return list(_claims.values())


def reuse_claim(candidates: list[GpuCandidate], role: str) -> Claim | None:
    """This process's claim on one of `candidates`, handed out again, or None if it holds none."""
    keys = {candidate.key for candidate in candidates}
    with _claims_lock:
        for claim in _claims.values():
            if claim.card.key not in keys:
                continue
            if ROLE_STRENGTH[claim.role] < ROLE_STRENGTH[role]:
                # A shared flock() cannot be made exclusive without letting other processes in
                # between; the work holding it must end first.
                raise RuntimeError(
                    f"this process holds {claim.card.key} for {claim.role} and now asks for it as {role}: "
                    f"release the {claim.role} claim first"
                )
            claim.users += 1
            return claim
    return None


def claim_gpu(
    candidates: list[GpuCandidate],
    role: str = "train",
    slots: int = 1,
    directory: Path | None = None,
    wait_s: float = 7 * 24 * 3600,
    poll_s: float = 2.0,
) -> Claim:
    """Hold a card for this process until the claim is released (it is a context manager) or the
    process ends: for training, the least busy card with a free slot; for a benchmark, a card to
    itself. Waits, saying so once, while none can be had. A card this process already holds (for
    `role` or a stronger one) is handed out again without new locks."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    reused = reuse_claim(candidates, role)
    if reused is not None:
        return reused
    directory = private_folder(directory) if directory else lock_dir()
    card, fds = wait_for_card(candidates, role, slots, directory, wait_s, poll_s)
    claim = Claim(card, role, slots, "claimed", fds)
    with _claims_lock:
        _claims[card.key] = claim
    return claim


def wait_for_card(
    candidates: list[GpuCandidate], role: str, slots: int, directory: Path, wait_s: float, poll_s: float
) -> tuple[GpuCandidate, list[int]]:
    """The card won and the lock descriptors that hold it."""
    ordered = sorted(candidates, key=lambda c: (c.busy, c.index))
    deadline = time.monotonic() + wait_s
    announced, gate = False, None
    while True:
        if role == "train":
            for candidate in ordered:
                held = try_train(directory, candidate.key, slots)
                if held is not None:
                    return candidate, held
        elif gate is None:
            for candidate in ordered:  # a card that is free right now
                held = try_bench(directory, candidate.key)
                if held is not None:
                    return candidate, held
            # None is: close the least busy card's gate, so that no new job starts on it while
            # this benchmark waits for the jobs already there.
            gate = try_flock(directory / f"gpu-{ordered[0].key}.gate", fcntl.LOCK_EX)
        else:
            card = try_flock(directory / f"gpu-{ordered[0].key}.card", fcntl.LOCK_EX)
            if card is not None:
                return ordered[0], [card, gate]
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


def card_key(index: int) -> str:
    """A card's lock-file key: the UUID torch gives (as NVML's, without its GPU-/MIG- prefix)."""
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return str(uuid) if uuid is not None else f"index{index}"


def visible_gpus() -> list[GpuCandidate]:
    """The GPUs torch can see (CUDA_VISIBLE_DEVICES applies), least busy first where NVML tells."""
    nvml, _ = load_nvml()
    candidates = []
    for index in range(torch.cuda.device_count()):
        key = card_key(index)
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


def scheduler_assigned(visible: int) -> str | None:
    """How a scheduler gave this job its own card, or None. Only a job that sees exactly one card
    was given it alone: with several visible (snakemake run inside `salloc --gpus=4`, say), the
    jobs of the allocation share them and claim one each as on a workstation."""
    job, devices = os.environ.get("SLURM_JOB_ID"), os.environ.get("CUDA_VISIBLE_DEVICES")
    if job and devices and visible == 1:
        return f"Slurm job {job} was given one GPU ({devices})"
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


# PyTorch's wheel for each CUDA major version and the oldest driver that runs it (CUDA's minor
# version compatibility: a driver for X.0 runs every X.y build).
CUDA_WHEELS = {13: ("cu130", 580), 12: ("cu128", 525)}


def driver_cuda_version() -> str | None:
    """The newest CUDA version the installed driver supports ("12.8"), or None without a driver."""
    nvml, _ = load_nvml()
    if nvml is not None:
        for name in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
            call = getattr(nvml, name, None)
            try:
                version = call() if call is not None else None
            except Exception:
                version = None
            if version:
                return f"{version // 1000}.{version % 1000 // 10}"
    for line in nvidia_smi():
        found = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", line)
        if found:
            return f"{found[1]}.{found[2]}"
    return None


def wheel_advice() -> str | None:
    """One line naming the torch build to install where this torch cannot use this driver
    (a CPU build beside a driver, or a build for a newer CUDA than the driver's); None where
    they match or no driver is here."""
    supported = driver_cuda_version()
    if supported is None:
        return None
    major, base = int(supported.split(".")[0]), torch.__version__.split("+")[0]
    build = torch.version.cuda
    if build is not None and int(build.split(".")[0]) <= major:
        return None
    driver = f"NVIDIA driver {driver_version() or '?'} (CUDA {supported} at most)"
    have = f"torch {torch.__version__} " + ("is a CPU build" if build is None else f"needs CUDA {build}")
    fitting = [m for m in CUDA_WHEELS if m <= major]
    if not fitting:
        oldest = min(wheel[1] for wheel in CUDA_WHEELS.values())
        return f"{have} and the {driver} is too old for any torch {base} build: update it to {oldest}+"
    variant, _ = CUDA_WHEELS[max(fitting)]
    newest, needs = CUDA_WHEELS[max(CUDA_WHEELS)]
    return (
        f"{have} but this machine has {driver}: pip install torch=={base} --index-url "
        f"https://download.pytorch.org/whl/{variant} ({newest} needs driver {needs} or newer)"
    )


def no_cuda(reason: str) -> UserError:
    build = torch.version.cuda or "none: a CPU-only build"
    fix = wheel_advice() or "install the torch build for this driver (README, 'The right wheels')"
    return UserError(
        f"{reason}, but torch {torch.__version__} (CUDA build: {build}) cannot use CUDA "
        f"(NVIDIA driver: {driver_version() or 'not found'}); {fix}, "
        "or pass --device cpu (config: device: cpu) to use the CPU on purpose"
    )


def choose_device(
    spec: str = "auto", role: str = "train", slots: int = 1
) -> tuple[torch.device, Claim | None]:
    """`auto` (a GPU when there is one, else the CPU), `cpu`, `cuda` or `cuda:i`, and the claim on
    the card (the module's docstring): the caller releases it when its work ends."""
    if spec == "cpu":
        return torch.device("cpu"), standin_claim(role, slots)
    if spec == "auto":
        if not torch.cuda.is_available():
            reason = gpu_expected()
            if reason:
                raise no_cuda(reason)
            return torch.device("cpu"), standin_claim(role, slots)
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
    assigned = scheduler_assigned(count)
    if assigned:
        print(f"{assigned}: using it without a local claim", file=sys.stderr, flush=True)
        index = device.index or 0
        return torch.device("cuda", index), Claim(GpuCandidate(index, card_key(index)), role, slots, assigned)
    candidates = [c for c in visible_gpus() if device.index is None or c.index == device.index]
    claim = claim_gpu(candidates, role, slots)
    print(f"claimed GPU cuda:{claim.card.index} ({claim.card.key}) for {role}", file=sys.stderr, flush=True)
    return torch.device("cuda", claim.card.index), claim


def standin_claim(role: str, slots: int) -> Claim | None:
    """With $RDIUNET_STANDIN_GPU set, a CPU job claims a stand-in card of that name exactly as a GPU
    job claims a real one, so that the claiming of a GPU run (re-entry, release, slots, waiting)
    can be exercised on a machine without one (benchmarks/gpu_check.py's smoke test)."""
    key = os.environ.get(STANDIN_ENV)
    if not key:
        return None
    claim = claim_gpu([GpuCandidate(0, f"standin-{key}")], role, slots)
    print(f"claimed stand-in card {claim.card.key} for {role} (${STANDIN_ENV})", file=sys.stderr, flush=True)
    return claim
