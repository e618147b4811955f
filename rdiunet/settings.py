"""The settings of a training run and of a benchmark, each defined once.

The command line takes its defaults from these dataclasses, the workflow schema
(workflow/schemas/config.schema.yaml) repeats the ones it exposes, and a test checks that the two
agree.
"""

from dataclasses import dataclass, field

# Mixed-precision modes (--amp); rdiunet.runtime maps each to its autocast dtype.
PRECISIONS = ("off", "bf16", "fp16")


def plain(value):
    """A value as JSON stores it (tuples become lists), so identities compare after a round trip."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


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

    def identity(self, data_sha256: str | None) -> dict:
        """What a checkpoint must agree on to be resumed (epochs may grow; device may change)."""
        return {
            "model": self.model,
            "model_options": plain(self.model_options),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "lr": self.lr,
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
