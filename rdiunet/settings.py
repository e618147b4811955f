"""The settings of a training run and of a benchmark, each defined once.

The command line takes its defaults from these dataclasses, the workflow schema
(workflow/schemas/config.schema.yaml) repeats the ones it exposes, and a test checks that the two
agree.
"""

import math
from dataclasses import dataclass, field

from rdiunet.errors import UserError

# Mixed-precision modes (--amp); rdiunet.runtime maps each to its autocast dtype.
PRECISIONS = ("off", "bf16", "fp16")


def plain(value):
    """A value as JSON stores it (tuples become lists), so identities compare after a round trip."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


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
    amp: str = "auto"  # auto: bf16 on GPUs that support it, off elsewhere
    deterministic: bool = False
    compile: bool = False
    threads: int | None = None  # CPU threads; None: torch's default
    model_options: dict = field(default_factory=dict)

    def check(self) -> None:
        """Every number in range, as one error line naming the option."""
        at_least("--epochs", self.epochs, 1)
        at_least("--batch-size", self.batch_size, 1)
        at_least("--seed", self.seed, 0)
        if self.threads is not None:
            at_least("--threads", self.threads, 1)
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a finite number above 0, got {self.lr}")
        if self.amp not in ("auto", *PRECISIONS):
            raise UserError(f"--amp must be one of auto, {', '.join(PRECISIONS)}; got {self.amp}")

    def identity(self, data_sha256: str) -> dict:
        """What every checkpoint of the run records and must agree on to be resumed or evaluated
        (epochs may grow; device and threads may change)."""
        return {
            "model": self.model,
            "model_options": plain(self.model_options),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "amp": self.amp,
            "data_sha256": data_sha256,
        }


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark: a model at an image size, and every setting that changes its speed."""

    model: str
    size: int
    device: str = "auto"
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    batch_sizes: tuple[int, ...] | None = None  # None: 1,8,64,256 on a GPU, 1,8 on the CPU
    runs: int = 200  # timed batch-1 runs (at least 200 for Table 1)
    warmup: int = 20
    threads: int | None = None  # CPU threads; None: torch's default
    model_options: dict = field(default_factory=dict)

    def check(self) -> None:
        """Every number in range, as one error line naming the option."""
        if self.size < 16 or self.size % 16:
            raise UserError(f"--size must be a positive multiple of 16, got {self.size}")
        at_least("--runs", self.runs, 1)
        at_least("--warmup", self.warmup, 0)
        if self.threads is not None:
            at_least("--threads", self.threads, 1)
        if self.batch_sizes is not None and (not self.batch_sizes or min(self.batch_sizes) < 1):
            raise UserError(f"--batch-sizes takes positive integers like 1,8,64,256; got {self.batch_sizes}")
