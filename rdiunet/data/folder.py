"""A researcher's own images: a folder of image files and their masks, named in config.yaml.

    mine: {source: folder, images: "/data/mine/images/*.png", masks: "/data/mine/masks/{name}",
           subject: "^(P\\d+)_", size: 128, threshold: 0.8, epochs: 50, batch_size: 16}

- `images`: a glob (`**` reaches into subfolders); PNG, JPEG, TIFF or BMP files.
- `masks`: where each image's mask is, `{name}` standing for the image's file name and `{stem}`
  for its name without the extension (`/data/mine/masks/{stem}_mask.png`). A file the pattern
  names as some image's mask is never an image itself, so masks may sit beside their images.
- `subject`: a regular expression searched in the file name; its first group (else the whole
  match) is the subject whose images stay together in one split or fold. Without it each image
  is its own subject.

Images become grayscale and masks binary by the same rules as the built-in sources (decode.py).
There is no download and no synthetic stand-in: the files are read where they are, and the
prepared summary records every file with its size and sha256, and one digest over them all.
"""

import glob
import hashlib
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

from rdiunet.errors import UserError
from rdiunet.fileio import sha256_of

from .source import Member, Pair

FOLDER = "folder"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_FIELDS = {"name", "stem"}


@dataclass(frozen=True)
class FolderSpec:
    """Where a folder dataset's images and masks are, and how its file names give subjects."""

    images: str
    masks: str
    subject: str | None = None


def check_spec(spec: FolderSpec) -> None:
    """One line for a pattern that cannot work, before any file is looked at."""
    fields = {field for _, field, _, _ in string.Formatter().parse(spec.masks) if field is not None}
    if not fields or not fields <= MASK_FIELDS:
        raise UserError(
            f"the masks pattern {spec.masks!r} must name each image's mask with {{name}} (the image's file "
            "name) or {stem} (without its extension), like /data/mine/masks/{stem}_mask.png"
        )
    if spec.subject is not None:
        try:
            re.compile(spec.subject)
        except re.error as error:
            raise UserError(
                f"the subject pattern {spec.subject!r} is not a regular expression ({error})"
            ) from None


def mask_path(spec: FolderSpec, image: Path) -> Path:
    return Path(os.path.expanduser(spec.masks.format(name=image.name, stem=image.stem)))


def subject_of(spec: FolderSpec, image: Path) -> str | None:
    if spec.subject is None:
        return None
    found = re.search(spec.subject, image.name)
    if found is None:
        raise UserError(
            f"the file name {image.name} does not match the subject pattern {spec.subject!r}; fix the "
            "pattern (it is searched in each image's file name), or leave it out: each image its own subject"
        )
    return found.group(1) if found.re.groups else found.group(0)


def folder_pairs(spec: FolderSpec) -> list[Pair]:
    """Every image the glob finds with its mask and subject; an image without a mask is an error
    naming both paths."""
    check_spec(spec)
    found = sorted(
        Path(path).resolve()
        for path in glob.glob(os.path.expanduser(spec.images), recursive=True)
        if Path(path).suffix.lower() in IMAGE_SUFFIXES and Path(path).is_file()
    )
    masks = {image: mask_path(spec, image).resolve() for image in found}
    mask_files = set(masks.values())
    images = [image for image in found if image not in mask_files]
    if not images:
        raise UserError(
            f"no image file ({', '.join(IMAGE_SUFFIXES)}) matches {spec.images!r}; give the images "
            "as a glob such as /data/mine/images/*.png"
        )
    root = Path(os.path.commonpath([image.parent for image in images]))
    pairs = []
    for image in images:
        mask = masks[image]
        if not mask.is_file():
            raise UserError(f"image {image} has no mask: expected {mask} (the masks pattern {spec.masks!r})")
        image_id = image.relative_to(root).as_posix()
        pairs.append(
            Pair(
                id=image_id,
                group=subject_of(spec, image) or image_id,
                image=Member(None, str(image)),
                mask=Member(None, str(mask)),
            )
        )
    return pairs


def folder_provenance(spec: FolderSpec, pairs: list[Pair]) -> tuple[list[dict], dict]:
    """Each file with its size and sha256, and one entry for the whole set (its digest is the
    sha256 of the sorted "sha256  path" lines, as sha256sum prints them)."""
    files = []
    for pair in pairs:
        for role, member in (("image", pair.image), ("mask", pair.mask)):
            path = Path(member.name)
            size, digest = path.stat().st_size, sha256_of(path)
            files.append({"role": role, "path": str(path), "bytes": size, "sha256": digest})
    listing = "".join(f"{f['sha256']}  {f['path']}\n" for f in sorted(files, key=lambda f: f["path"]))
    whole = {
        "name": f"{spec.images} ({len(pairs)} images and their masks)",
        "bytes": sum(f["bytes"] for f in files),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
    }
    return files, whole
