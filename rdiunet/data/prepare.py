"""From raw archives to one array file per dataset.

    data/prepared/{dataset}.npz   images uint8 (N,H,W), masks uint8 {0,1} (N,H,W), ids, groups,
                                  split int8 (0 train, 1 val, 2 test); with --folds k also
                                  fold int8 (0..k-1), from which each seed's split is derived
    data/prepared/{dataset}.json  counts per split, image size, whether the data is synthetic, the
                                  sha256 of every raw archive (of every file, for a folder dataset)
                                  and of the .npz itself

Images are read straight from the zips, converted to grayscale and resized with area averaging;
masks are binarised and resized with nearest neighbour (rules and limits in decode.py). Large
JPEGs are decoded at reduced scale (libjpeg's DCT scaling through Pillow's `draft`), which is most
of prepare's speed on ISIC.

The raw archives are hashed before they are read, and the .npz and .json are written together:
the .json records the .npz's sha256, so a reader can tell a matching pair from one that a kill
split (rdiunet.data.dataset.open_prepared). One prepare per output runs at a time (a lock beside
it); a rerun removes what a killed one left behind (its staging folder and temporary files).
"""

import json
import math
import multiprocessing
import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rdiunet import __version__
from rdiunet.errors import UserError
from rdiunet.fileio import atomic_paths, exclusive_lock, remove_leftovers, sha256_of

from . import sources
from .decode import forget_archives, load_pair
from .folder import FOLDER, FolderSpec, folder_pairs, folder_provenance
from .folds import assign_folds, fold_split
from .source import Pair
from .synthetic import MARKER

SPLITS = ("train", "val", "test")
SPLIT_BY = ("subject", "image")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def _load_pair_star(task: tuple[Pair, int]):
    return load_pair(*task)


def decode_all(pairs: list[Pair], size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(pairs), size, size), dtype=np.uint8)
    masks = np.empty((len(pairs), size, size), dtype=np.uint8)
    tasks = [(pair, size) for pair in pairs]
    forget_archives()
    with tqdm(total=len(pairs), desc="decode", unit="img", file=sys.stderr, mininterval=2) as bar:
        try:
            if workers <= 1:
                results = map(_load_pair_star, tasks)
                for index, (image, mask) in enumerate(results):
                    images[index], masks[index] = image, mask
                    bar.update()
            else:
                # fork shares the pair list; each worker opens every archive once.
                context = multiprocessing.get_context("fork")
                with context.Pool(workers, initializer=forget_archives) as pool:
                    chunks = max(1, min(64, len(tasks) // (8 * workers)))
                    for index, (image, mask) in enumerate(pool.imap(_load_pair_star, tasks, chunks)):
                        images[index], masks[index] = image, mask
                        bar.update()
        finally:
            forget_archives()
    return images, masks


def assign_splits(
    groups: list[str], official: list[int | None], fractions: tuple[float, float, float], seed: int
) -> np.ndarray:
    """0/1/2 per item. Items with an official val or test split keep it; the rest form a pool
    that is split by group (no group in two splits) into train plus whichever of val and test
    the source does not provide, in proportion to `fractions`."""
    split = np.array([-1 if o in (None, 0) else o for o in official], dtype=np.int8)
    provided = set(split[split >= 0].tolist())
    active = [k for k in range(3) if k not in provided and fractions[k] > 0]
    if 0 not in active:
        active.insert(0, 0)
    pool = np.flatnonzero(split < 0)
    pool_groups = sorted({groups[i] for i in pool})
    if len(pool_groups) < len(active):
        raise UserError(
            f"{len(pool_groups)} groups cannot fill the {len(active)} splits "
            f"{', '.join(SPLITS[k] for k in active)}; provide more images or set a fraction to 0"
        )
    order = np.random.default_rng(seed).permutation(len(pool_groups))
    weights = np.array([fractions[k] for k in active], dtype=float)
    counts = np.maximum(1, np.round(weights / weights.sum() * len(pool_groups)).astype(int))
    counts[0] = len(pool_groups) - counts[1:].sum()  # train takes the remainder
    if counts[0] < 1:
        raise UserError("the split fractions leave no group for training; lower val and test")
    group_split = {}
    boundaries = np.cumsum(counts)
    for rank, group_index in enumerate(order):
        group_split[pool_groups[group_index]] = active[int(np.searchsorted(boundaries, rank, "right"))]
    for i in pool:
        split[i] = group_split[groups[i]]
    return split


def parse_fractions(text: str) -> tuple[float, float, float]:
    """train,val,test: three finite fractions, none negative, train positive, summing to 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if (
        len(values) != 3
        or not all(math.isfinite(v) for v in values)
        or min(values) < 0
        or values[0] <= 0
        or abs(sum(values) - 1) > 1e-6
    ):
        raise UserError(
            f"--split must be three finite fractions train,val,test that sum to 1, like 0.8,0.1,0.1; "
            f"got '{text}'"
        )
    return values


def synthetic_marker(raw: Path) -> dict | None:
    marker = raw / MARKER
    if not marker.exists():
        return None
    try:
        return json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{marker} is damaged; write the stand-in again with rdiunet synth") from None


def check_unique_ids(pairs: list[Pair]) -> None:
    """Two members giving one image id would silently replace each other: refuse, naming both."""
    seen = {}
    for pair in pairs:
        if pair.id in seen:
            raise UserError(
                f"image id {pair.id} comes from two members, {seen[pair.id]} and {pair.image}; "
                "remove the duplicate from the raw archives"
            )
        seen[pair.id] = pair.image


def check_options(size: int, workers: int, seed: int) -> None:
    if size < 16 or size % 16:
        raise UserError(f"--size must be a positive multiple of 16 (the models pool 4 times), got {size}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")


def raw_pairs(
    dataset: str, raw: Path, staging: Path, folder: FolderSpec | None
) -> tuple[list[Pair], list[dict], dict]:
    """The image/mask pairs, the checksums of what they are read from (each archive hashed before
    it is read; for a folder dataset one digest over its files) and, for a folder dataset, its
    patterns and file list for the summary."""
    if dataset == FOLDER:
        pairs = folder_pairs(folder)
        files, whole = folder_provenance(folder, pairs)
        return pairs, [whole], {"folder": asdict(folder), "files": files}
    source = sources.get(dataset)
    archives = source.archives(raw)
    entries = [{"name": a.name, "bytes": a.stat().st_size, "sha256": sha256_of(a)} for a in archives]
    return source.pairs(raw, staging), entries, {}


def prepare(
    dataset: str,
    raw: Path,
    out: Path,
    size: int | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    keep_empty: bool | None = None,
    workers: int | None = None,
    split_by: str = "subject",
    folds: int | None = None,
    folder: FolderSpec | None = None,
) -> dict:
    """Write `out` (.npz) and its .json summary; return the summary.

    `split_by` "subject" keeps each group (a subject for nerve, the image itself elsewhere) in one
    split; "image" splits images at random (frames of one subject then land in several splits,
    the reading the paper may have used). The groups are recorded either way.

    `folds` k: subject-wise k-fold cross-validation. Every image (an official test set included:
    cross-validation tests every subject) gets a fold; each training seed s then tests on fold
    s mod k and validates on fold (s + 1) mod k (fold_split). The stored `split` is seed 0's.

    `dataset` "folder" with `folder`: a researcher's own files (rdiunet/data/folder.py), read
    where they are; `raw` is not used, `size` must be given and empty masks are kept by default."""
    if dataset == FOLDER:
        if folder is None:
            raise UserError("a folder dataset needs --images and --masks (docs/custom.md)")
        if size is None:
            raise UserError("a folder dataset needs --size (the side its images are resized to)")
        default_keep_empty = True
    else:
        source = sources.get(dataset)
        size = source.size if size is None else size
        default_keep_empty = source.keep_empty
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    check_options(size, workers, seed)
    if folds is not None and (not isinstance(folds, int) or folds < 3):
        raise UserError(
            f"--folds must be an integer of at least 3 (a test fold, a validation fold and one to train on), "
            f"got {folds}"
        )
    if split_by not in SPLIT_BY:
        raise UserError(f"--split-by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    if dataset != FOLDER and not raw.is_dir():
        raise UserError(f"raw data folder {raw} does not exist; run rdiunet download or rdiunet synth first")
    keep_empty = default_keep_empty if keep_empty is None else keep_empty
    summary_path, staging = out.with_suffix(".json"), out.parent / f".{out.name}.staging"
    busy = f"another rdiunet prepare is writing {out}; wait for it to finish"
    with exclusive_lock(out.parent / f".{out.name}.lock", busy):
        remove_leftovers(out, staging)
        remove_leftovers(summary_path)
        try:
            pairs, raw_entries, read_from = raw_pairs(dataset, raw, staging, folder)
            check_unique_ids(pairs)
            images, masks = decode_all(pairs, size, workers)
        finally:
            remove_leftovers(out, staging)
        empty = masks.reshape(len(masks), -1).max(axis=1, initial=0) == 0
        dropped = 0
        if not keep_empty:
            dropped = int(empty.sum())
            keep = np.flatnonzero(~empty)
            pairs, images, masks, empty = [pairs[i] for i in keep], images[keep], masks[keep], empty[keep]
        if not pairs:
            raise UserError(f"no images left in {raw} after dropping empty masks; use --keep-empty")
        groups = [p.group for p in pairs]
        units = groups if split_by == "subject" else [p.id for p in pairs]
        fold = assign_folds(units, folds, seed) if folds else None
        if fold is not None:
            split = fold_split(fold, folds, 0)
        else:
            split = assign_splits(units, [p.official for p in pairs], fractions, seed)
        marker = None if dataset == FOLDER else synthetic_marker(raw)
        summary = {
            "dataset": dataset,
            "synthetic": marker is not None,
            "synthetic_params": marker,
            "image_size": [size, size],
            "images": len(pairs),
            "counts": {name: int((split == k).sum()) for k, name in enumerate(SPLITS)},
            "groups": {
                name: len({g for g, s in zip(groups, split, strict=True) if s == k})
                for k, name in enumerate(SPLITS)
            },
            "empty_masks": {name: int((empty & (split == k)).sum()) for k, name in enumerate(SPLITS)},
            "dropped_empty": dropped,
            "split": {
                "by": split_by,
                "fractions": list(fractions),
                "seed": seed,
                "official": sorted({SPLITS[p.official] for p in pairs if p.official is not None}),
            },
            "folds": fold_summary(fold, folds, units, split_by) if fold is not None else None,
            "raw": raw_entries,
            **read_from,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "rdiunet_version": __version__,
        }
        with atomic_paths(out, summary_path) as (npz_tmp, summary_tmp):
            with open(npz_tmp, "wb") as handle:
                np.savez_compressed(
                    handle,
                    images=images,
                    masks=masks,
                    ids=np.array([p.id for p in pairs]),
                    groups=np.array(groups),
                    split=split,
                    **({"fold": fold} if fold is not None else {}),
                )
            summary["npz_sha256"] = sha256_of(npz_tmp)
            summary_tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def fold_summary(fold: np.ndarray, folds: int, units: list[str], split_by: str) -> dict:
    """Per fold its images and subjects, and what the folds were drawn by."""
    subjects = len(set(units)) < len(units)
    if split_by == "subject" and subjects:
        by = "subject"
    elif split_by == "subject":
        by = "image (the source names no subjects: each image is its own)"
    else:
        by = "image (frames of one subject may sit in several folds)"
    return {
        "k": folds,
        "by": by,
        "images": [int((fold == k).sum()) for k in range(folds)],
        "subjects": [len({u for u, f in zip(units, fold, strict=True) if f == k}) for k in range(folds)],
        "seed_to_fold": "seed s tests fold s mod k, validates on fold (s + 1) mod k, trains on the rest",
    }


def prepare_command(dataset: str, raw: Path, out: Path, **options) -> None:
    """`rdiunet prepare`: prepare and print what the arrays hold."""
    summary = prepare(dataset, raw, out, **options)
    if summary["folds"]:
        folds = summary["folds"]
        sizes = ", ".join(f"{i} {s}" for i, s in zip(folds["images"], folds["subjects"], strict=True))
        print(
            f"{out}: {summary['images']} images in {folds['k']} folds by {folds['by']} "
            f"(images subjects per fold: {sizes}), {summary['image_size'][0]} px"
        )
        return
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"{out}: {summary['images']} images ({counts}), {summary['image_size'][0]} px")
