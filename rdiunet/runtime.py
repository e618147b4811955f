"""How a job meets its device: which device, precision, memory layout, TF32, determinism and CPU
threads. Training and benchmarks set torch up here, so both record the same settings the same way."""

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from rdiunet.errors import UserError
from rdiunet.gpu import choose_device
from rdiunet.settings import PRECISIONS as PRECISION_NAMES

# --amp values -> autocast dtype (None: no autocast, float32 throughout).
PRECISIONS = dict(zip(PRECISION_NAMES, (None, torch.bfloat16, torch.float16), strict=True))
DTYPE_NAMES = {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def precision_name(dtype: torch.dtype | None) -> str:
    return next(name for name, value in PRECISIONS.items() if value == dtype)


@dataclass(frozen=True)
class Runtime:
    """Where tensors live, in which precision and memory layout."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

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
        return {
            "amp": precision_name(self.amp_dtype),
            "channels_last": self.channels_last,
            "tf32": self.cuda and torch.backends.cuda.matmul.allow_tf32,
        }


def set_deterministic() -> None:
    # cuBLAS needs a fixed workspace for reproducible results; harmless on the CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def make_runtime(
    device: str = "auto",
    amp: str = "off",
    channels_last: bool | None = None,
    deterministic: bool = False,
    tf32: bool | None = None,
    threads: int | None = None,
) -> Runtime:
    """Choose (and claim) the device and set torch up.

    `amp` is off, bf16, fp16 or auto (bf16 on GPUs that support it, off elsewhere);
    `channels_last` None means on a GPU; `tf32` None leaves torch's defaults alone; with
    `deterministic`, only deterministic algorithms run and cuDNN does not autotune.
    """
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        set_deterministic()
    chosen = choose_device(device)
    cuda = chosen.type == "cuda"
    if amp == "auto":
        amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    elif amp in PRECISIONS:
        amp_dtype = PRECISIONS[amp]
    else:
        raise UserError(f"unknown precision --amp {amp}; use one of auto, {', '.join(PRECISIONS)}")
    if amp_dtype == torch.float16 and not cuda:
        raise UserError("--amp fp16 needs a CUDA device; use --amp bf16 or off on the CPU")
    if cuda:
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = not deterministic
    return Runtime(chosen, amp_dtype, channels_last=cuda if channels_last is None else channels_last)


def training_runtime(settings) -> Runtime:
    """The runtime of a TrainSettings: TF32 and autotuning unless deterministic, channels_last on GPUs."""
    return make_runtime(
        settings.device,
        amp=settings.amp,
        deterministic=settings.deterministic,
        tf32=not settings.deterministic,
        threads=settings.threads,
    )
