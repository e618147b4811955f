"""Where a results tree keeps its files, and one type that owns a training run's folder.

    results/{dataset}/{model}/seed{seed}/   one training run (RunFolder)
    results/{dataset}/{model}/bench.json    the benchmark of that model at the dataset's image size

Every reader of a run (training, evaluation, collection, figures, the report) goes through
RunFolder, so the file names live here only. A missing or damaged file is one error line.
"""

from dataclasses import dataclass
from pathlib import Path

from rdiunet.errors import UserError
from rdiunet.fileio import exclusive_lock, read_json, remove_leftovers

RERUN = "run the workflow (or rdiunet train) for it first"


def bench_path(results: Path, dataset: str, model: str) -> Path:
    return Path(results) / dataset / model / "bench.json"


def speed_path(results: Path, dataset: str) -> Path:
    """The interleaved timing sessions of every model of a dataset (rdiunet.sessions)."""
    return Path(results) / dataset / "speed.json"


def read_speed(results: Path, dataset: str) -> dict:
    return read_json(speed_path(results, dataset), "run the workflow (or rdiunet speed) for it first")


def read_bench(results: Path, dataset: str, model: str) -> dict:
    return read_json(bench_path(results, dataset, model), "run the workflow (or rdiunet bench) for it first")


def read_csv(path: Path):
    """A CSV as a pandas frame; missing or unreadable is one error line."""
    import pandas as pd

    if not path.exists():
        raise UserError(f"{path} is missing; {RERUN}")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{path} cannot be read as CSV ({error}); {RERUN}") from None


@dataclass(frozen=True)
class RunFolder:
    """One training run's folder (docs/training.md lists what each file holds)."""

    path: Path

    @classmethod
    def of(cls, results: Path, dataset: str, model: str, seed: int) -> "RunFolder":
        return cls(Path(results) / dataset / model / f"seed{seed}")

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def best(self) -> Path:
        """The weights of the epoch with the best validation Dice."""
        return self.path / "best.pt"

    @property
    def best_loss(self) -> Path:
        """The weights of the epoch with the lowest validation loss."""
        return self.path / "best_loss.pt"

    def weights(self, checkpoint: str) -> Path:
        """The file holding a checkpoint's weights (rdiunet.readings.CHECKPOINTS); the last
        epoch's are those of the training state."""
        return {"best_dice": self.best, "best_loss": self.best_loss, "last": self.checkpoint}[checkpoint]

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def per_image(self) -> Path:
        return self.path / "per_image.csv"

    @property
    def gpu(self) -> Path:
        return self.path / "gpu.csv"

    @property
    def run_info(self) -> Path:
        return self.path / "run.json"

    @property
    def lock(self) -> Path:
        return self.path / ".lock"

    def locked(self):
        """The folder to this process alone for the block (training or evaluating); a second
        process that asks stops with one line."""
        self.path.mkdir(parents=True, exist_ok=True)
        busy = f"another rdiunet job is writing {self.path}; wait for it, or use another --out folder"
        return exclusive_lock(self.lock, busy)

    def remove_leftovers(self) -> None:
        """Temporary files of a killed writer (a half-written checkpoint is as large as a whole
        one). Call it while holding the lock."""
        for path in (
            self.history,
            self.checkpoint,
            self.best,
            self.best_loss,
            self.metrics,
            self.per_image,
            self.run_info,
        ):
            remove_leftovers(path)

    def read_history(self):
        return read_csv(self.history)

    def read_per_image(self):
        return read_csv(self.per_image)

    def read_gpu_samples(self):
        """NVML samples as a frame; empty where the run used no GPU or wrote no samples, and where
        the file is empty or cut (a kill, a full disk): samples are a figure, never a reason to stop
        a report. A cut last line is dropped."""
        import pandas as pd

        try:
            frame = pd.read_csv(self.gpu, on_bad_lines="skip")
        except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
            return pd.DataFrame()
        if "time" not in frame.columns:
            return pd.DataFrame()
        return frame.dropna(subset=["time"])

    def read_metrics(self) -> dict:
        return read_json(self.metrics, RERUN)

    def read_run(self) -> dict:
        return read_json(self.run_info, RERUN)

    def load_weights(self, checkpoint: str, identity: dict) -> dict:
        """A checkpoint's file, verified: its weights match their sha256 and it belongs to this run."""
        from rdiunet import checkpoints

        fix = "retrain the run (delete its folder and run the workflow again)"
        path = self.weights(checkpoint)
        state = checkpoints.load(path, fix)
        checkpoints.check_identity(path, state, identity, fix)
        return state

    def load_model(self, checkpoint: str = "best_dice"):
        """A checkpoint's weights in the run's own model, on the CPU, in eval mode (verified
        against the identity recorded in metrics.json)."""
        from rdiunet.models import build

        config = self.read_run()["config"]
        network = build(config["model"], **config["model_options"])
        network.load_state_dict(self.load_weights(checkpoint, self.read_metrics()["identity"])["model"])
        return network.eval()
