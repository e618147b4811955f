"""GPU acceptance check: what only a GPU can show, in one command (under 8 minutes on one H100).

    bash benchmarks/gpu_check.sh              # the gpu-marked tests, then this script
    python benchmarks/gpu_check.py [--out benchmarks/out]

Steps, each timed and recorded in one JSON file (benchmarks/out/gpu_check-<host>-<time>.json):

1. bench: both paper-sized models at 128 and 256 px through `rdiunet.bench` (CUDA events, >= 200
   batch-1 runs): fp32, bf16 and tf32 as precision readings of the eager batch-1 protocol, the
   other protocols (CUDA graphs, best batch, end to end) in fp32, and fp32 with channels_last;
2. train: two epochs of each paper-sized model on a synthetic nerve set through `rdiunet train`,
   with the real NVML sampler: energy, power (and which NVML reading), peak memory and the sampled
   card's UUID, checked against the torch device's;
3. slots: the same four short trainings with `--gpu-slots` 1, 2 and 4 on one card, as real
   processes claiming it: wall time and runs per hour.

It prints a summary table at the end. Without a CUDA device every step still runs, as a CPU
smoke test with narrow models and a handful of images, so that the script itself is tested; the
steps are then marked "skipped (no CUDA device)" and none of their numbers is a measurement.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from rdiunet.bench import bench
from rdiunet.fileio import write_json
from rdiunet.nvml import is_torch_device
from rdiunet.settings import BenchSettings

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()
SKIPPED = None if CUDA else "skipped (no CUDA device): ran as a CPU smoke test, not a measurement"

# What runs: paper-sized on a GPU, a smoke test on the CPU.
if CUDA:
    MODELS = {"unet": {}, "rdiunet": {}}
    SIZES, TRAIN_SIZE, IMAGES, EPOCHS, BATCH = (128, 256), 128, 400, 2, 16
    BENCH = {"runs": 200, "warmup": 20, "batch_sizes": (1, 8, 64)}
    SLOTS, SLOT_RUNS, SLOT_EPOCHS = (1, 2, 4), 4, 2
else:
    MODELS = {
        "unet": {"widths": (4, 8, 16, 32, 64)},
        "rdiunet": {"widths": (4, 8, 16, 32), "dense_blocks": 1, "growth": 8},
    }
    SIZES, TRAIN_SIZE, IMAGES, EPOCHS, BATCH = (64,), 64, 24, 1, 8
    BENCH = {"runs": 5, "warmup": 1, "batch_sizes": (1, 2)}
    SLOTS, SLOT_RUNS, SLOT_EPOCHS = (1, 2), 2, 1


def cli(*args: str, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """`rdiunet ARGS` as its own process (the way the workflow runs it)."""
    environment = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "rdiunet.cli", *args],
        env={**environment, **(env or {})},
        stdout=output,
        stderr=subprocess.STDOUT,
    )


def finish(process: subprocess.Popen, what: str, log: Path) -> None:
    if process.wait() != 0:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise SystemExit(f"gpu_check: {what} failed (exit {process.returncode}):\n{tail}")


def options(model: str) -> list[str]:
    return [
        f"--model-opt={key}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for key, v in MODELS[model].items()
    ]


def prepare_data(work: Path) -> Path:
    """A synthetic nerve set in the competition's own format, prepared at TRAIN_SIZE."""
    raw, data = work / "raw", work / "nerve.npz"
    synth = ("synth", "--dataset", "nerve", "--out", str(raw), "--n", str(IMAGES))
    prepare = ("prepare", "--dataset", "nerve", "--raw", str(raw), "--out", str(data))
    prepare += ("--size", str(TRAIN_SIZE))
    for what, args in (("synth", synth), ("prepare", prepare)):
        log = work / f"{what}.log"
        finish(cli(*args, log=log), what, log)
    return data


def step_bench() -> list[dict]:
    rows = []
    for model in MODELS:
        for size in SIZES:
            for layout in ("nchw", "channels_last"):
                settings = BenchSettings(
                    model=model,
                    size=size,
                    precision="fp32",
                    precisions=("fp32", "tf32", "bf16") if layout == "nchw" else ("fp32",),
                    channels_last=layout == "channels_last",
                    model_options=MODELS[model],
                    **BENCH,
                )
                started = time.monotonic()
                report = bench(settings)
                rows.append(
                    {
                        "model": model,
                        "size": size,
                        "layout": layout,
                        "seconds": time.monotonic() - started,
                        "protocols": report["protocols"],
                        "precisions": report["precisions"],
                        "throughput": report["throughput"],
                        "peak_memory_mib": report["peak_memory_mib"],
                        "settings": report["settings"],
                    }
                )
                print(f"bench {model} {size}px {layout}: done in {rows[-1]['seconds']:.1f} s", flush=True)
    return rows


def train_run(data: Path, model: str, out: Path, epochs: int, slots: int, lock_dir: Path) -> subprocess.Popen:
    return cli(
        "train", "--data", str(data), "--model", model, "--seed", "0", "--out", str(out),
        "--epochs", str(epochs), "--batch-size", str(BATCH), "--gpu-slots", str(slots),
        *options(model),
        env={"RDIUNET_GPU_LOCK_DIR": str(lock_dir)},
        log=out.with_suffix(".log"),
    )  # fmt: skip


def step_train(data: Path, work: Path) -> list[dict]:
    rows = []
    for model in MODELS:
        out = work / "train" / model
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        finish(
            train_run(data, model, out, EPOCHS, 1, work / "locks"),
            f"training {model}",
            out.with_suffix(".log"),
        )
        metrics = json.loads((out / "metrics.json").read_text())
        run = json.loads((out / "run.json").read_text())
        history = (out / "history.csv").read_text().splitlines()
        header = history[0].split(",")
        seconds = [float(line.split(",")[header.index("seconds")]) for line in history[1:]]
        gpu = metrics["gpu"]
        rows.append(
            {
                "model": model,
                "wall_s": time.monotonic() - started,
                "epoch_s": seconds,
                "val_dice": [float(line.split(",")[header.index("val_dice")]) for line in history[1:]],
                "gpu": gpu,
                "device": run["environment"]["device_name"],
                "precision": run["settings"]["precision"],
                "gpu_csv_rows": max(0, len((out / "gpu.csv").read_text().splitlines()) - 1)
                if (out / "gpu.csv").exists()
                else 0,
                "uuid_matches_torch": uuid_matches(gpu),
            }
        )
        print(f"train {model}: {EPOCHS} epochs in {rows[-1]['wall_s']:.1f} s", flush=True)
    return rows


def uuid_matches(gpu: dict) -> bool | None:
    """Whether the card NVML sampled is the torch device (None where nothing was sampled)."""
    if not CUDA or not gpu.get("available"):
        return None
    return is_torch_device(gpu.get("device_uuid"), torch.device("cuda", 0))  # the one card here


def step_slots(data: Path, work: Path) -> list[dict]:
    rows = []
    for slots in SLOTS:
        folder = work / f"slots{slots}"
        folder.mkdir(parents=True)
        started = time.monotonic()
        runs = [
            train_run(data, "rdiunet", folder / f"run{i}", SLOT_EPOCHS, slots, folder / "locks")
            for i in range(SLOT_RUNS)
        ]
        for i, process in enumerate(runs):
            finish(process, f"slot run {i} with gpu_slots {slots}", folder / f"run{i}.log")
        wall = time.monotonic() - started
        rows.append(
            {
                "gpu_slots": slots,
                "runs": SLOT_RUNS,
                "epochs": SLOT_EPOCHS,
                "wall_s": wall,
                "runs_per_hour": SLOT_RUNS * 3600 / wall,
            }
        )
        print(f"gpu_slots {slots}: {SLOT_RUNS} runs in {wall:.1f} s", flush=True)
    return rows


def machine() -> dict:
    info = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
    }
    if CUDA:
        from rdiunet.gpu import driver_version

        info |= {"gpu": torch.cuda.get_device_name(0), "driver": driver_version()}
    return info


def ms(entry: dict | None) -> str:
    return f"{entry['ms_per_image']:.3f}" if entry and entry.get("measured") else "-"


def reading(gpu: dict, key: str) -> str:
    return f"{gpu[key]:.0f}" if gpu.get(key) is not None else "-"


BENCH_ROW = "{:<8} {:>4} {:<13} {:>8} {:>8} {:>8} {:>8} {:>10}"
TRAIN_ROW = "{:<8} {:>8} {:>9} {:>7} {:>6} {:>9} {:<26} {}"


def summary(report: dict) -> str:
    machine_ = report["machine"]
    lines = [f"GPU check on {machine_.get('gpu', 'no GPU (CPU smoke test)')}, torch {machine_['torch']}"]
    for name, step in report["steps"].items():
        lines.append(f"  {name:<6} {step['status']}, {step['seconds']:.0f} s")
    lines += [
        "",
        BENCH_ROW.format("model", "px", "layout", "fp32 ms", "tf32 ms", "bf16 ms", "graphed", "best batch"),
    ]
    for row in report["steps"]["bench"]["rows"]:
        precisions, protocols = row["precisions"], row["protocols"]
        cells = (
            row["model"], row["size"], row["layout"], ms(precisions.get("fp32")), ms(precisions.get("tf32")),
            ms(precisions.get("bf16")), ms(protocols.get("graphed_b1")), ms(protocols.get("best_batch")),
        )  # fmt: skip
        lines.append(BENCH_ROW.format(*cells))
    header = ("model", "epoch s", "energy J", "mean W", "max W", "peak MiB", "power from", "uuid ok")
    lines += ["", TRAIN_ROW.format(*header)]
    for row in report["steps"]["train"]["rows"]:
        gpu = row["gpu"]
        cells = (
            row["model"], f"{min(row['epoch_s']):.2f}", reading(gpu, "energy_j"),
            reading(gpu, "mean_power_w"), reading(gpu, "max_power_w"), reading(gpu, "peak_memory_used_mib"),
            str(gpu.get("power_source", "-")), row["uuid_matches_torch"],
        )  # fmt: skip
        lines.append(TRAIN_ROW.format(*cells))
    lines.append("")
    for row in report["steps"]["slots"]["rows"]:
        lines.append(
            f"gpu_slots {row['gpu_slots']}: {row['runs']} runs in {row['wall_s']:.1f} s "
            f"= {row['runs_per_hour']:.0f} runs/hour"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out"), help="folder for the JSON report")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "cuda": CUDA,
        "steps": {},
    }
    started = time.monotonic()
    data = prepare_data(work)
    report["data"] = {
        "dataset": "nerve (synthetic)",
        "images": IMAGES,
        "size": TRAIN_SIZE,
        "seconds": time.monotonic() - started,
    }
    for name, run in (
        ("bench", step_bench),
        ("train", lambda: step_train(data, work)),
        ("slots", lambda: step_slots(data, work)),
    ):
        began = time.monotonic()
        rows = run()
        report["steps"][name] = {
            "status": SKIPPED or "measured",
            "seconds": time.monotonic() - began,
            "rows": rows,
        }
    report["seconds"] = time.monotonic() - started
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out = Path(args.out) / f"gpu_check-{platform.node() or 'host'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(summary(report))
    print(f"\nwritten: {out} ({report['seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
