"""A hand-made results tree: runs and benchmarks whose every number is known, for the report's tests."""

import json
from pathlib import Path

import pandas as pd

from rdiunet.checkpoints import FORMAT

CONFIG = {
    "synthetic": True,
    "datasets": {
        "jsrt": {"size": 256, "threshold": 0.9, "epochs": 4, "batch_size": 8},
        "isic": {"size": 128, "threshold": 0.75, "epochs": 4, "batch_size": 8},
    },
    "models": {"unet": {}, "rdiunet": {}},
    "seeds": [0, 1],
    "stability_drop": 0.05,
}
# Hand-made runs: (dataset, model, seed) -> test Dice, IoU, HD95 and the validation-Dice history.
RUNS = {
    ("jsrt", "unet", 0): (0.90, 0.82, 3.0, [0.5, 0.92, 0.85, 0.91]),  # one drop; converges at 2
    ("jsrt", "unet", 1): (0.94, 0.88, 5.0, [0.6, 0.7, 0.8, 0.85]),  # never above 0.9
    ("jsrt", "rdiunet", 0): (0.96, 0.92, 2.0, [0.7, 0.95, 0.96, 0.97]),
    ("jsrt", "rdiunet", 1): (0.98, 0.96, 1.0, [0.91, 0.93, 0.87, 0.95]),  # 0.93 -> 0.87: a drop
    ("isic", "unet", 0): (0.70, 0.60, 8.0, [0.5, 0.8, 0.75, 0.70]),  # two falls of exactly 0.05: no drop
    ("isic", "unet", 1): (0.72, 0.62, 9.0, [0.5, 0.6, 0.76, 0.8]),
    ("isic", "rdiunet", 0): (0.80, 0.70, 4.0, [0.76, 0.77, 0.78, 0.79]),
    ("isic", "rdiunet", 1): (0.82, 0.72, 6.0, [0.6, 0.7, 0.8, 0.81]),
}
BENCH = {"unet": (15_326_529, 13.17, 30.0), "rdiunet": (5_850_241, 3.87, 20.0)}  # params, GFLOPs, ms


SIZES = {"jsrt": 256, "isic": 128}
# Each checkpoint's test Dice below the best-Dice one's: best_dice, best_loss, last.
CHECKPOINT_SHIFT = {"best_dice": 0.0, "best_loss": -0.02, "last": -0.01}
METRIC_NAMES = ("dice", "iou", "dice_dataset", "iou_dataset", "hd95_median")


def metrics_of(dice: float, iou: float, hd: float) -> dict:
    return {
        "dice": dice,
        "iou": iou,
        "dice_dataset": dice + 0.01,
        "iou_dataset": iou + 0.01,
        "hd95_median": hd,
        "hd95_at_diagonal": 0,
        "gt_empty": 0,
        "false_positive_on_empty": 0,
        "test_loss": 0.1,
    }


def protocol_result(ms: float) -> dict:
    return {"measured": True, "ms_per_image": ms, "median": ms, "p90": ms + 1, "p99": ms + 2}


def write_tree(root: Path, models=("unet", "rdiunet")) -> Path:
    results = root / "results"
    for (dataset, model, seed), (dice, iou, hd, curve) in RUNS.items():
        name = dict(zip(("unet", "rdiunet"), models, strict=True))[model]
        run = results / dataset / name / f"seed{seed}"
        run.mkdir(parents=True, exist_ok=True)
        checkpoints = {
            checkpoint: {
                **metrics_of(dice + shift, iou + shift, hd),
                "epoch": 4,
                "weights_sha256": checkpoint,
            }
            for checkpoint, shift in CHECKPOINT_SHIFT.items()
        }
        metrics = {
            **metrics_of(dice, iou, hd),
            "checkpoint": "best_dice",
            "best_epoch": 4,
            "epochs": 4,
            "images": 3,
            "checkpoints": checkpoints,
            "checkpoint_format": FORMAT,
            "gpu": {"available": False, "reason": "device is cpu, not a GPU"},
        }
        (run / "metrics.json").write_text(json.dumps(metrics))
        # Trained as CONFIG says: the study checks every setting it fixes against these records.
        config = {"model": model, "model_options": {}, "seed": seed, "epochs": 4, "batch_size": 8, "lr": 1e-4}
        run_info = {
            "status": "complete",
            "data_sha256": f"{dataset}-data",
            "config": config,
            "identity": {
                **{key: config[key] for key in ("model", "model_options", "seed", "batch_size", "lr")},
                "precision": "tf32",
                "data_sha256": f"{dataset}-data",
            },
            "data": {
                "synthetic": True,
                "image_size": [SIZES[dataset], SIZES[dataset]],
                "split": {"by": "subject", "fractions": [0.8, 0.1, 0.1], "seed": 0, "official": []},
            },
            "environment": {"device_name": "Test CPU", "git_commit": "abc"},
            "settings": {"precision": "tf32"},
        }
        (run / "run.json").write_text(json.dumps(run_info))
        soft = [max(v - 0.1, 0) for v in curve]  # soft Dice trails the hard one early in training
        pd.DataFrame(
            {
                "epoch": range(1, 5),
                "val_dice": curve,
                "val_dice_pooled": curve,
                "val_soft_dice": soft,
                "train_soft_dice": soft,
            }
        ).to_csv(run / "history.csv", index=False)
        per_image = [
            {"checkpoint": checkpoint, "id": image, "group": image, "dice": dice + shift + offset}
            for checkpoint, shift in CHECKPOINT_SHIFT.items()
            for image, offset in (("a", -0.01), ("b", 0.0), ("c", 0.01))
        ]
        pd.DataFrame(per_image).to_csv(run / "per_image.csv", index=False)
        params, gflops, ms = BENCH[model]
        ms = ms * (3.2 if SIZES[dataset] == 256 else 1.0)  # grows 3.2x from 128² to 256²
        bench = {
            "params": params,
            "gflops_per_image": gflops,
            "size": SIZES[dataset],
            "precision": "tf32",
            "protocol": "eager_b1",
            "protocols": {
                "eager_b1": protocol_result(ms),
                "graphed_b1": {"measured": False, "reason": "CUDA graphs need a CUDA device"},
                "best_batch": {"measured": True, "ms_per_image": ms / 4, "batch_size": 8},
                "end_to_end": protocol_result(ms + 1),
            },
            "precisions": {
                "tf32": protocol_result(ms),
                "fp32": {"measured": False, "reason": "not measured on this device (cpu)"},
                "bf16": {"measured": False, "reason": "not measured on this device (cpu)"},
            },
            "latency_ms": {"median": ms, "p90": ms + 1, "p99": ms + 2},
            "throughput": [{"batch_size": 8, "images_per_s": 1000 / ms * 4}],
            "environment": {"device_name": "Test CPU"},
        }
        (results / dataset / name / "bench.json").write_text(json.dumps(bench))
    for dataset in SIZES:
        write_speed(results, dataset, models)
    return results


SESSION_JITTER = (1.0, 1.02, 0.99)  # the machine's state in each of three interleaved sessions


def write_speed(results: Path, dataset: str, models=("unet", "rdiunet")) -> None:
    """speed.json: every model in three interleaved sessions, each protocol at BENCH's ms (grown
    3.2x at 256 px) times the session's jitter; CUDA graphs and other precisions not measured."""
    rows = []
    for session, jitter in enumerate(SESSION_JITTER):
        for model, name in zip(("unet", "rdiunet"), models, strict=True):
            ms = BENCH[model][2] * (3.2 if SIZES[dataset] == 256 else 1.0) * jitter
            for protocol, value in (("eager_b1", ms), ("best_batch", ms / 4), ("end_to_end", ms + 1)):
                rows.append(
                    {
                        "model": name,
                        "session": session,
                        "precision": "tf32",
                        "protocol": protocol,
                        "ms": value,
                        "reason": None,
                    }
                )
            rows.append(
                {
                    "model": name,
                    "session": session,
                    "precision": "tf32",
                    "protocol": "graphed_b1",
                    "ms": None,
                    "reason": "CUDA graphs need a CUDA device",
                }
            )
            for precision in ("fp32", "bf16"):
                rows.append(
                    {
                        "model": name,
                        "session": session,
                        "precision": precision,
                        "protocol": "eager_b1",
                        "ms": None,
                        "reason": "not measured on this device (cpu)",
                    }
                )
    speed = {
        "size": SIZES[dataset],
        "sessions": len(SESSION_JITTER),
        "precision": "tf32",
        "protocol": "eager_b1",
        "device_type": "cpu",
        "timings": rows,
        "environment": {"device_name": "Test CPU"},
    }
    (results / dataset / "speed.json").write_text(json.dumps(speed))
