"""What a dataset source is: where its data comes from, how its archives are laid out, the
paper's image size, and how a synthetic stand-in is written. Each module in rdiunet/data/sources/
declares one `Source`; `Pair`s of archive `Member`s are what it hands to `prepare` (a folder
dataset, rdiunet/data/folder.py, hands over plain files the same way)."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rdiunet.errors import UserError


@dataclass(frozen=True)
class Member:
    """A file inside a zip archive, or (`archive` None) a plain file at the path `name`."""

    archive: Path | None
    name: str

    def __str__(self) -> str:
        return self.name if self.archive is None else f"{self.archive.name}:{self.name}"


@dataclass(frozen=True)
class Pair:
    """One image and its mask; `official` is the source's own split (0 train, 1 val, 2 test)."""

    id: str
    group: str
    image: Member
    mask: Member
    official: int | None = None


def add_member(found: dict, key, member: Member) -> None:
    """Record `member` under `key`; a second member for the same key is an error naming both,
    never a silent replacement."""
    if key in found:
        raise UserError(
            f"{found[key]} and {member} are the same image (or mask) of this dataset; "
            "remove one of them from the archives"
        )
    found[key] = member


def match_pairs(images: dict[str, Member], masks: dict[str, Member], what: str) -> list[str]:
    """Keys present in both; an image without a mask (or the reverse) is an error naming it."""
    unmasked = sorted(images.keys() - masks.keys())
    if unmasked:
        raise UserError(f"{what}: image {images[unmasked[0]]} has no mask")
    orphans = sorted(masks.keys() - images.keys())
    if orphans:
        raise UserError(f"{what}: mask {masks[orphans[0]]} has no image")
    return sorted(images)


@dataclass(frozen=True)
class Terms:
    """Where a dataset comes from and on what terms it may be used (the report and docs/data.md
    state them; CITATION.cff lists the works to cite)."""

    title: str
    url: str
    licence: str
    terms: str
    cite: str


@dataclass(frozen=True)
class Source:
    """One dataset: its facts and the functions that fetch, read and synthesise it."""

    name: str
    size: int  # the paper's image side after preparation
    keep_empty: bool  # keep images whose mask is empty, unless the user says otherwise
    synthetic_n: int  # images in a synthetic stand-in, unless the user says otherwise
    download: Callable[..., list[Path]]  # (out, mirrors, official_splits, allow_mismatch) -> archives
    archives: Callable[[Path], list[Path]]  # raw folder -> the archives prepare reads
    pairs: Callable[[Path, Path], list[Pair]]  # (raw folder, work folder) -> image/mask pairs
    synthesize: Callable[..., list[Path]]  # (out, n, seed, **options) -> the archives written
    terms: Terms  # source, licence and terms of use
    official_splits: bool = False  # offers official validation and test archives to fetch
