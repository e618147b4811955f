"""How a job meets its device: which device, precision, memory layout, TF32, determinism and CPU
threads. Training and benchmarks set torch up here, so both record the same settings the same way.

Precisions (rdiunet.readings.PRECISIONS): `tf32` keeps float32 weights and lets matmul and cuDNN
convolutions use TF32 (what both major frameworks do by default on an A100), `fp32` turns TF32 off
for both, `bf16` and `fp16` autocast (fp16 with a gradient scaler). `auto` is bf16 on a GPU with
native bfloat16 and tf32 elsewhere. The TF32 switches are global and exist on every build; they are
recorded as they really are, beside whether they can apply (a CUDA device). Where torch has the
`fp32_precision` switches (2.9 and later) they are set and read, and the legacy `allow_tf32` ones
are left alone: torch refuses to read a legacy switch once the new one was set (by us or by the
user's own code).

A Runtime carries the claim on its card (rdiunet.gpu): it is a context manager, and the work that
made it releases the claim when it ends, on error too.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from rdiunet.errors import UserError
from rdiunet.gpu import Claim, choose_device
from rdiunet.readings import PRECISIONS

AUTOCAST = {"tf32": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
assert AUTOCAST.keys() == PRECISIONS.keys()


@dataclass(frozen=True)
class Runtime:
    """Where tensors live, in which precision and memory layout."""

    device: torch.device
    precision: str
    channels_last: bool
    claim: Claim | None = field(default=None, compare=False)

    def release(self) -> None:
        """Let go of the card (once this process's other work on it has too)."""
        if self.claim is not None:
            self.claim.release()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AUTOCAST[self.precision]

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def settings(self) -> dict:
        """The settings as they really are now, for run.json and bench.json."""
        return {
            "precision": self.precision,
            "autocast_dtype": DTYPE_NAMES[self.amp_dtype] if self.amp_dtype is not None else None,
            **tf32_switches(),
            "tf32_applies": self.cuda,  # TF32 is a property of NVIDIA GPUs; on a CPU the switches do nothing
            "channels_last": self.channels_last,
            "gpu_claim": self.claim.record() if self.claim is not None else None,
        }


def set_deterministic() -> None:
    # cuBLAS needs a fixed workspace for reproducible results; harmless on the CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def planned_device_type(spec: str) -> str:
    """The device type a spec will give, without choosing (or claiming) a device."""
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if spec.startswith("cuda") else spec


def native_bf16() -> bool:
    """bfloat16 in hardware on the current GPU (not the emulation pre-Ampere cards offer, where
    cuDNN has no bfloat16 convolutions)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device_type: str) -> str:
    if precision == "auto":
        return "bf16" if device_type == "cuda" and native_bf16() else "tf32"
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use auto or one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device_type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device; use tf32, fp32 or bf16 on the CPU")
    return precision


NEW_TF32_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def effective_fp32_precision(*levels) -> str:
    """The first setting that is not "none" (inherit), from the most specific switch up; "ieee"
    when none is set."""
    return next((level.fp32_precision for level in levels if level.fp32_precision != "none"), "ieee")


def tf32_switches() -> dict:
    """Whether matmuls and cuDNN convolutions may use TF32, as torch has it set now."""
    backends = torch.backends
    if NEW_TF32_API:
        matmul = effective_fp32_precision(backends.cuda.matmul, backends)
        conv = effective_fp32_precision(backends.cudnn.conv, backends.cudnn, backends)
        return {
            "matmul_allow_tf32": matmul == "tf32",
            "cudnn_allow_tf32": conv == "tf32",
            "matmul_fp32_precision": backends.cuda.matmul.fp32_precision,
            "conv_fp32_precision": backends.cudnn.conv.fp32_precision,
        }
    return {
        "matmul_allow_tf32": backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": backends.cudnn.allow_tf32,
    }


def set_precision(precision: str) -> None:
    tf32 = precision != "fp32"
    if NEW_TF32_API:
        value = "tf32" if tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def make_runtime(
    device: str = "auto",
    precision: str = "tf32",
    channels_last: bool | None = None,
    deterministic: bool = False,
    threads: int | None = None,
    role: str = "train",
    gpu_slots: int = 1,
    cudnn_benchmark: bool = True,
) -> Runtime:
    """Choose (and claim, as `role` with `gpu_slots` trainings per card: rdiunet.gpu) the device
    and set torch up; the caller releases the claim (`with make_runtime(...) as runtime:`).
    `channels_last` None means on a GPU; cuDNN autotunes its convolutions unless `deterministic`
    (only deterministic algorithms then) or not `cudnn_benchmark`."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        set_deterministic()
    chosen, claim = choose_device(device, role, gpu_slots)
    cuda = chosen.type == "cuda"
    try:
        if cuda:
            # CUDA events, synchronize and new tensors use the current device: make it this one.
            torch.cuda.set_device(chosen)
            torch.backends.cudnn.benchmark = not deterministic and cudnn_benchmark
        resolved = resolve_precision(precision, chosen.type)
        set_precision(resolved)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    layout = cuda if channels_last is None else channels_last
    return Runtime(chosen, resolved, channels_last=layout, claim=claim)


def training_runtime(settings) -> Runtime:
    """The runtime of a TrainSettings: channels_last on GPUs."""
    return make_runtime(
        settings.device,
        precision=settings.precision,
        deterministic=settings.deterministic,
        threads=settings.threads,
        gpu_slots=settings.gpu_slots,
        cudnn_benchmark=settings.cudnn_benchmark,
    )
