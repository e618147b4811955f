"""GPU acceptance check: what only a GPU can show, in one command, under 5 minutes on one H100.

    bash benchmarks/gpu_check.sh [--out benchmarks/out] [--budget-s 290]

It prints its plan first (each step, its expected time on one H100 and the arithmetic behind it;
docs/benchmarks.md has the same), then runs the steps in order, each only while the budget has
room for it, and records each step's numbers in one JSON file (gpu_check-<host>-<time>.json):

1. tests: the gpu-marked tests (the sampled card is the torch device, CUDA graphs, precisions);
2. bench: both paper-sized models through `rdiunet.bench` in this process (a claim per call, as
   the workflow's jobs make them): 128 px in fp32 with tf32 and bf16 as precision readings, every
   protocol, and a 10 s energy window at batch 64; 128 px channels_last; 256 px. The 256 px
   channels_last rows come last, only if time is left;
3. train: two epochs of each model through `rdiunet train` with the real NVML sampler: energy, its
   scope and whether the card was shared, power and its NVML source, peak memory, and the sampled
   card's UUID checked against the card the run claimed;
4. slots: four short trainings started at once with `--gpu-slots` 1 and 4 on one card, as real
   processes claiming it: wall time and runs per hour.

cuDNN autotuning is left on where it is part of what is measured (the bench) and skipped in the
training steps, which measure energy, claims and sharing rather than the fastest kernels. Before
anything heavy the driver is checked against the torch build; a mismatch stops the script in one
line naming the torch build to install.

Without CUDA every step still runs, as a CPU smoke test with narrow models and a handful of
images, through the same claiming code on a stand-in card ($RDIUNET_STANDIN_GPU), so that a claim
that deadlocks or leaks fails here first; the steps are then marked "skipped (no CUDA device)" and
none of their numbers is a measurement.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from rdiunet import gpu
from rdiunet.bench import bench
from rdiunet.fileio import write_json
from rdiunet.nvidia_smi import listed_gpus
from rdiunet.nvml import card_state, compute_processes, load_nvml, nvml_handle, parent_card
from rdiunet.settings import BenchSettings

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()
SKIPPED = None if CUDA else "skipped (no CUDA device): ran as a CPU smoke test, not a measurement"
GPU_TESTS = ("tests/test_gpu.py", "tests/test_bench.py", "tests/test_train.py")

# What runs: paper-sized on a GPU, a smoke test on the CPU.
if CUDA:
    MODELS = {"unet": {}, "rdiunet": {}}
    SIZE, LARGE, IMAGES, EPOCHS, BATCH = 128, 256, 400, 2, 16
    BENCH = {"runs": 200, "warmup": 20}
    ENERGY_BATCHES = (1, 64)  # one throughput window (10 s with NVML) at the headline size
    SLOTS, SLOT_RUNS, SLOT_EPOCHS = (1, 4), 4, 2
    BUDGET_S = 290
else:
    MODELS = {
        "unet": {"widths": (4, 8, 16, 32, 64)},
        "rdiunet": {"widths": (4, 8, 16, 32), "dense_blocks": 1, "growth": 8},
    }
    SIZE, LARGE, IMAGES, EPOCHS, BATCH = 64, 96, 24, 1, 8
    BENCH = {"runs": 5, "warmup": 1}
    ENERGY_BATCHES = (1, 2)
    SLOTS, SLOT_RUNS, SLOT_EPOCHS = (1, 2), 2, 1
    BUDGET_S = 900

# Expected seconds on one H100, also on a CPU, where they only pace the budget
# (docs/benchmarks.md, "GPU acceptance", has the arithmetic): a
# process start with torch and a CUDA context ~8 s; a 2-epoch training of 400 images at 128 px
# ~4 s on top; eager batch 1 ~3 ms x 220 runs.
START_S, TRAIN_S = 8, 4
ESTIMATES = {
    "tests": 35,  # pytest start 10 s + the bench test's process 8 s + its 10 s energy window + 7 s
    "data": 12,  # two process starts (no CUDA) 2 x 4 s + synthesis and decoding 4 s
    # per model: energy window, three precisions of eager batch 1, graph, end to end, the
    # channels_last row, the 256 px row
    "bench": 2 * (10 + 3 + 3 + 3 + 3 + 4),
    "train": 2 * (START_S + TRAIN_S + 3),  # per model: start, 2 epochs, evaluation of 3 checkpoints
    "slots": 4 * (START_S + TRAIN_S) + (START_S + 4 * TRAIN_S),  # 4 runs one by one, then at once
    "bench_large_cl": 2 * 4,  # per model: 256 px channels_last, eager + graph + e2e
}


@dataclass
class Budget:
    """The seconds the whole check may take, counted from its start."""

    seconds: float
    started: float

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def allows(self, estimate: float) -> bool:
        return self.left() >= estimate


def job_env(extra: dict | None = None) -> dict:
    """This process's environment for a job it starts, without the Slurm variables: inside an
    allocation they would make a job with one visible card skip its claim (rdiunet.gpu), and the
    slot runs must claim."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environment["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**environment, **(extra or {})}


def cli(*args: str, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """`rdiunet ARGS` as its own process (the way the workflow runs it)."""
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    command = [sys.executable, "-m", "rdiunet.cli", *args]
    return subprocess.Popen(command, env=job_env(env), stdout=output, stderr=subprocess.STDOUT)


class OverBudget(Exception):
    """A step's processes ran past the budget and were stopped."""


def finish(process: subprocess.Popen, what: str, log: Path, budget: Budget) -> None:
    try:
        process.wait(timeout=max(budget.left(), 1))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise OverBudget(f"{what} was stopped at the end of the budget") from None
    if process.returncode != 0:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise SystemExit(f"gpu_check: {what} failed (exit {process.returncode}):\n{tail}")


def options(model: str) -> list[str]:
    return [
        f"--model-opt={key}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for key, v in MODELS[model].items()
    ]


# --- the steps -----------------------------------------------------------------------------------


def step_tests(work: Path, budget: Budget) -> list[dict]:
    log = work / "tests.log"
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *GPU_TESTS]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=REPO, env=job_env(), stdout=output, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=max(budget.left(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise OverBudget("the gpu-marked tests were stopped at the end of the budget") from None
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    # 5: nothing selected or everything skipped, which is right on a CPU; anything else counts.
    passed = process.returncode == 0 or (process.returncode == 5 and not CUDA)
    return [{"exit": process.returncode, "passed": passed, "last_line": lines[-1] if lines else ""}]


def prepare_data(work: Path, budget: Budget) -> Path:
    """A synthetic nerve set in the competition's own format, prepared at SIZE."""
    raw, data = work / "raw", work / "nerve.npz"
    synth = ("synth", "--dataset", "nerve", "--out", str(raw), "--n", str(IMAGES))
    prepare = ("prepare", "--dataset", "nerve", "--raw", str(raw), "--out", str(data), "--size", str(SIZE))
    for what, args in (("synth", synth), ("prepare", prepare)):
        log = work / f"{what}.log"
        finish(cli(*args, log=log), what, log, budget)
    return data


def bench_row(model: str, size: int, layout: str, batch_sizes: tuple[int, ...]) -> dict:
    headline = layout == "nchw" and size == SIZE
    settings = BenchSettings(
        model=model,
        size=size,
        precision="fp32",
        precisions=("fp32", "tf32", "bf16") if headline else ("fp32",),
        channels_last=layout == "channels_last",
        model_options=MODELS[model],
        batch_sizes=batch_sizes,
        **BENCH,
    )
    started = time.monotonic()
    report = bench(settings)
    row = {
        "model": model,
        "size": size,
        "layout": layout,
        "seconds": time.monotonic() - started,
        **{key: report[key] for key in ("protocols", "precisions", "throughput", "settings")},
        **{key: report[key] for key in ("peak_memory_mib", "peak_memory_method")},
    }
    print(f"bench {model} {size}px {layout}: done in {row['seconds']:.1f} s", flush=True)
    return row


def step_bench(budget: Budget, large_channels_last: bool = False) -> list[dict]:
    """The bench rows, each only while the budget has room for it. Every call claims the card for
    a benchmark and lets go when it returns, as a workflow job would; none may outlive its call."""
    if large_channels_last:
        plan = [(model, LARGE, "channels_last", (1,)) for model in MODELS]
    else:
        plan = [(model, SIZE, "nchw", ENERGY_BATCHES) for model in MODELS]
        plan += [(model, size, layout, (1,)) for size, layout in ((SIZE, "channels_last"), (LARGE, "nchw"))
                 for model in MODELS]  # fmt: skip
    rows = []
    for model, size, layout, batches in plan:
        if not budget.allows(4):
            rows.append({"model": model, "size": size, "layout": layout, "cut": "budget spent"})
            continue
        rows.append(bench_row(model, size, layout, batches))
        leaked = gpu.held_claims()
        if leaked:
            raise SystemExit(f"gpu_check: a benchmark's claim outlived it: {[c.record() for c in leaked]}")
    return rows


def train_run(data: Path, model: str, out: Path, epochs: int, slots: int, lock_dir: Path) -> subprocess.Popen:
    return cli(
        "train", "--data", str(data), "--model", model, "--seed", "0", "--out", str(out),
        "--epochs", str(epochs), "--batch-size", str(BATCH), "--gpu-slots", str(slots),
        "--no-cudnn-benchmark", *options(model),
        env={gpu.LOCK_DIR_ENV: str(lock_dir)},
        log=out.with_suffix(".log"),
    )  # fmt: skip


def uuid_matches_claim(gpu_record: dict, settings: dict) -> bool | None:
    """Whether the card NVML sampled is the card the run claimed (None where either is missing)."""
    claim = settings.get("gpu_claim") or {}
    if not gpu_record.get("available") or not claim.get("card") or claim["card"].startswith("standin-"):
        return None
    return (gpu_record.get("device_uuid") or "").split("-", 1)[-1] == claim["card"]


def run_record(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    history = (out / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    column = lambda name: [float(line.split(",")[header.index(name)]) for line in history[1:]]  # noqa: E731
    return {
        "epoch_s": column("seconds"),
        "val_dice": column("val_dice"),
        "gpu": metrics["gpu"],
        "device": run["environment"]["device_name"],
        "precision": run["settings"]["precision"],
        "gpu_claim": run["settings"].get("gpu_claim"),
        "uuid_matches_claim": uuid_matches_claim(metrics["gpu"], run["settings"]),
    }


def step_train(data: Path, work: Path, budget: Budget) -> list[dict]:
    rows = []
    for model in MODELS:
        out = work / "train" / model
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        finish(train_run(data, model, out, EPOCHS, 1, work / "locks"), f"training {model}",
               out.with_suffix(".log"), budget)  # fmt: skip
        rows.append({"model": model, "wall_s": time.monotonic() - started, **run_record(out)})
        print(f"train {model}: {EPOCHS} epochs in {rows[-1]['wall_s']:.1f} s", flush=True)
    return rows


def step_slots(data: Path, work: Path, budget: Budget) -> list[dict]:
    rows = []
    for slots in SLOTS:
        folder = work / f"slots{slots}"
        folder.mkdir(parents=True)
        started = time.monotonic()
        runs = [
            train_run(data, "rdiunet", folder / f"run{i}", SLOT_EPOCHS, slots, folder / "locks")
            for i in range(SLOT_RUNS)
        ]
        try:
            for i, process in enumerate(runs):
                finish(process, f"slot run {i} with gpu_slots {slots}", folder / f"run{i}.log", budget)
        finally:
            for process in runs:
                process.kill()
        wall = time.monotonic() - started
        records = [run_record(folder / f"run{i}") for i in range(SLOT_RUNS)]
        rows.append(
            {
                "gpu_slots": slots,
                "runs": SLOT_RUNS,
                "epochs": SLOT_EPOCHS,
                "wall_s": wall,
                "runs_per_hour": SLOT_RUNS * 3600 / wall,
                "card_shared": [record["gpu"].get("card_shared") for record in records],
                "uuid_matches_claim": [record["uuid_matches_claim"] for record in records],
            }
        )
        print(f"gpu_slots {slots}: {SLOT_RUNS} runs in {wall:.1f} s", flush=True)
    return rows


# --- before anything heavy: the machine --------------------------------------------------------


def machine() -> dict:
    info = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
    }
    if CUDA:
        device = torch.device("cuda", 0)
        info |= {
            "gpu": torch.cuda.get_device_name(0),
            "gpus_visible": torch.cuda.device_count(),
            "driver": gpu.driver_version(),
            "driver_cuda": gpu.driver_cuda_version(),
            "card_now": card_state(device),
            "compute_processes_now": processes_on(device),
        }
    return info


def processes_on(device: torch.device) -> list[dict] | None:
    nvml, _ = load_nvml()
    if nvml is None:
        return None
    try:
        return compute_processes(nvml, parent_card(nvml, nvml_handle(nvml, device)))
    except Exception:
        return None


def check_driver() -> None:
    """Stop in one line when this torch cannot use this machine's driver (or is a CPU build on a
    GPU machine, which would otherwise run the CPU smoke test and measure nothing)."""
    advice = gpu.wheel_advice()
    if advice:
        raise SystemExit(f"gpu_check: {advice}")
    if not CUDA and listed_gpus():
        raise SystemExit(
            f"gpu_check: nvidia-smi lists {listed_gpus()[0]}, but torch {torch.__version__} cannot use "
            "CUDA; install the torch build for this driver (README, 'The right wheels')"
        )


PLAN = (
    ("tests", "the gpu-marked tests"),
    ("data", f"synthetic nerve set, {IMAGES} images at {SIZE} px"),
    ("bench", f"both models: {SIZE} px (3 precisions, energy window), {SIZE} px channels_last, {LARGE} px"),
    ("train", f"{EPOCHS} epochs of each model with NVML"),
    ("slots", f"{SLOT_RUNS} trainings at once with gpu_slots {' and '.join(map(str, SLOTS))}"),
    ("bench_large_cl", f"{LARGE} px channels_last (only if time is left)"),
)


def print_plan(budget: Budget) -> None:
    where = "one H100" if CUDA else "one H100 (this is the CPU smoke test: the estimates do not apply)"
    print(f"gpu_check plan: expected {sum(ESTIMATES.values())} s on {where}; budget {budget.seconds:.0f} s")
    for name, what in PLAN:
        print(f"  {name:<15} ~{ESTIMATES[name]:>3} s  {what}")
    print(flush=True)


def run_steps(work: Path, budget: Budget, report: dict) -> None:
    """Each step in turn, unless the budget has no room left for it (or its data is missing)."""
    data = work / "nerve.npz"
    steps = (
        ("tests", lambda: step_tests(work, budget)),
        ("data", lambda: [{"path": str(prepare_data(work, budget)), "images": IMAGES, "size": SIZE}]),
        ("bench", lambda: step_bench(budget)),
        ("train", lambda: step_train(data, work, budget)),
        ("slots", lambda: step_slots(data, work, budget)),
        ("bench_large_cl", lambda: step_bench(budget, large_channels_last=True)),
    )
    for name, run in steps:
        began, rows = time.monotonic(), []
        if name in ("train", "slots") and not data.exists():
            status = "cut: no prepared data (its step was cut)"
        elif not budget.allows(ESTIMATES[name]):
            status = f"cut: {budget.left():.0f} s of the budget left, the step needs ~{ESTIMATES[name]} s"
        else:
            try:
                status, rows = SKIPPED or "measured", run()
            except OverBudget as stop:
                status = f"cut: {stop}"
        report["steps"][name] = {"status": status, "seconds": time.monotonic() - began, "rows": rows}
        print(f"step {name}: {status} ({report['steps'][name]['seconds']:.0f} s)", flush=True)


# --- the summary ---------------------------------------------------------------------------------


def ms(entry: dict | None) -> str:
    return f"{entry['ms_per_image']:.3f}" if entry and entry.get("measured") else "-"


def reading(gpu_record: dict, key: str) -> str:
    return f"{gpu_record[key]:.0f}" if gpu_record.get(key) is not None else "-"


def clock(entry: dict | None) -> str:
    card = (entry or {}).get("card_after") or {}
    if card.get("sm_clock_mhz") is None:
        return "-"
    reasons = ",".join(r for r in card.get("clock_event_reasons") or [] if r != "gpu_idle")
    return f"{card['sm_clock_mhz']}" + (f" ({reasons})" if reasons else "")


BENCH_ROW = "{:<8} {:>4} {:<13} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {}"
TRAIN_ROW = "{:<8} {:>8} {:>9} {:>7} {:>6} {:>9} {:<26} {:<9} {}"


def bench_lines(rows: list[dict]) -> list[str]:
    header = ("model", "px", "layout", "fp32 ms", "tf32 ms", "bf16 ms", "graphed", "best batch", "peak MiB",
              "SM MHz after eager (reasons)")  # fmt: skip
    lines = [BENCH_ROW.format(*header)]
    for row in rows:
        if "cut" in row:
            lines.append(f"{row['model']:<8} {row['size']:>4} {row['layout']:<13} cut: {row['cut']}")
            continue
        precisions, protocols = row["precisions"], row["protocols"]
        peak = f"{row['peak_memory_mib']:.0f}" if row.get("peak_memory_mib") is not None else "-"
        cells = (
            row["model"], row["size"], row["layout"], ms(precisions.get("fp32")), ms(precisions.get("tf32")),
            ms(precisions.get("bf16")), ms(protocols.get("graphed_b1")), ms(protocols.get("best_batch")),
            peak, clock(protocols.get("eager_b1")),
        )  # fmt: skip
        lines.append(BENCH_ROW.format(*cells))
    return lines


def summary(report: dict) -> str:
    machine_ = report["machine"]
    lines = [f"GPU check on {machine_.get('gpu', 'no GPU (CPU smoke test)')}, torch {machine_['torch']}"]
    for name, step in report["steps"].items():
        lines.append(f"  {name:<15} {step['status']}, {step['seconds']:.0f} s")
    steps = report["steps"]
    bench_rows = [row for name in ("bench", "bench_large_cl") for row in steps.get(name, {}).get("rows", [])]
    lines += ["", *bench_lines(bench_rows)]
    header = ("model", "epoch s", "energy J", "mean W", "max W", "peak MiB", "power from", "uuid ok")
    lines += ["", TRAIN_ROW.format(*header, "shared")]
    for row in steps.get("train", {}).get("rows", []):
        record = row["gpu"]
        cells = (
            row["model"], f"{min(row['epoch_s']):.2f}", reading(record, "energy_j"),
            reading(record, "mean_power_w"), reading(record, "max_power_w"),
            reading(record, "peak_memory_used_mib"), str(record.get("power_source", "-")),
            str(row["uuid_matches_claim"]), record.get("card_shared") or "-",
        )  # fmt: skip
        lines.append(TRAIN_ROW.format(*cells))
    lines.append("")
    for row in steps.get("slots", {}).get("rows", []):
        lines.append(
            f"gpu_slots {row['gpu_slots']}: {row['runs']} runs in {row['wall_s']:.1f} s "
            f"= {row['runs_per_hour']:.0f} runs/hour"
        )
    return "\n".join(lines)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out"), help="folder for the JSON report")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds the whole check may take")
    args = parser.parse_args()
    budget = Budget(args.budget_s, time.monotonic())
    check_driver()
    print_plan(budget)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    # This process's benchmarks claim in the check's own lock folder; on a CPU, a stand-in card.
    os.environ[gpu.LOCK_DIR_ENV] = str(work / "locks")
    if not CUDA:
        os.environ[gpu.STANDIN_ENV] = "gpu-check"
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "cuda": CUDA,
        "budget_s": budget.seconds,
        "estimates_s": ESTIMATES,
        "steps": {},
    }
    run_steps(work, budget, report)
    report["seconds"] = time.monotonic() - budget.started
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out = Path(args.out) / f"gpu_check-{platform.node() or 'host'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(summary(report))
    print(f"\nwritten: {out} ({report['seconds']:.0f} s in all, budget {budget.seconds:.0f} s)")
    tests = report["steps"]["tests"]["rows"]
    if tests and not tests[0]["passed"]:
        failed = tests[0]["last_line"]
        raise SystemExit(f"gpu_check: the gpu-marked tests failed ({failed}); see {work}/tests.log")


if __name__ == "__main__":
    main()
