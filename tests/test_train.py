import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    TINY,
    TINY_OPTS,
    assert_one_line_error,
    job_env,
    prepared_jsrt,
    run_cli,
    tiny_settings,
    write_prepared,
)
from scipy import ndimage

import rdiunet.train as train_module
from rdiunet.errors import UserError
from rdiunet.evaluation import evaluate
from rdiunet.metrics import TEST_METRICS
from rdiunet.runfolder import RunFolder
from rdiunet.train import train


@pytest.fixture(scope="module")
def jsrt64(tmp_path_factory):
    """A small synthetic chest X-ray set at 64 px: 60 images, 42 for training."""
    return prepared_jsrt(tmp_path_factory.mktemp("jsrt64"), n=60, size=64)


def history(run) -> list[dict]:
    """history.csv without the wall-clock column, which legitimately differs between runs."""
    with open(run / "history.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def trained(jsrt64, tmp_path_factory):
    """The tests' reference run: tiny_settings(jsrt64), 3 epochs, trained once; tests that change a run
    folder work on a copy (`copy_of`)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    metrics = train(tiny_settings(jsrt64), out)
    return out, metrics


def copy_of(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def test_run_folder_holds_every_output(trained):
    run, metrics = trained
    assert {p.name for p in run.iterdir()} == {
        "history.csv",
        "gpu.csv",
        "checkpoint.pt",
        "best.pt",
        "best_loss.pt",
        "metrics.json",
        "per_image.csv",
        "run.json",
    }
    rows = history(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "train_soft_dice",
        "val_loss",
        "val_dice",
        "val_iou",
        "val_dice_pooled",
        "val_soft_dice",
        "lr",
    ]
    assert all(
        0 < float(r[c]) <= 1 for r in rows for c in ("train_soft_dice", "val_soft_dice", "val_dice_pooled")
    )
    best = max(rows, key=lambda r: float(r["val_dice"]))
    lowest = min(rows, key=lambda r: float(r["val_loss"]))
    assert metrics["checkpoint"] == "best_dice" and metrics["best_epoch"] == int(best["epoch"])
    epochs = {name: c["epoch"] for name, c in metrics["checkpoints"].items()}
    assert epochs == {"best_dice": int(best["epoch"]), "best_loss": int(lowest["epoch"]), "last": 3}
    with open(run / "per_image.csv") as handle:
        per_image = list(csv.DictReader(handle))
    assert len(per_image) == 3 * metrics["images"] == 3 * 12  # every image under each checkpoint
    for name, scores in metrics["checkpoints"].items():
        dice = [float(r["dice"]) for r in per_image if r["checkpoint"] == name]
        assert scores["dice"] == pytest.approx(np.mean(dice), abs=1e-5)
        assert set(TEST_METRICS) <= set(scores)
    assert metrics["dice"] == metrics["checkpoints"]["best_dice"]["dice"]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["seed"] == 0
    assert info["environment"]["torch"] == torch.__version__
    assert info["identity"]["precision"] == "tf32"
    from rdiunet.runtime import NEW_TF32_API

    new_api = {"matmul_fp32_precision": "tf32", "conv_fp32_precision": "tf32"} if NEW_TF32_API else {}
    assert info["settings"] == {
        "precision": "tf32",
        "autocast_dtype": None,
        "matmul_allow_tf32": True,
        "cudnn_allow_tf32": True,
        **new_api,
        "tf32_applies": False,
        "channels_last": False,
        "gpu_claim": None,
        "compile": False,
        "deterministic": True,
        "cudnn_benchmark": False,
        "gpu_slots": 1,
    }
    assert len(info["data_sha256"]) == 64
    # On the CPU the NVML record says why it is empty, and the run went on.
    assert metrics["gpu"] == {"available": False, "reason": "device is cpu, not a GPU"}
    assert (
        run / "gpu.csv"
    ).read_text().strip() == "time,power_w,utilization_pct,memory_used_mib,temperature_c,sm_clock_mhz"


def test_two_deterministic_cpu_runs_are_identical(jsrt64, trained, tmp_path):
    train(tiny_settings(jsrt64), tmp_path / "again")
    assert history(tmp_path / "again") == history(trained[0])
    train(tiny_settings(jsrt64, seed=1, epochs=1), tmp_path / "seed1")
    assert history(tmp_path / "seed1") != history(trained[0])[:1]


def test_finished_run_rerun_does_nothing(jsrt64, trained, tmp_path, capsys):
    run = copy_of(trained[0], tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    train(tiny_settings(jsrt64), run)
    assert "already complete" in capsys.readouterr().err
    assert stamps == {p.name: p.stat().st_mtime_ns for p in run.iterdir()}


def test_outputs_removed_by_a_workflow_manager_come_back_without_retraining(
    jsrt64, trained, tmp_path, capsys
):
    run = copy_of(trained[0], tmp_path)
    before = {name: (run / name).read_text() for name in ("history.csv", "per_image.csv")}
    for name in ("history.csv", "metrics.json", "per_image.csv"):
        (run / name).unlink()  # what Snakemake does before rerunning a job
    capsys.readouterr()
    train(tiny_settings(jsrt64), run)
    assert "train_loss" not in capsys.readouterr().err  # no epoch was trained again
    assert {name: (run / name).read_text() for name in before} == before
    assert (run / "metrics.json").exists()


def test_more_epochs_continue_a_finished_run(jsrt64, trained, tmp_path):
    train(tiny_settings(jsrt64, epochs=2), tmp_path / "extended")
    train(tiny_settings(jsrt64, epochs=3), tmp_path / "extended")
    assert history(tmp_path / "extended") == history(trained[0])


def test_checkpoint_of_another_configuration_is_refused(jsrt64, trained, tmp_path):
    run = copy_of(trained[0], tmp_path)
    with pytest.raises(UserError, match="refusing .*'growth': 32"):
        train(tiny_settings(jsrt64, epochs=4, model_options={**TINY, "growth": 32}), run)
    with pytest.raises(UserError, match="refusing .* model="):
        train(
            tiny_settings(jsrt64, epochs=4, model="unet", model_options={"widths": (8, 16, 32, 64, 128)}), run
        )


def poison_batch(monkeypatch, batch: int) -> None:
    """The training loss of the `batch`-th training batch (counted from 1) becomes NaN."""
    calls = {"n": 0}
    real_bce = torch.nn.functional.binary_cross_entropy_with_logits

    def poisoned(logits, target, **kwargs):
        calls["n"] += 1
        loss = real_bce(logits, target, **kwargs)
        return loss * float("nan") if calls["n"] == batch else loss

    monkeypatch.setattr(train_module, "F", SimpleNamespace(binary_cross_entropy_with_logits=poisoned))


def test_a_loss_that_diverges_ends_the_run_tested_with_the_epochs_before(jsrt64, tmp_path, monkeypatch):
    poison_batch(monkeypatch, 8)  # 6 training batches per epoch: one batch of the second epoch
    metrics = train(tiny_settings(jsrt64, epochs=3), tmp_path)
    assert metrics["diverged"] == {"epoch": 2, "loss": "nan"}
    assert metrics["epochs"] == 1 and metrics["epochs_planned"] == 3
    assert {scores["epoch"] for scores in metrics["checkpoints"].values()} == {1}
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "diverged" and run["diverged"] == metrics["diverged"]
    assert len(history(tmp_path)) == 1
    # The same settings would diverge again: a rerun does nothing.
    assert train(tiny_settings(jsrt64, epochs=3), tmp_path) == metrics


def test_a_loss_that_diverges_in_the_first_epoch_says_nothing_was_kept(jsrt64, tmp_path, monkeypatch):
    poison_batch(monkeypatch, 2)
    with pytest.raises(UserError, match="nan in epoch 1, before any epoch finished: no weights were kept"):
        train(tiny_settings(jsrt64, epochs=3), tmp_path)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "diverged" and not (tmp_path / "metrics.json").exists()


def test_empty_split_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    arrays = dict(
        images=rng.integers(0, 255, (6, 32, 32), dtype=np.uint8),
        masks=np.zeros((6, 32, 32), np.uint8),
        ids=np.array([str(i) for i in range(6)]),
        groups=np.array([str(i) for i in range(6)]),
        split=np.array([0, 0, 0, 0, 2, 2], np.int8),
    )
    write_prepared(tmp_path / "d.npz", arrays)
    with pytest.raises(UserError, match="the val split is empty"):
        train(tiny_settings(tmp_path / "d.npz"), tmp_path / "run")


def test_evaluate_recomputes_the_same_metrics(trained, tmp_path):
    run, metrics = copy_of(trained[0], tmp_path), trained[1]
    per_image = (run / "per_image.csv").read_text()
    (run / "per_image.csv").unlink()
    # Only the training's GPU record survives; the test metrics must come back identical.
    (run / "metrics.json").write_text(json.dumps({"gpu": metrics["gpu"]}))
    assert evaluate(RunFolder(run), device="cpu") == metrics
    assert (run / "per_image.csv").read_text() == per_image


# --- the command line, in real processes: kill, SIGTERM, resume ----------------------------------


def train_cli(data, out, epochs, *extra):
    return [
        sys.executable,
        "-m",
        "rdiunet.cli",
        "train",
        "--data",
        str(data),
        "--model",
        "rdiunet",
        "--seed",
        "0",
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--deterministic",
        *TINY_OPTS,
        *extra,
    ]


def run_train(command) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=job_env(OMP_NUM_THREADS="1"))


def start_and_interrupt(command, out, rows_before, sig):
    """Start training, wait until `rows_before` epochs are logged, then send `sig`."""
    env = job_env(OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "history.csv").exists() and len(history(out)) >= rows_before:
            break
        time.sleep(0.02)
    time.sleep(0.15)  # land inside the next epoch
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


@pytest.fixture(scope="module")
def uninterrupted(jsrt64, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run_train(train_cli(jsrt64, out, 5))
    assert result.returncode == 0, result.stderr
    return history(out)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_history(jsrt64, tmp_path, uninterrupted):
    code, _ = start_and_interrupt(train_cli(jsrt64, tmp_path, 5), tmp_path, 2, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert 2 <= len(history(tmp_path)) < 5  # really killed mid-run
    result = run_train(train_cli(jsrt64, tmp_path, 5))
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    assert history(tmp_path) == uninterrupted


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_mid_epoch_and_resumes(jsrt64, tmp_path, uninterrupted):
    code, stderr = start_and_interrupt(train_cli(jsrt64, tmp_path, 5), tmp_path, 1, signal.SIGTERM)
    assert code == 143, stderr
    assert "checkpoint saved" in stderr and "Traceback" not in stderr
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["batch"] > 0  # stopped inside an epoch, not at its end
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "preempted"
    result = run_train(train_cli(jsrt64, tmp_path, 5))
    assert result.returncode == 0, result.stderr
    assert f"batch {state['batch']}" in result.stderr
    assert history(tmp_path) == uninterrupted


def test_cli_errors_are_one_line(jsrt64, tmp_path):
    assert_one_line_error(
        run_cli(
            "train", "--data", tmp_path / "none.npz", "--model", "unet", "--seed", "0", "--out", tmp_path
        ),
        "does not exist",
    )
    assert_one_line_error(
        run_cli("train", "--data", jsrt64, "--model", "vnet", "--seed", "0", "--out", tmp_path / "r"),
        "unknown model 'vnet'",
    )
    assert_one_line_error(
        run_cli(
            "train",
            "--data",
            jsrt64,
            "--model",
            "unet",
            "--seed",
            "0",
            "--out",
            tmp_path / "r",
            "--model-opt",
            "depth",
        ),
        "key=value",
    )
    assert_one_line_error(run_cli("evaluate", "--run", tmp_path), "not a trained run")


@pytest.mark.slow
@pytest.mark.parametrize("model,options", [("unet", {"widths": (8, 16, 32, 64, 128)}), ("rdiunet", TINY)])
def test_both_models_learn_the_synthetic_lungs(jsrt64, tmp_path, model, options):
    metrics = train(
        tiny_settings(jsrt64, model=model, model_options=options, epochs=14, deterministic=False), tmp_path
    )
    assert max(float(r["val_dice"]) for r in history(tmp_path)) > 0.9
    assert metrics["dice"] > 0.9


def test_another_headline_checkpoint_moves_the_top_level_without_training(jsrt64, trained, tmp_path, capsys):
    run = copy_of(trained[0], tmp_path)
    metrics = train(tiny_settings(jsrt64, checkpoint="last"), run)
    assert "already complete" in capsys.readouterr().err
    assert metrics["checkpoint"] == "last" and metrics["best_epoch"] == 3
    assert metrics["dice"] == metrics["checkpoints"]["last"]["dice"]
    assert json.loads((run / "metrics.json").read_text()) == metrics


@pytest.mark.slow
def test_the_three_checkpoints_differ_on_a_run_built_to_overfit(tmp_path):
    """Clean training masks, validation masks with a quarter of their pixels flipped: the model
    grows confident, so the validation loss is lowest early while the Dice keeps rising, and a
    high learning rate makes the last epoch fall back from the best one."""
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.standard_normal((40, 32, 32)), (0, 3, 3))
    images = (255 * (field - field.min()) / np.ptp(field)).astype(np.uint8)
    split = np.array([0] * 24 + [1] * 8 + [2] * 8, np.int8)
    masks = (field > 0).astype(np.uint8)
    masks[(split == 1)[:, None, None] & (rng.random(masks.shape) < 0.25)] ^= 1
    ids = np.array([f"i{k}" for k in range(40)])
    data = write_prepared(
        tmp_path / "d.npz", dict(images=images, masks=masks, ids=ids, groups=ids, split=split)
    )
    metrics = train(tiny_settings(data, epochs=12, lr=2e-2, batch_size=4), tmp_path / "run")
    epochs = {name: scores["epoch"] for name, scores in metrics["checkpoints"].items()}
    assert len(set(epochs.values())) == 3, epochs  # best loss, best Dice and last: three epochs
    assert epochs["last"] == 12 and epochs["best_loss"] < epochs["best_dice"] < 12
    dice = {name: scores["dice"] for name, scores in metrics["checkpoints"].items()}
    assert len(set(dice.values())) == 3, dice


def test_a_cross_validated_run_tests_its_seeds_fold_and_records_it(synthetic_raw, tmp_path):
    from rdiunet.data.dataset import open_prepared
    from rdiunet.data.prepare import prepare

    data = tmp_path / "nerve_cv.npz"
    prepare("nerve", synthetic_raw["nerve"], data, size=32, workers=1, folds=3)
    metrics = train(tiny_settings(data, seed=1, epochs=1), tmp_path / "run")
    assert metrics["fold"] == {"k": 3, "test": 1, "val": 2} == metrics["identity"]["fold"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data"]["fold"] == metrics["fold"]
    scored = set(pd.read_csv(tmp_path / "run" / "per_image.csv").id.astype(str))
    assert scored == set(open_prepared(data, 1).splits["test"].ids)
    assert scored.isdisjoint(open_prepared(data, 0).splits["test"].ids)  # seed 0 tests another fold
