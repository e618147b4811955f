"""The prepared dataset in memory, and batches drawn from it without per-sample Python work.

The whole split lives in one uint8 tensor (on the GPU when training there); a batch is one
indexing operation with a slice of a seeded permutation, then a cast. There is no Dataset/
DataLoader, no worker processes and no collate step: for images of 128^2-256^2 pixels the data
fits many times over, and indexing a resident tensor is faster than any pipeline feeding it.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rdiunet.errors import UserError
from rdiunet.fileio import read_json, sha256_of

from .folds import fold_split

SPLITS = ("train", "val", "test")
REQUIRED = {"images": np.uint8, "masks": np.uint8, "split": np.int8}


@dataclass(frozen=True)
class Split:
    """One split: images (N,1,H,W) and masks (N,1,H,W), both uint8, the image ids and their groups
    (the subject an image comes from; the image itself where the source has no subjects)."""

    images: torch.Tensor
    masks: torch.Tensor
    ids: tuple[str, ...]
    groups: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.masks.to(device), self.ids, self.groups)


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The npz's arrays, checked against the data contract; a broken file is one clear error."""
    rerun = "rerun rdiunet prepare to recreate it"
    if not Path(path).exists():
        raise UserError(f"prepared dataset {path} does not exist; run rdiunet prepare first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as error:  # numpy and zipfile raise many types for damaged headers and data
        raise UserError(f"{path} is not a readable .npz file ({error}); {rerun}") from None
    for key, dtype in {**REQUIRED, "ids": None}.items():
        if key not in arrays:
            raise UserError(f"{path} lacks the array '{key}'; {rerun}")
        if dtype is not None and arrays[key].dtype != dtype:
            raise UserError(f"{path}: '{key}' is {arrays[key].dtype}, expected {np.dtype(dtype)}; {rerun}")
    images, masks, split = arrays["images"], arrays["masks"], arrays["split"]
    if images.ndim != 3 or masks.shape != images.shape or split.shape != (len(images),):
        raise UserError(
            f"{path}: shapes do not agree (images {images.shape}, masks {masks.shape}, "
            f"split {split.shape}); {rerun}"
        )
    if masks.max(initial=0) > 1 or not np.isin(split, (0, 1, 2)).all():
        raise UserError(f"{path}: masks must be 0/1 and split 0/1/2; {rerun}")
    if arrays["ids"].shape != (len(images),) or len(set(arrays["ids"].tolist())) != len(images):
        raise UserError(f"{path}: 'ids' must name every image once; {rerun}")
    if "fold" in arrays and (
        arrays["fold"].shape != (len(images),) or arrays["fold"].dtype != np.int8 or arrays["fold"].min() < 0
    ):
        raise UserError(f"{path}: 'fold' must give every image a fold 0..k-1; {rerun}")
    return arrays


def folds_of(arrays: dict[str, np.ndarray]) -> int | None:
    """k for a cross-validated dataset (its 'fold' array), else None."""
    return int(arrays["fold"].max()) + 1 if "fold" in arrays else None


def load_prepared(path: str | Path, seed: int | None = None) -> dict[str, Split]:
    """The train, val and test splits of a prepared .npz (on the CPU); for a cross-validated one,
    the splits of training seed `seed` (fold_split)."""
    arrays = read_arrays(Path(path))
    folds = folds_of(arrays)
    if folds is not None:
        if seed is None:
            raise UserError(f"{path} is cross-validated in {folds} folds: a training seed picks the split")
        arrays["split"] = fold_split(arrays["fold"], folds, seed)
    images = torch.from_numpy(arrays["images"]).unsqueeze(1)
    masks = torch.from_numpy(arrays["masks"]).unsqueeze(1)
    ids = arrays["ids"].astype(str)
    groups = arrays["groups"].astype(str) if "groups" in arrays else ids
    result = {}
    for code, name in enumerate(SPLITS):
        index = np.flatnonzero(arrays["split"] == code)
        rows = torch.from_numpy(index)
        result[name] = Split(
            images[rows].contiguous(), masks[rows].contiguous(), tuple(ids[index]), tuple(groups[index])
        )
    return result


@dataclass(frozen=True)
class Prepared:
    """A prepared dataset that matches its summary: the splits, the summary and the .npz's sha256;
    for a cross-validated one, `fold` says which folds these splits test and validate on."""

    path: Path
    splits: dict[str, Split]
    summary: dict
    sha256: str
    fold: dict | None = None  # {"k": folds, "test": fold, "val": fold}

    @property
    def synthetic(self) -> bool:
        return bool(self.summary["synthetic"])


SUMMARY_KEYS = ("dataset", "synthetic", "image_size", "counts", "npz_sha256")


def read_summary(path: Path) -> dict:
    """The .json beside a prepared .npz, checked for the keys the pipeline relies on."""
    summary_path = Path(path).with_suffix(".json")
    summary = read_json(summary_path, "rerun rdiunet prepare to recreate it")
    missing = [key for key in SUMMARY_KEYS if not isinstance(summary, dict) or key not in summary]
    if missing:
        raise UserError(
            f"{summary_path} lacks '{missing[0]}' (written by an older rdiunet, or damaged); "
            "rerun rdiunet prepare to recreate it"
        )
    return summary


def open_prepared(path: str | Path, seed: int | None = None) -> Prepared:
    """The prepared data, after checking that the .npz is the one its summary describes; for a
    cross-validated dataset, the splits of training seed `seed`.

    A preparation killed between writing the two files, or an .npz replaced by hand, is refused
    rather than trained on under the other file's description."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"prepared dataset {path} does not exist; run rdiunet prepare first")
    summary = read_summary(path)
    actual = sha256_of(path)
    if actual != summary["npz_sha256"]:
        raise UserError(
            f"{path} does not match {path.with_suffix('.json')} (sha256 {actual[:12]} against the recorded "
            f"{summary['npz_sha256'][:12]}): a preparation was interrupted or a file replaced; "
            "rerun rdiunet prepare"
        )
    splits = load_prepared(path, seed)
    folds = summary.get("folds")
    if folds:
        test, val = seed % folds["k"], (seed + 1) % folds["k"]
        counts = {"train": sum(folds["images"]) - folds["images"][test] - folds["images"][val]}
        counts |= {"val": folds["images"][val], "test": folds["images"][test]}
        fold = {"k": folds["k"], "test": test, "val": val}
    else:
        counts, fold = summary["counts"], None
    found = {name: len(split) for name, split in splits.items()}
    if found != counts:
        raise UserError(f"{path} holds {found} images per split, its summary says {counts}")
    return Prepared(path, splits, summary, actual, fold)


def batches(
    split: Split,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    skip: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images float in [0,1], masks float in {0,1}), each (B,1,H,W), on the split's device.

    With `shuffle`, the order is a permutation drawn from `generator` (a CPU generator, so the
    order for a seed is the same on every device). `skip` leaves out the first batches of that
    order, to continue an epoch where a checkpoint stopped it.
    """
    n = len(split)
    if shuffle:
        order = torch.randperm(n, generator=generator).to(split.images.device)
    else:
        order = torch.arange(n, device=split.images.device)
    for start in range(skip * batch_size, n, batch_size):
        index = order[start : start + batch_size]
        yield split.images[index].float().div_(255), split.masks[index].float()
