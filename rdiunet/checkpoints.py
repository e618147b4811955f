"""Checkpoint files that say what they hold and prove it.

Every checkpoint (the last state, checkpoint.pt, and the best weights, best.pt) records the run's
identity (model and its options, seed, batch size, learning rate, precision, the prepared data's
sha256) and the sha256 of the weights it holds. Loading checks both: a damaged file, a bit flipped
in the weights, or a checkpoint of another run is one error line, never a silent wrong model.
"""

import hashlib
import io
from pathlib import Path

import torch

from rdiunet.errors import UserError
from rdiunet.fileio import atomic_path

FORMAT = 3


def weights_sha256(state_dict: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in the state dict's order."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save(path: Path, payload: dict) -> str:
    """Write `payload` (with its "model" state dict) atomically; return the weights' sha256."""
    digest = weights_sha256(payload["model"])
    # Serialised in memory and written by Python: a full disk is an OSError naming the file (torch's
    # own writer reports it as a RuntimeError without the cause), and the temporary file goes.
    buffer = io.BytesIO()
    torch.save({**payload, "format": FORMAT, "weights_sha256": digest}, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(buffer.getbuffer())
    return digest


def load(path: Path, fix: str) -> dict:
    """A checkpoint whose weights match their recorded sha256; anything else ends with `fix`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {fix}") from None
    except Exception as error:  # torch raises several types for damaged files, some with long texts
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"{path} is damaged ({reason}); {fix}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} was written by another version of rdiunet; {fix}")
    if weights_sha256(state["model"]) != state["weights_sha256"]:
        raise UserError(f"{path} is damaged: its weights do not match their recorded sha256; {fix}")
    return state


def check_identity(path: Path, state: dict, identity: dict, fix: str) -> None:
    """Refuse a checkpoint of another run, naming the first setting that differs."""
    theirs = state.get("identity") or {}
    differences = [key for key in identity if theirs.get(key) != identity[key]]
    if differences:
        key = differences[0]
        raise UserError(
            f"refusing {path}: it was trained with {key}={theirs.get(key)!r}, this run asks for "
            f"{identity[key]!r}; {fix}"
        )


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
