"""What nvidia-smi says about this machine's GPUs, without torch (the workflow reads it too)."""

import itertools
import os
import shutil
import subprocess


def nvidia_smi(*args: str) -> list[str]:
    """nvidia-smi's output lines, or none where it is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if result.returncode != 0:
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def listed_gpus() -> list[str]:
    """The cards nvidia-smi lists ("GPU 0: NVIDIA H100 ... (UUID: GPU-...)")."""
    return [line for line in nvidia_smi("-L") if line.startswith("GPU ")]


def local_gpu_count() -> int:
    """The GPUs a job started here may use: CUDA_VISIBLE_DEVICES where set, else nvidia-smi's."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        # CUDA stops at the first invalid entry; "" and "-1" hide every GPU.
        entries = [entry.strip() for entry in visible.split(",")]
        valid = itertools.takewhile(lambda e: e and not e.startswith("-") and e != "NoDevFiles", entries)
        return len(list(valid))
    return len(listed_gpus())
