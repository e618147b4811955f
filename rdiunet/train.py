"""Training the paper's way (Adam, lr 1e-4, binary cross-entropy), resumable, and evaluation.

A run folder holds:

    history.csv     one row per epoch: epoch, train_loss, val_loss, val_dice, val_iou,
                    val_dice_dataset, seconds, lr
    checkpoint.pt   the latest state: model, optimiser, RNG states, position, history so far
    gpu.csv         NVML samples (time, power, utilisation, memory, temperature, SM clock); header
                    only where no GPU is used
    best.pt         the weights with the best validation Dice (per-image mean)
    metrics.json    the best weights on the test split
    per_image.csv   id, dice, iou, hd95, gt_empty, pred_empty for each test image
    run.json        command, configuration, versions, device, settings, data checksum, times

Reproducibility: the seed fixes the initial weights, and each epoch's data order is drawn from a
generator seeded by (seed, epoch), so it does not depend on how many times the run was resumed.
The checkpoint carries the global RNG state (dropout) and the position inside the epoch. A rerun
of the same command continues from checkpoint.pt and ends with the same history as a run that was
never interrupted; SIGTERM (Slurm preemption) saves a checkpoint after the current batch and exits
with status 143; a finished run rerun does nothing.
"""

import csv
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rdiunet.data.dataset import Split, batches, load_prepared
from rdiunet.data.download import sha256_of
from rdiunet.errors import UserError
from rdiunet.fileio import atomic_path, read_json, write_json
from rdiunet.gpu import GpuSampler, choose_device
from rdiunet.metrics import confusion, dice_from_counts, hd95, iou_from_counts
from rdiunet.models import build
from rdiunet.provenance import environment, now

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_dice",
    "val_iou",
    "val_dice_dataset",
    "seconds",
    "lr",
)
CHECKPOINT_FORMAT = 1
PREEMPTED_EXIT = 128 + signal.SIGTERM


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the process should exit with status 143."""


@dataclass(frozen=True)
class TrainConfig:
    data: str
    model: str
    seed: int
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-4
    device: str = "auto"
    amp: str = "auto"
    deterministic: bool = False
    compile: bool = False
    model_options: dict = field(default_factory=dict)

    def identity(self, data_sha256: str) -> dict:
        """What a checkpoint must agree on to be resumed (epochs may grow; device may change)."""
        return {
            "model": self.model,
            "model_options": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.model_options.items()
            },
            "seed": self.seed,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "data_sha256": data_sha256,
        }


@dataclass(frozen=True)
class Runtime:
    """How tensors meet the device: where, in which precision and memory layout."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def settings(self) -> dict:
        return {
            "amp": {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype],
            "channels_last": self.channels_last,
            "tf32": self.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32,
        }


def make_runtime(config: TrainConfig) -> Runtime:
    device = choose_device(config.device)
    cuda = device.type == "cuda"
    if config.amp == "auto":
        amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    else:
        amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]
    if amp_dtype == torch.float16 and not cuda:
        raise UserError("--amp fp16 needs a CUDA device; use --amp bf16 or off on the CPU")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = not config.deterministic
        torch.backends.cudnn.allow_tf32 = not config.deterministic
        torch.backends.cudnn.benchmark = not config.deterministic
    return Runtime(device, amp_dtype, channels_last=cuda)


def set_deterministic() -> None:
    # cuBLAS needs a fixed workspace for reproducible results; harmless on the CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def run_split(model, split: Split, batch_size: int, runtime: Runtime, keep_predictions: bool = False):
    """Mean BCE, per-image confusion counts and (optionally) the binary predictions on the CPU."""
    model.eval()
    loss_sum = torch.zeros((), device=runtime.device, dtype=torch.float64)
    counts, predictions = [], []
    for images, masks in batches(split, batch_size):
        with runtime.autocast():
            logits = model(runtime.prepare_input(images))
        logits = logits.float()
        loss_sum += F.binary_cross_entropy_with_logits(logits, masks, reduction="sum").double()
        pred = logits > 0
        counts.append(confusion(pred, masks))
        if keep_predictions:
            predictions.append(pred[:, 0].to("cpu", torch.uint8))
    pixels = split.masks.numel()
    counts = torch.cat(counts).cpu()
    predictions = torch.cat(predictions).numpy() if keep_predictions else None
    return float(loss_sum) / pixels, counts, predictions


def data_summary(path: Path) -> dict | None:
    """The prepared data's own summary (dataset, counts, size, whether it is synthetic)."""
    summary = path.with_suffix(".json")
    if not summary.exists():
        return None
    keys = ("dataset", "synthetic", "image_size", "counts", "split")
    return {k: v for k, v in read_json(summary).items() if k in keys}


def check_splits(data: dict[str, Split], path: str) -> None:
    for name in ("train", "val", "test"):
        if len(data[name]) == 0:
            raise UserError(
                f"{path}: the {name} split is empty; prepare it again with other --split fractions"
            )


def load_checkpoint(path: Path, identity: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise UserError(f"{path} cannot be read ({error}); delete it to start the run afresh") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} was written by another version of rdiunet; delete it to start afresh")
    theirs = state["identity"]
    differences = [key for key in identity if theirs.get(key) != identity[key]]
    if differences:
        key = differences[0]
        raise UserError(
            f"refusing to resume from {path}: it was trained with {key}={theirs.get(key)!r}, this "
            f"run asks for {identity[key]!r}; use another --out folder or delete the checkpoint"
        )
    return state


def save_torch(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def write_history(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(history)


def print_epoch(row: dict, epochs: int) -> None:
    print(
        f"epoch {row['epoch']:>4}/{epochs}  train_loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_dice {row['val_dice']:.4f}  "
        f"val_iou {row['val_iou']:.4f}  {row['seconds']:.1f}s",
        file=sys.stderr,
        flush=True,
    )


class StopFlag:
    """Set by SIGTERM; the training loop checks it after every batch."""

    def __init__(self):
        self.raised = False
        self.previous = None

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, self._set)
        return self

    def _set(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)


def train(config: TrainConfig, out: Path, command: list[str] | None = None) -> dict:
    """Train (or resume, or do nothing if finished) and evaluate; return the test metrics."""
    out.mkdir(parents=True, exist_ok=True)
    run_file, checkpoint_path = out / "run.json", out / "checkpoint.pt"
    data_sha256 = sha256_of(Path(config.data)) if Path(config.data).exists() else None
    data = load_prepared(config.data)
    check_splits(data, config.data)
    identity = config.identity(data_sha256)
    finished_files = ("metrics.json", "per_image.csv", "history.csv", "checkpoint.pt", "best.pt")
    if all((out / name).exists() for name in finished_files):
        state = load_checkpoint(checkpoint_path, identity)
        if state["epoch"] >= config.epochs:
            print(f"{out}: already complete ({state['epoch']} epochs); nothing to do", file=sys.stderr)
            return read_json(out / "metrics.json")

    if config.deterministic:
        set_deterministic()
    runtime = make_runtime(config)
    torch.manual_seed(config.seed)
    raw_model = build(config.model, **config.model_options).to(runtime.device)
    if runtime.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(enabled=runtime.amp_dtype == torch.float16)

    epoch, skip, partial, history, best = 0, 0, {"loss_sum": 0.0, "images": 0, "seconds": 0.0}, [], None
    energy_before = 0.0  # GPU energy of the epochs kept from earlier, interrupted processes
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, identity)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        epoch, skip, partial = state["epoch"], state["batch"], state["partial"]
        history, best = state["history"], state["best"]
        energy_before = state.get("gpu_energy_j") or 0.0
        where = f"epoch {epoch + 1}, batch {skip}" if skip else f"after epoch {epoch}"
        print(f"resuming from {checkpoint_path} ({where})", file=sys.stderr, flush=True)
    model = torch.compile(raw_model) if config.compile else raw_model

    started = now()
    run_info = {
        "command": command or sys.argv,
        "config": asdict(config),
        "seed": config.seed,
        "data_sha256": data_sha256,
        "data": data_summary(Path(config.data)),
        "environment": environment(runtime.device),
        "settings": {**runtime.settings(), "compile": config.compile, "deterministic": config.deterministic},
        "status": "running",
        "started": started,
    }
    write_json(run_file, run_info)
    train_split = data["train"].to(runtime.device)
    val_split = data["val"].to(runtime.device)

    def checkpoint(epoch_done: int, batch_done: int, partial_state: dict) -> None:
        save_torch(
            checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "identity": identity,
                "epoch": epoch_done,
                "batch": batch_done,
                "partial": partial_state,
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "history": history,
                "best": best,
                "gpu_energy_j": energy_before + (sampler.energy_so_far()[0] or 0.0),
            },
        )

    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    with StopFlag() as stop, GpuSampler(out / "gpu.csv", runtime.device) as sampler:
        while epoch < config.epochs:
            model.train()
            clock = time.perf_counter()
            loss_sum = torch.tensor(partial["loss_sum"], device=runtime.device, dtype=torch.float64)
            seen, batch = partial["images"], skip
            order = epoch_generator(config.seed, epoch + 1)
            for images, masks in batches(train_split, config.batch_size, True, order, skip=skip):
                with runtime.autocast():
                    logits = model(runtime.prepare_input(images))
                loss = F.binary_cross_entropy_with_logits(logits.float(), masks)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach().double() * len(images)
                seen += len(images)
                batch += 1
                if stop.raised:
                    elapsed = partial["seconds"] + time.perf_counter() - clock
                    checkpoint(
                        epoch, batch, {"loss_sum": float(loss_sum), "images": seen, "seconds": elapsed}
                    )
                    write_json(run_file, {**run_info, "status": "preempted", "stopped": now()})
                    raise Preempted(f"SIGTERM: checkpoint saved at epoch {epoch + 1}, batch {batch}")
            train_loss = float(loss_sum) / seen
            if not math.isfinite(train_loss):
                write_json(run_file, {**run_info, "status": "failed", "stopped": now()})
                raise UserError(
                    f"the training loss became {train_loss} in epoch {epoch + 1}; the last good "
                    f"checkpoint (epoch {epoch}) is kept in {checkpoint_path}; try a lower --lr or --amp off"
                )
            val_loss, counts, _ = run_split(model, val_split, config.batch_size, runtime)
            epoch += 1
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_dice": float(dice_from_counts(counts).mean()),
                "val_iou": float(iou_from_counts(counts).mean()),
                "val_dice_dataset": float(dice_from_counts(counts.sum(0))),
                "seconds": round(partial["seconds"] + time.perf_counter() - clock, 3),
                "lr": optimizer.param_groups[0]["lr"],
            }
            history.append(row)
            if best is None or row["val_dice"] > best["val_dice"]:
                best = {"epoch": epoch, "val_dice": row["val_dice"]}
                save_torch(out / "best.pt", {"model": raw_model.state_dict(), **best, "identity": identity})
            skip, partial = 0, {"loss_sum": 0.0, "images": 0, "seconds": 0.0}
            checkpoint(epoch, 0, partial)
            write_history(out / "history.csv", history)
            print_epoch(row, config.epochs)

    # Rewritten here too: a workflow manager may have removed it before rerunning a finished job.
    write_history(out / "history.csv", history)
    gpu = sampler.summary()
    if gpu["available"]:
        # Energy of the whole training: this process's window plus the kept epochs of earlier ones.
        gpu["energy_j_total"] = energy_before + (gpu["energy_j"] or 0.0)
        gpu["torch_peak_memory_mib"] = torch.cuda.max_memory_allocated(runtime.device) / 2**20
    metrics = evaluate_run(out, data["test"], raw_model, runtime, config, gpu=gpu)
    write_json(run_file, {**run_info, "status": "complete", "finished": now()})
    return metrics


def evaluate_run(
    out: Path, test: Split, model, runtime: Runtime, config: TrainConfig, gpu: dict | None = None
) -> dict:
    """Load best.pt into `model`, score the test split, write metrics.json and per_image.csv."""
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    test = test.to(runtime.device)
    loss, counts, predictions = run_split(model, test, config.batch_size, runtime, keep_predictions=True)
    truth = test.masks[:, 0].cpu().numpy().astype(bool)
    dice, iou = dice_from_counts(counts).numpy(), iou_from_counts(counts).numpy()
    distances = np.array([hd95(p, t) for p, t in zip(predictions, truth, strict=True)])
    gt_empty = ~truth.reshape(len(truth), -1).any(1)
    pred_empty = ~predictions.reshape(len(predictions), -1).any(1)
    with atomic_path(out / "per_image.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "dice", "iou", "hd95", "gt_empty", "pred_empty"])
        for row in zip(test.ids, dice, iou, distances, gt_empty, pred_empty, strict=True):
            writer.writerow(
                [row[0], f"{row[1]:.6f}", f"{row[2]:.6f}", f"{row[3]:.4f}", int(row[4]), int(row[5])]
            )
    defined = distances[~np.isnan(distances)]
    metrics = {
        "split": "test",
        "images": len(test),
        "dice": float(dice.mean()),
        "iou": float(iou.mean()),
        "dice_dataset": float(dice_from_counts(counts.sum(0))),
        "iou_dataset": float(iou_from_counts(counts.sum(0))),
        "hd95_median": float(np.median(defined)) if len(defined) else None,
        "hd95_undefined": int(np.isnan(distances).sum()),
        "gt_empty": int(gt_empty.sum()),
        "false_positive_on_empty": int((gt_empty & ~pred_empty).sum()),
        "test_loss": loss,
        "best_epoch": best["epoch"],
        "best_val_dice": best["val_dice"],
        "epochs": config.epochs,
        "gpu": gpu if gpu is not None else previous_gpu_summary(out),
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def previous_gpu_summary(out: Path) -> dict:
    """The training's GPU summary, kept when the test metrics are recomputed."""
    metrics = out / "metrics.json"
    if metrics.exists():
        return read_json(metrics).get("gpu", {})
    return {"available": False, "reason": "recomputed by rdiunet evaluate; training's record was not found"}


def evaluate(out: Path, device: str = "auto") -> dict:
    """Recompute metrics.json and per_image.csv of a run folder from its saved best weights."""
    run_file = out / "run.json"
    if not run_file.exists() or not (out / "best.pt").exists():
        raise UserError(f"{out} is not a trained run (run.json and best.pt are needed); run rdiunet train")
    config = TrainConfig(**{**read_json(run_file)["config"], "device": device})
    runtime = make_runtime(config)
    model = build(config.model, **config.model_options).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = load_prepared(config.data)
    return evaluate_run(out, data["test"], model, runtime, config)
