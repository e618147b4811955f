"""Faults a user can cause or meet, each answered in one line with nothing half-written: a full
disk (a real one: a small tmpfs, where the tests run as root), a folder that cannot be written
(a read-only mount as root, a chmod-ed folder otherwise), a model too deep for the images, a cut
NVML sample file."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TINY_OPTS, assert_one_line_error, prepared_jsrt, run_cli

from rdiunet.nvml import GpuSampler
from rdiunet.runfolder import RunFolder


def mount_tmpfs(target: Path, options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mount, which needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()})")


def unmount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 600 KiB: enough for a run folder's first files, not for a checkpoint."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=600k")
    yield disk
    unmount(disk)


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot write: a read-only mount as root, a 0555 folder otherwise."""
    folder = tmp_path / "unwritable"
    if os.geteuid() == 0:
        mount_tmpfs(folder, "ro,size=64k")
        yield folder
        unmount(folder)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture(scope="module")
def jsrt32(tmp_path_factory):
    return prepared_jsrt(tmp_path_factory.mktemp("jsrt"), n=16, size=32)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_a_full_disk_during_training_is_one_line_and_leaves_no_temporary_file(small_disk, jsrt32):
    out = small_disk / "run"
    result = run_cli(
        "train", "--data", jsrt32, "--model", "rdiunet", "--seed", "0", "--out", out, "--epochs", "2",
        "--batch-size", "4", "--device", "cpu", *TINY_OPTS, process=True,
    )  # fmt: skip
    line = assert_one_line_error(result, "no space left on the device", "free some space")
    assert f"cannot write {out}" in line
    assert leftovers(small_disk) == []


def test_an_unwritable_results_folder_is_one_line_for_every_command(unwritable, jsrt32, tmp_path):
    fault = "read-only" if os.geteuid() == 0 else "permission denied"
    train = run_cli(
        "train", "--data", jsrt32, "--model", "rdiunet", "--seed", "0", "--out", unwritable / "run",
        "--epochs", "1", "--device", "cpu", *TINY_OPTS,
    )  # fmt: skip
    assert_one_line_error(train, fault, str(unwritable))
    synth = run_cli("synth", "--dataset", "jsrt", "--out", unwritable / "raw", "--n", "4")
    assert_one_line_error(synth, fault, str(unwritable))
    from handmade import CONFIG, write_tree

    write_tree(tmp_path / "tree")
    for verb in ("tables", "report"):
        out = unwritable / ("report.html" if verb == "report" else "reports")
        extra = ("--figures", tmp_path / "none", "--timing", tmp_path / "none") if verb == "report" else ()
        result = run_cli(
            verb, "--results", tmp_path / "tree" / "results", "--data", tmp_path / "none",
            "--config-json", json.dumps(CONFIG), "--out", out, *extra,
        )  # fmt: skip
        assert_one_line_error(result, fault, str(unwritable))


class FakeNVML:
    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetPowerUsage(self, handle):
        return 100_000

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return int(time.time() * 100_000)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return type("U", (), {"gpu": 50})()

    def nvmlDeviceGetMemoryInfo(self, handle):
        return type("M", (), {"used": 2**30})()

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 50

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 1500


def test_the_sampler_on_a_full_disk_keeps_sampling_and_says_what_was_not_written(small_disk):
    with open(small_disk / "filler", "wb") as handle:  # fill the disk
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    with GpuSampler(small_disk / "gpu.csv", 0, period=0.02, nvml=FakeNVML()) as sampler:
        time.sleep(0.1)
    summary = sampler.summary()
    assert summary["available"] and summary["samples"] > 3
    assert "No space left on device" in summary["samples_not_written"]


@pytest.mark.parametrize(
    "content", ["", "time,power_w\n1.0,100\n2.0,1", "time,power_w\n1.0,100\n2.0,100,7,8\n"]
)
def test_an_empty_or_cut_sample_file_is_no_samples_never_a_blocker(tmp_path, content):
    folder = RunFolder(tmp_path)
    folder.gpu.write_text(content)
    samples = folder.read_gpu_samples()
    assert samples.empty or list(samples.time) in ([1.0, 2.0], [1.0])


def test_a_model_too_deep_for_the_images_is_refused_before_the_run_folder_is_made(jsrt32, tmp_path):
    deep = ("--model-opt", "widths=4,8,8,8,8,8")  # the side must be divisible by 64
    result = run_cli(
        "train", "--data", jsrt32, "--model", "rdiunet", "--seed", "0", "--out", tmp_path / "run",
        "--device", "cpu", *deep,
    )  # fmt: skip
    assert_one_line_error(result, "cannot take 32x32 images", "divisible by 64", "--size")
    assert not (tmp_path / "run").exists()
    bench = run_cli(
        "bench", "--model", "rdiunet", "--size", "32", "--out", tmp_path / "b.json", "--device", "cpu", *deep
    )
    assert_one_line_error(bench, "cannot take 32x32 images")
    assert not (tmp_path / "b.json").exists()
