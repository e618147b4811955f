"""From raw archives to one array file per dataset.

    data/prepared/{dataset}.npz   images uint8 (N,H,W), masks uint8 {0,1} (N,H,W), ids, groups,
                                  split int8 (0 train, 1 val, 2 test)
    data/prepared/{dataset}.json  counts per split, image size, source archives and their sha256

Images are read straight from the zips, converted to grayscale and resized with area averaging;
masks are binarised and resized with nearest neighbour. Large JPEGs are decoded at reduced scale
(libjpeg's DCT scaling through Pillow's `draft`), which is most of prepare's speed on ISIC.
"""

import io
import json
import multiprocessing
import os
import sys
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from rdiunet import __version__
from rdiunet.errors import UserError
from rdiunet.fileio import atomic_path, sha256_of, write_json

from . import sources
from .archive import open_zip, read_member
from .source import Member, Pair
from .synthetic import MARKER

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)

# Each worker process keeps its archives open across the images it decodes.
_open_archives: dict[Path, zipfile.ZipFile] = {}


def open_image(member: Member) -> Image.Image:
    if member.archive not in _open_archives:
        _open_archives[member.archive] = open_zip(member.archive)
    payload = read_member(_open_archives[member.archive], member.name)
    try:
        # Only the header is parsed here; pixels are decoded on first use, after any `draft`.
        return Image.open(io.BytesIO(payload))
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot decode {member}: {error}") from None


def load_pair(pair: Pair, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The pair's image (grayscale, area-resized) and binary mask (nearest-resized), size x size."""
    image, mask = open_image(pair.image), open_image(pair.mask)
    if image.size != mask.size:
        raise UserError(
            f"mask {pair.mask} is {mask.size[0]}x{mask.size[1]} but its image {pair.image} "
            f"is {image.size[0]}x{image.size[1]}"
        )
    try:
        if image.format == "JPEG":
            # Decode at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the target size.
            image.draft("L", (size, size))
        image = image.convert("L").resize((size, size), Image.Resampling.BOX)
        mask = mask.convert("L")
        # Masks come as 0/255 or 0/1: binarise at half the mask's own maximum.
        threshold = mask.getextrema()[1] // 2
        mask = mask.resize((size, size), Image.Resampling.NEAREST)
        return np.asarray(image), (np.asarray(mask) > threshold).astype(np.uint8)
    except OSError as error:
        raise UserError(f"cannot decode {pair.image} or its mask: {error}") from None


def _load_pair_star(task: tuple[Pair, int]):
    return load_pair(*task)


def _forget_archives() -> None:
    """Drop cached archive handles: a forked worker must not share its parent's file offsets."""
    _open_archives.clear()


def decode_all(pairs: list[Pair], size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(pairs), size, size), dtype=np.uint8)
    masks = np.empty((len(pairs), size, size), dtype=np.uint8)
    tasks = [(pair, size) for pair in pairs]
    _forget_archives()
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
                with context.Pool(workers, initializer=_forget_archives) as pool:
                    chunks = max(1, min(64, len(tasks) // (8 * workers)))
                    for index, (image, mask) in enumerate(pool.imap(_load_pair_star, tasks, chunks)):
                        images[index], masks[index] = image, mask
                        bar.update()
        finally:
            for archive in _open_archives.values():
                archive.close()
            _forget_archives()
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
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or values[0] <= 0:
        raise UserError(f"--split must be three fractions train,val,test like 0.8,0.1,0.1; got '{text}'")
    total = sum(values)
    return tuple(v / total for v in values)


def synthetic_marker(raw: Path) -> dict | None:
    marker = raw / MARKER
    if not marker.exists():
        return None
    return json.loads(marker.read_text())


def prepare(
    dataset: str,
    raw: Path,
    out: Path,
    size: int | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    keep_empty: bool | None = None,
    workers: int | None = None,
) -> dict:
    """Write `out` (.npz) and its .json summary; return the summary."""
    source = sources.get(dataset)
    size = source.size if size is None else size
    if size < 16 or size % 16:
        raise UserError(f"--size must be a positive multiple of 16 (the models pool 4 times), got {size}")
    if not raw.is_dir():
        raise UserError(f"raw data folder {raw} does not exist; run rdiunet download or rdiunet synth first")
    keep_empty = source.keep_empty if keep_empty is None else keep_empty
    workers = workers or min(4, os.cpu_count() or 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    archives = source.archives(raw)
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=out.parent) as work:
        pairs = source.pairs(raw, Path(work))
        images, masks = decode_all(pairs, size, workers)
    empty = masks.reshape(len(masks), -1).max(axis=1) == 0
    dropped = 0
    if not keep_empty:
        dropped = int(empty.sum())
        keep = np.flatnonzero(~empty)
        pairs, images, masks, empty = [pairs[i] for i in keep], images[keep], masks[keep], empty[keep]
    if not pairs:
        raise UserError(f"no images left in {raw} after dropping empty masks; use --keep-empty")
    groups = [p.group for p in pairs]
    split = assign_splits(groups, [p.official for p in pairs], fractions, seed)

    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            images=images,
            masks=masks,
            ids=np.array([p.id for p in pairs]),
            groups=np.array(groups),
            split=split,
        )
    marker = synthetic_marker(raw)
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
            "fractions": list(fractions),
            "seed": seed,
            "official": sorted({SPLITS[p.official] for p in pairs if p.official is not None}),
        },
        "raw": [{"name": a.name, "bytes": a.stat().st_size, "sha256": sha256_of(a)} for a in archives],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rdiunet_version": __version__,
    }
    write_json(out.with_suffix(".json"), summary)
    return summary


def prepare_command(dataset: str, raw: Path, out: Path, **options) -> None:
    """`rdiunet prepare`: prepare and print what the arrays hold."""
    summary = prepare(dataset, raw, out, **options)
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"{out}: {summary['images']} images ({counts}), {summary['image_size'][0]} px")
