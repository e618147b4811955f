import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# tests/slurm/ holds the helper that runs the one-node test cluster.
sys.path.insert(0, str(Path(__file__).parent))

from rdiunet import cli
from rdiunet.data.synthetic import synthesize
from rdiunet.fileio import sha256_of
from rdiunet.settings import TrainSettings


@pytest.fixture(autouse=True)
def torch_threads():
    """In-process commands set torch's thread count (--threads); a later test must not inherit it
    (results computed with another number of threads differ in their last bits)."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def job_env(**extra: str) -> dict:
    """The environment for a process a test starts: this one's without the Slurm variables, which
    (inside an allocation) would make a job with one visible card skip its claim (rdiunet.gpu)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, **extra}


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 300, process: bool = False
) -> subprocess.CompletedProcess:
    """Run `rdiunet ARGS` and return its exit status and output.

    By default in this process, through the same `main` the console script calls (no interpreter
    start-up, no torch import per call): an exception that escapes `main` fails the test as a
    traceback would. With `process` or an `env`, in a separate process, as a user would.
    """
    argv = [str(a) for a in args]
    if process or env is not None:
        return subprocess.run(
            [sys.executable, "-m", "rdiunet.cli", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env if env is not None else job_env(),
        )
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse's usage errors, --help
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(["rdiunet", *argv], code, stdout.getvalue(), stderr.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user error: non-zero exit, no traceback, a single line naming the problem."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("rdiunet: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# A CPU-sized RDIU-Net, and the training settings the tests train it with.
TINY = {"widths": (8, 16, 32, 64), "dense_blocks": 2, "growth": 16}
TINY_OPTS = ("--model-opt", "widths=8,16,32,64", "--model-opt", "dense_blocks=2", "--model-opt", "growth=16")


def tiny_settings(data, **overrides) -> TrainSettings:
    base = dict(
        data=str(data),
        model="rdiunet",
        seed=0,
        epochs=3,
        batch_size=8,
        lr=1e-3,
        device="cpu",
        deterministic=True,
        model_options=TINY,
    )
    return TrainSettings(**{**base, **overrides})


def prepared_jsrt(root: Path, n: int, size: int) -> Path:
    """A synthetic chest X-ray set of `n` images at `size` px, written and prepared under `root`."""
    from rdiunet.data.prepare import prepare

    synthesize("jsrt", root / "raw", n=n, seed=0)
    prepare("jsrt", root / "raw", root / "jsrt.npz", size=size, workers=1)
    return root / "jsrt.npz"


def write_prepared(path: Path, arrays: dict, synthetic: bool = True) -> Path:
    """A hand-made prepared dataset: the .npz and its .json summary, as `rdiunet prepare` pairs them."""
    np.savez(path, **arrays)
    split = arrays["split"]
    summary = {
        "dataset": "handmade",
        "synthetic": synthetic,
        "image_size": list(arrays["images"].shape[1:]),
        "counts": {name: int((split == k).sum()) for k, name in enumerate(("train", "val", "test"))},
        "npz_sha256": sha256_of(path),
    }
    path.with_suffix(".json").write_text(json.dumps(summary))
    return path


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> dict[str, Path]:
    """Small synthetic raw folders for the three datasets, made once per test session."""
    root = tmp_path_factory.mktemp("raw")
    sizes = {"nerve": 40, "jsrt": 30, "isic": 30}
    for dataset, n in sizes.items():
        synthesize(dataset, root / dataset, n=n, seed=0)
    return {dataset: root / dataset for dataset in sizes}


REPO = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "profiles", "envs")
BIN = Path(sys.executable).parent


def copy_workflow(target: Path) -> Path:
    """The workflow in a fresh folder, as a user's clone would have it (no outputs, no .snakemake)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target / name)
    return target


def snakemake(
    cwd: Path, *args: str, timeout: float = 900, path: Path | None = None
) -> subprocess.CompletedProcess:
    """Snakemake in `cwd`; `path`: a folder searched first for commands (stand-ins), or the only
    one besides the interpreter's if it does not exist (no nvidia-smi, for one)."""
    # Jobs call `python -m rdiunet.cli`: the test's interpreter must come first on PATH.
    rest = [str(path)] if path is not None and path.exists() else []
    rest += [os.environ["PATH"]] if path is None or path.exists() else ["/usr/bin:/bin"]
    env = job_env(PATH=os.pathsep.join([str(BIN), *rest]))
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """The demo profile run once from a clean copy of the workflow (its outputs are in demo/)."""
    folder = copy_workflow(tmp_path_factory.mktemp("demo-workflow"))
    result = snakemake(folder, "--profile", "profiles/demo")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return folder
