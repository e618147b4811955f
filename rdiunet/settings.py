"""The settings of a training run and of a benchmark, each defined once.

The command line takes its defaults from these dataclasses, the workflow schema
(workflow/schemas/config.schema.yaml) repeats the ones it exposes, and a test checks that the two
agree.
"""

import math
from dataclasses import dataclass, field

from rdiunet.errors import UserError
from rdiunet.readings import CHECKPOINTS, PRECISION_READINGS, PRECISIONS, PROTOCOLS

# --precision: a named precision (rdiunet.readings.PRECISIONS, set up by rdiunet.runtime), or auto:
# bf16 on a GPU with native bfloat16, tf32 elsewhere.
PRECISION_CHOICES = ("auto", *PRECISIONS)


def plain(value):
    """A value as JSON stores it (tuples become lists), so identities compare after a round trip."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def one_of(option: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(f"{option} must be one of {', '.join(choices)}; got {value!r}")


def at_least(option: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum:
        raise UserError(f"{option} must be an integer of at least {minimum}, got {value}")


@dataclass(frozen=True)
class TrainSettings:
    """One training run: which data, model and seed, and how (the paper: Adam, lr 1e-4, BCE)."""

    data: str
    model: str
    seed: int
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-4
    device: str = "auto"
    precision: str = "tf32"
    deterministic: bool = False
    cudnn_benchmark: bool = True  # cuDNN autotunes its convolutions (off when deterministic)
    compile: bool = False
    threads: int | None = None  # CPU threads; None: torch's default
    gpu_slots: int = 1  # training jobs that may share one card (rdiunet.gpu)
    model_options: dict = field(default_factory=dict)
    checkpoint: str = "best_dice"  # whose test metrics metrics.json shows first (all three are kept)

    def check(self) -> None:
        """Every number in range, as one error line naming the option."""
        at_least("--epochs", self.epochs, 1)
        at_least("--batch-size", self.batch_size, 1)
        at_least("--seed", self.seed, 0)
        if self.threads is not None:
            at_least("--threads", self.threads, 1)
        at_least("--gpu-slots", self.gpu_slots, 1)
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a finite number above 0, got {self.lr}")
        one_of("--precision", self.precision, PRECISION_CHOICES)
        one_of("--checkpoint", self.checkpoint, CHECKPOINTS)

    def identity(self, data_sha256: str, precision: str, fold: dict | None = None) -> dict:
        """What every checkpoint of the run records and must agree on to be resumed or evaluated
        (epochs may grow; device, threads and gpu_slots may change). `precision` is the one in use (auto
        resolved): a run continued in another precision would be neither. `fold`: the folds a
        cross-validated dataset tests and validates this seed on (rdiunet.data.folds)."""
        return {
            **({"fold": fold} if fold is not None else {}),
            "model": self.model,
            "model_options": plain(self.model_options),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "precision": precision,
            "data_sha256": data_sha256,
        }


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark: a model at an image size, and every setting that changes its speed."""

    model: str
    size: int
    device: str = "auto"
    precision: str = "tf32"  # the precision of every protocol
    precisions: tuple[str, ...] = PRECISION_READINGS  # measured (on a GPU) with the headline protocol
    protocol: str = "eager_b1"  # the one the other precisions are measured with
    channels_last: bool = False
    compile: bool = False
    batch_sizes: tuple[int, ...] | None = None  # None: 1,8,64,256 on a GPU, 1,8 on the CPU
    runs: int = 200  # timed batch-1 runs (at least 200 for Table 1)
    warmup: int = 20
    sessions: int = 5  # interleaved timing sessions of `rdiunet speed` (the speed claim's interval)
    threads: int | None = None  # CPU threads; None: torch's default
    model_options: dict = field(default_factory=dict)

    def check(self) -> None:
        """Every number in range, as one error line naming the option."""
        if self.size < 16 or self.size % 16:
            raise UserError(f"--size must be a positive multiple of 16, got {self.size}")
        at_least("--runs", self.runs, 1)
        at_least("--warmup", self.warmup, 0)
        at_least("--sessions", self.sessions, 1)
        if self.threads is not None:
            at_least("--threads", self.threads, 1)
        if self.batch_sizes is not None and (not self.batch_sizes or min(self.batch_sizes) < 1):
            raise UserError(f"--batch-sizes takes positive integers like 1,8,64,256; got {self.batch_sizes}")
        one_of("--precision", self.precision, PRECISION_CHOICES)
        for precision in self.precisions:
            one_of("--precisions", precision, PRECISIONS)
        one_of("--protocol", self.protocol, PROTOCOLS)
