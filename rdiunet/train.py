"""Training the paper's way (Adam, lr 1e-4, binary cross-entropy), resumable.

A run folder (rdiunet.runfolder.RunFolder; docs/training.md) holds history.csv, checkpoint.pt,
best.pt, gpu.csv, metrics.json, per_image.csv and run.json.

Reproducibility: the seed fixes the initial weights, and each epoch's data order is drawn from a
generator seeded by (seed, epoch), so it does not depend on how many times the run was resumed.
The checkpoint carries the global RNG state (dropout) and the position inside the epoch. A rerun
of the same command continues from checkpoint.pt and ends with the same history as a run that was
never interrupted; SIGTERM (Slurm preemption) saves a checkpoint after the current batch and exits
with status 143; a finished run rerun does nothing.
"""

import csv
import math
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from rdiunet import checkpoints
from rdiunet.data.dataset import Prepared, Split, batches, open_prepared, read_summary
from rdiunet.errors import UserError
from rdiunet.evaluation import evaluate_run, run_split, with_headline
from rdiunet.fileio import atomic_path, write_json
from rdiunet.metrics import dice_from_counts, iou_from_counts, soft_dice
from rdiunet.models import build, check_fits
from rdiunet.nvml import GpuSampler
from rdiunet.provenance import environment, now
from rdiunet.runfolder import RunFolder
from rdiunet.runtime import Runtime, planned_device_type, resolve_precision, training_runtime
from rdiunet.settings import TrainSettings

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_soft_dice",
    "val_loss",
    "val_dice",
    "val_iou",
    "val_dice_pooled",
    "val_soft_dice",
    "seconds",
    "lr",
)
FRESH_EPOCH = {"loss_sum": 0.0, "soft_dice_sum": 0.0, "batches": 0, "images": 0, "seconds": 0.0}
PREEMPTED_EXIT = 128 + signal.SIGTERM


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the process should exit with status 143."""


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def check_splits(data: dict[str, Split], path: str) -> None:
    for name in ("train", "val", "test"):
        if len(data[name]) == 0:
            raise UserError(
                f"{path}: the {name} split is empty; prepare it again with other --split fractions"
            )


def data_record(data: Prepared) -> dict:
    """What run.json keeps of the prepared data's summary (whether it is synthetic among it), and
    for a cross-validated dataset the folds this run tests and validates on."""
    keys = ("dataset", "synthetic", "image_size", "counts", "split")
    record = {k: v for k, v in data.summary.items() if k in keys}
    if data.fold is not None:
        record |= {"fold": data.fold, "counts": {name: len(split) for name, split in data.splits.items()}}
    return record


OTHER_RUN = "use another --out folder, or delete this run folder to train afresh"


def longer_run(folder: RunFolder, trained: int, epochs: int) -> str:
    return (
        f"{folder.path} holds a run of {trained} epochs and this one asks for {epochs}: the weights of "
        f"a {epochs}-epoch run were not kept, so it cannot be cut back; ask for {trained} or more "
        "epochs, or use another --out folder (or delete this one) to train afresh"
    )


def finished(folder: RunFolder, identity: dict, settings: TrainSettings) -> dict | None:
    """The metrics of a run that already finished the epochs asked for, or None.

    Decided from metrics.json and history.csv, never from checkpoint.pt: a damaged last
    checkpoint matters only to training further, so a complete run stays complete. Another
    headline checkpoint only moves metrics.json's top level (all three are kept)."""
    epochs = settings.epochs
    needed = (folder.metrics, folder.per_image, folder.history, folder.best, folder.best_loss)
    if not all(path.exists() for path in needed):
        return None
    try:
        metrics = folder.read_metrics()
        rows = len(folder.read_history())
    except UserError:
        return None  # damaged results are recomputed from the checkpoint
    if not isinstance(metrics, dict) or "identity" not in metrics:
        return None
    checkpoints.check_identity(folder.metrics, metrics, identity, OTHER_RUN)
    if metrics.get("diverged") and metrics.get("epochs_planned") == epochs:
        return metrics  # the same settings would diverge again: a finding, not unfinished work
    trained = metrics.get("epochs")
    if isinstance(trained, int) and trained > epochs:
        raise UserError(longer_run(folder, trained, epochs))
    if trained != epochs or rows != epochs:
        return None
    if metrics.get("checkpoint") != settings.checkpoint:
        metrics = with_headline(metrics, settings.checkpoint)
        write_json(folder.metrics, metrics)
    return metrics


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


def train(settings: TrainSettings, out: Path, command: list[str] | None = None) -> dict:
    """Train (or resume, or do nothing if finished) and evaluate; return the test metrics."""
    settings.check()
    # The model and the image size, checked together before the run folder is made.
    if not Path(settings.data).exists():
        raise UserError(f"prepared dataset {settings.data} does not exist; run rdiunet prepare first")
    size = read_summary(Path(settings.data))["image_size"][0]
    check_fits(settings.model, size, settings.model_options)
    folder = RunFolder(Path(out))
    with folder.locked():
        folder.remove_leftovers()
        data = open_prepared(settings.data, settings.seed)
        check_splits(data.splits, settings.data)
        precision = resolve_precision(settings.precision, planned_device_type(settings.device))
        identity = settings.identity(data.sha256, precision, data.fold)
        metrics = finished(folder, identity, settings)
        if metrics is not None:
            print(f"{out}: already complete ({settings.epochs} epochs); nothing to do", file=sys.stderr)
            return metrics
        return run_training(settings, folder, data, identity, command)


def run_training(
    settings: TrainSettings, folder: RunFolder, data: Prepared, identity: dict, command: list[str] | None
) -> dict:
    """Train on the claimed device, which is let go when training ends, however it ends."""
    with training_runtime(settings) as runtime:
        return train_on(runtime, settings, folder, data, identity, command)


def train_on(
    runtime: Runtime,
    settings: TrainSettings,
    folder: RunFolder,
    data: Prepared,
    identity: dict,
    command: list[str] | None,
) -> dict:
    if runtime.precision != identity["precision"]:  # auto, on another device than planned
        raise UserError(
            f"--precision {settings.precision} gave {runtime.precision} on {runtime.device}; name one"
        )
    torch.manual_seed(settings.seed)
    raw_model = runtime.prepare_model(build(settings.model, **settings.model_options))
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=settings.lr)
    scaler = torch.amp.GradScaler(enabled=runtime.precision == "fp16")

    # best: the checkpoint name -> its epoch and validation score (best_dice, best_loss)
    epoch, skip, partial, history, best = 0, 0, dict(FRESH_EPOCH), [], {}
    diverged = None  # {"epoch", "loss"} where the training loss stopped being finite
    energy_before = 0.0  # GPU energy of the epochs kept from earlier, interrupted processes
    if folder.checkpoint.exists():
        fix = f"it holds the state needed to go on training; {OTHER_RUN}"
        state = checkpoints.load(folder.checkpoint, fix)
        checkpoints.check_identity(folder.checkpoint, state, identity, OTHER_RUN)
        if state["epoch"] > settings.epochs:
            raise UserError(longer_run(folder, state["epoch"], settings.epochs))
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        checkpoints.set_rng_state(state["rng"], runtime.device)
        epoch, skip, partial = state["epoch"], state["batch"], state["partial"]
        history, best = state["history"], state["best"]
        for name in best:  # the best epochs so far cannot be trained again: check them now
            folder.load_weights(name, identity)
        energy_before = state.get("gpu_energy_j") or 0.0
        where = f"epoch {epoch + 1}, batch {skip}" if skip else f"after epoch {epoch}"
        print(f"resuming from {folder.checkpoint} ({where})", file=sys.stderr, flush=True)
    model = torch.compile(raw_model) if settings.compile else raw_model

    run_info = {
        "command": command or sys.argv,
        "config": asdict(settings),
        "seed": settings.seed,
        "identity": identity,
        "data_sha256": data.sha256,
        "data": data_record(data),
        "environment": environment(runtime.device),
        "settings": {
            **runtime.settings(),
            "compile": settings.compile,
            "deterministic": settings.deterministic,
            "cudnn_benchmark": runtime.cuda and torch.backends.cudnn.benchmark,
            "gpu_slots": settings.gpu_slots,
        },
        "status": "running",
        "started": now(),
    }
    write_json(folder.run_info, run_info)
    train_split = data.splits["train"].to(runtime.device)
    val_split = data.splits["val"].to(runtime.device)

    def checkpoint(epoch_done: int, batch_done: int, partial_state: dict) -> None:
        checkpoints.save(
            folder.checkpoint,
            {
                "identity": identity,
                "epoch": epoch_done,
                "batch": batch_done,
                "partial": partial_state,
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": checkpoints.rng_state(runtime.device),
                "history": history,
                "best": best,
                "gpu_energy_j": energy_before + (sampler.energy_so_far()[0] or 0.0),
            },
        )

    if runtime.cuda:
        torch.cuda.reset_peak_memory_stats(runtime.device)
    with StopFlag() as stop, GpuSampler(folder.gpu, runtime.device, gpu_slots=settings.gpu_slots) as sampler:
        while epoch < settings.epochs:
            model.train()
            clock = time.perf_counter()
            loss_sum = torch.tensor(partial["loss_sum"], device=runtime.device, dtype=torch.float64)
            soft_sum = torch.tensor(partial["soft_dice_sum"], device=runtime.device, dtype=torch.float64)
            seen, batch = partial["images"], skip
            order = epoch_generator(settings.seed, epoch + 1)
            for images, masks in batches(train_split, settings.batch_size, True, order, skip=skip):
                with runtime.autocast():
                    logits = model(runtime.prepare_input(images))
                loss = F.binary_cross_entropy_with_logits(logits.float(), masks)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach().double() * len(images)
                soft_sum += soft_dice(logits.detach(), masks).double()
                seen += len(images)
                batch += 1
                if stop.raised:
                    elapsed = partial["seconds"] + time.perf_counter() - clock
                    state = {"loss_sum": float(loss_sum), "soft_dice_sum": float(soft_sum)}
                    checkpoint(epoch, batch, {**state, "batches": batch, "images": seen, "seconds": elapsed})
                    write_json(folder.run_info, {**run_info, "status": "preempted", "stopped": now()})
                    raise Preempted(f"SIGTERM: checkpoint saved at epoch {epoch + 1}, batch {batch}")
            train_loss = float(loss_sum) / seen
            if not math.isfinite(train_loss):
                diverged = {"epoch": epoch + 1, "loss": str(train_loss)}
                if epoch == 0:  # no epoch finished: nothing to test
                    stopped = {"status": "diverged", "diverged": diverged, "stopped": now()}
                    write_json(folder.run_info, {**run_info, **stopped})
                    raise UserError(
                        f"the training loss became {train_loss} in epoch 1, before any epoch finished: no "
                        "weights were kept to test; try a lower --lr or --precision fp32"
                    )
                break
            val = run_split(model, val_split, settings.batch_size, runtime)
            epoch += 1
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_soft_dice": float(soft_sum) / batch,
                "val_loss": val.loss,
                "val_dice": float(dice_from_counts(val.counts).mean()),
                "val_iou": float(iou_from_counts(val.counts).mean()),
                "val_dice_pooled": float(dice_from_counts(val.counts.sum(0))),
                "val_soft_dice": val.soft_dice,
                "seconds": round(partial["seconds"] + time.perf_counter() - clock, 3),
                "lr": optimizer.param_groups[0]["lr"],
            }
            history.append(row)
            improved = {
                "best_dice": "best_dice" not in best or row["val_dice"] > best["best_dice"]["val_dice"],
                "best_loss": "best_loss" not in best or row["val_loss"] < best["best_loss"]["val_loss"],
            }
            for name, key in (("best_dice", "val_dice"), ("best_loss", "val_loss")):
                if improved[name]:  # ties keep the earlier epoch
                    best[name] = {"epoch": epoch, key: row[key]}
                    payload = {"model": raw_model.state_dict(), **best[name], "identity": identity}
                    checkpoints.save(folder.weights(name), payload)
            skip, partial = 0, dict(FRESH_EPOCH)
            checkpoint(epoch, 0, partial)
            write_history(folder.history, history)
            print_epoch(row, settings.epochs)

    # Rewritten here too: a workflow manager may have removed it before rerunning a finished job.
    write_history(folder.history, history)
    gpu = sampler.summary()
    if gpu["available"]:
        # Energy of the whole training: this process's window plus the kept epochs of earlier ones.
        gpu["energy_j_total"] = energy_before + (gpu["energy_j"] or 0.0)
        gpu["torch_peak_memory_mib"] = torch.cuda.max_memory_allocated(runtime.device) / 2**20
    metrics = evaluate_run(folder, data, raw_model, runtime, settings, identity, gpu=gpu, diverged=diverged)
    status = {"status": "diverged", "diverged": diverged} if diverged else {"status": "complete"}
    write_json(folder.run_info, {**run_info, **status, "finished": now()})
    return metrics


def train_command(settings: TrainSettings, out: Path, command: list[str]) -> None:
    """`rdiunet train`: train, print the test result; SIGTERM exits with status 143."""
    try:
        metrics = train(settings, out, command)
    except Preempted as stop:
        print(f"rdiunet: {stop}; rerun the same command to resume", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    dice, iou, best = metrics["dice"], metrics["iou"], metrics["best_epoch"]
    print(f"{out}: test dice {dice:.4f}, iou {iou:.4f} (best epoch {best})")
    if metrics.get("diverged"):
        diverged = metrics["diverged"]
        print(
            f"rdiunet: warning: the training loss became {diverged['loss']} in epoch {diverged['epoch']}; "
            f"the run stopped there and was tested with the weights of epochs 1-{diverged['epoch'] - 1} "
            "(the report flags it as diverged; a lower --lr or --precision fp32 may avoid it)",
            file=sys.stderr,
        )
