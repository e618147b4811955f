"""The three datasets of the paper. Each source module knows where its data comes from
(`download`), how the archives are laid out (`pairs`), and the paper's image size (`SIZE`)."""

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from rdiunet.errors import UserError


@dataclass(frozen=True)
class Member:
    """A file inside a zip archive."""

    archive: Path
    name: str

    def __str__(self) -> str:
        return f"{self.archive.name}:{self.name}"


@dataclass(frozen=True)
class Pair:
    """One image and its mask; `official` is the source's own split (0 train, 1 val, 2 test)."""

    id: str
    group: str
    image: Member
    mask: Member
    official: int | None = None


def match_pairs(images: dict[str, Member], masks: dict[str, Member], what: str) -> list[str]:
    """Keys present in both; an image without a mask (or the reverse) is an error naming it."""
    unmasked = sorted(images.keys() - masks.keys())
    if unmasked:
        raise UserError(f"{what}: image {images[unmasked[0]]} has no mask")
    orphans = sorted(masks.keys() - images.keys())
    if orphans:
        raise UserError(f"{what}: mask {masks[orphans[0]]} has no image")
    return sorted(images)


NAMES = ("nerve", "jsrt", "isic")


def get(name: str) -> ModuleType:
    """The source module of a dataset key."""
    from . import isic, jsrt, nerve

    sources = {"nerve": nerve, "jsrt": jsrt, "isic": isic}
    if name not in sources:
        raise UserError(f"unknown dataset '{name}'; known datasets: {', '.join(NAMES)}")
    return sources[name]
