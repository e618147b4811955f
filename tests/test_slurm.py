"""The Slurm profile against a real one-node Slurm cluster (munge, slurmctld, slurmd on localhost).

The cluster is started here and stopped afterwards. Where it cannot start the tests are skipped,
except in CI (CI=true), where that is a failure: CI installs the daemons (.ci/run).
"""

import os
import re
import subprocess
import time

import pytest
import yaml
from conftest import BIN, copy_workflow, snakemake
from slurm import cluster

pytestmark = pytest.mark.slow

DEMO_CONFIG = ("--configfile", "profiles/demo/demo.yaml")
FAKE_GPU = ("--workflow-profile", "profiles/fakegpu")
# Test-cluster overrides: no slurmdbd, so squeue reports job states (MinJobAge keeps them), and
# short polling intervals keep the test fast.
TEST_CLUSTER = (
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--seconds-between-status-checks",
    "2",
)


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = cluster.missing_requirements()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the Slurm test cluster cannot start in CI: {reason}")
        pytest.skip(reason)
    info = cluster.start()
    yield info
    cluster.stop()


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """The workflow, with a copy of its workflow profile that asks for the cluster's (fake) GPU
    although the demo config trains on the CPU, as the paper config's `device: auto` would."""
    folder = copy_workflow(tmp_path_factory.mktemp("slurm-workflow"))
    profile = yaml.safe_load((folder / "profiles" / "default" / "config.yaml").read_text())
    for rule in ("train", "bench"):
        profile["set-resources"][rule]["gpu"] = 1
    (folder / "profiles" / "fakegpu").mkdir()
    (folder / "profiles" / "fakegpu" / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def slurm_jobs() -> dict[str, dict]:
    """Every job Slurm still remembers (MinJobAge): id -> comment (rule and wildcards), state, GPUs."""
    jobs = {}
    listing = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%k|%T"], capture_output=True, text=True
    )
    for line in listing.stdout.split():
        job_id, comment, state = line.split("|")
        details = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        gpus = re.search(r"TresPerJob=(\S+)", details)
        limit = re.search(r"TimeLimit=(\S+)", details)
        jobs[job_id] = {
            "comment": comment,
            "state": state,
            "gres": gpus.group(1) if gpus else None,
            "time_limit": limit.group(1) if limit else None,
        }
    return jobs


def test_training_runs_as_slurm_jobs_with_a_gpu(slurm_cluster, workflow):
    started = time.monotonic()
    targets = [
        "results/jsrt/unet/seed0/metrics.json",
        "results/jsrt/rdiunet/seed0/metrics.json",
        "results/jsrt/unet/bench.json",
    ]
    result = snakemake(
        workflow, "--profile", "profiles/slurm", *FAKE_GPU, *DEMO_CONFIG, *TEST_CLUSTER, "--verbose", *targets
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    print(f"slurm workflow: {time.monotonic() - started:.0f} s")

    # The plugin's own record of what it submitted.
    sbatch = [line for line in (result.stdout + result.stderr).splitlines() if "sbatch call:" in line]
    train_calls = [line for line in sbatch if "--comment rule_train" in line]
    assert len(train_calls) == 2 and len(sbatch) == 5  # synth, prepare, 2 x train, bench
    for call in train_calls:
        assert "--gpus=1" in call and "-t 360" in call and "--signal=TERM@120" in call
        assert "--mem 24000" in call and "--cpus-per-task=4" in call
    for call in sbatch:
        print(re.sub(r' --wrap=".*', "", call.split("sbatch call: ", 1)[1]))

    # Slurm's own record: the train jobs completed with a GPU allocated.
    trains = [job for job in slurm_jobs().values() if job["comment"].startswith("rule_train")]
    assert len(trains) == 2
    assert all(job["state"] == "COMPLETED" and job["gres"] == "gres:gpu:1" for job in trains), trains

    # And the outputs meet the data contract.
    for model in ("unet", "rdiunet"):
        run = workflow / "demo" / "results" / "jsrt" / model / "seed0"
        for name in ("history.csv", "metrics.json", "per_image.csv", "checkpoint.pt", "best.pt", "run.json"):
            assert (run / name).exists(), run / name
        assert len((run / "history.csv").read_text().splitlines()) == 1 + 16


def history_rows(path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def test_cancelled_training_job_resumes_from_its_checkpoint(slurm_cluster, workflow):
    # A longer run, so that the job can be signalled mid-training.
    (workflow / "longer.yaml").write_text("datasets:\n  jsrt:\n    epochs: 40\n")
    target = "results/jsrt/rdiunet/seed1/metrics.json"
    run = workflow / "demo" / "results" / "jsrt" / "rdiunet" / "seed1"
    command = ["--profile", "profiles/slurm", *FAKE_GPU, *DEMO_CONFIG, "longer.yaml", *TEST_CLUSTER, target]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [str(BIN / "snakemake"), *command],
        cwd=workflow,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while history_rows(run / "history.csv") < 3:
            assert time.monotonic() < deadline and process.poll() is None, "training did not start"
            time.sleep(0.2)
        (job_id,) = [
            i
            for i, job in slurm_jobs().items()
            if job["comment"] == "rule_train_wildcards_jsrt_rdiunet_1" and job["state"] == "RUNNING"
        ]
        subprocess.run(["scancel", "--signal=TERM", job_id], check=True)
        output, _ = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, output[-5000:]
    # Slurm saw the first job end early; the profile's retry submitted a second one.
    attempts = [
        job
        for _, job in sorted(slurm_jobs().items(), key=lambda item: int(item[0]))
        if job["comment"] == "rule_train_wildcards_jsrt_rdiunet_1"
    ]
    assert [job["state"] for job in attempts] == ["FAILED", "COMPLETED"], attempts
    log = (workflow / "demo" / "logs" / "train" / "jsrt" / "rdiunet" / "seed1.log").read_text()
    assert "resuming from" in log
    epochs = [int(line.split(",")[0]) for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, 41))
