"""Archive members (or plain files) into arrays: images to grayscale, masks to binary labels, by
explicit rules and within stated limits (docs/data.md, "Decoding rules and limits").

Limits, checked before the work they bound:
- an image member may declare at most MAX_MEMBER_BYTES uncompressed (read from the zip header
  before anything is inflated; zipfile never reads past the declared size);
- an image may declare at most MAX_PIXELS pixels in its header (checked before pixels are decoded).

Mask rule, by the mask's mode:
- "1": the bits as they are;
- "L", "I", "I;16", "F", "RGB" (as luma): a pixel is foreground when its value is above half the
  mask's own maximum (so 0/1, 0/255 and 0/65535 all work); an all-zero mask is empty;
- "LA", "RGBA", and "P"/"PA" (palette, read as RGBA): the colour channels by the rule above,
  unless they are constant over the image; then the alpha channel by the same rule (labels that
  live only in transparency);
- any other mode: refused.
"""

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from rdiunet.errors import UserError

from .archive import open_zip, read_member
from .source import Member, Pair

MAX_MEMBER_BYTES = 64 * 2**20
MAX_PIXELS = 64_000_000  # the largest ISIC 2018 images have about 30 million
LABEL_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F", "RGB")
ALPHA_MODES = ("LA", "RGBA", "P", "PA")

# Each worker process keeps its archives open across the images it decodes.
_open_archives: dict[Path, zipfile.ZipFile] = {}


def forget_archives() -> None:
    """Drop cached archive handles: a forked worker must not share its parent's file offsets."""
    for archive in _open_archives.values():
        archive.close()
    _open_archives.clear()


def read_file(path: Path, limit: int) -> bytes:
    """A plain file's bytes, refused before reading when it is larger than `limit`."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise UserError(
                f"{path} is {size:,} bytes, more than the {limit:,} allowed for one image; "
                "it is not an image of this dataset"
            )
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror})") from None


def open_image(member: Member) -> Image.Image:
    """The member's image with only its header parsed; pixels are decoded on first use."""
    if member.archive is None:
        payload = read_file(Path(member.name), MAX_MEMBER_BYTES)
    else:
        if member.archive not in _open_archives:
            _open_archives[member.archive] = open_zip(member.archive)
        payload = read_member(_open_archives[member.archive], member.name, MAX_MEMBER_BYTES)
    try:
        image = Image.open(io.BytesIO(payload))
    except Exception as error:  # Pillow raises many types on hostile input, bomb errors included
        raise UserError(f"cannot decode {member}: {error}") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise UserError(
            f"{member} declares {width}x{height} pixels, more than the limit of {MAX_PIXELS:,}; "
            "the file is damaged or not an image of this dataset"
        )
    return image


def above_half_max(values: np.ndarray) -> np.ndarray:
    return values > values.max(initial=0) / 2


def binary_mask(mask: Image.Image, member: Member) -> np.ndarray:
    """The mask's foreground as a boolean array, by the rule in the module's docstring."""
    if mask.mode == "1":
        return np.asarray(mask, dtype=bool)
    if mask.mode in LABEL_MODES:
        return above_half_max(np.asarray(mask.convert("L") if mask.mode == "RGB" else mask))
    if mask.mode in ALPHA_MODES:
        rgba = mask.convert("LA") if mask.mode == "LA" else mask.convert("RGBA")
        colour = np.asarray(rgba.convert("L"))
        if colour.min() != colour.max():
            return above_half_max(colour)
        return above_half_max(np.asarray(rgba.getchannel("A")))
    raise UserError(
        f"mask {member} has the image mode {mask.mode}, which has no mask rule; "
        f"use one of {', '.join(LABEL_MODES + ALPHA_MODES)} (docs/data.md)"
    )


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
        pixels = np.asarray(image.convert("L").resize((size, size), Image.Resampling.BOX))
        label = Image.fromarray(binary_mask(mask, pair.mask).astype(np.uint8))
        label = np.asarray(label.resize((size, size), Image.Resampling.NEAREST))
    except UserError:
        raise
    except Exception as error:  # truncated or malformed pixel data, in any of Pillow's decoders
        raise UserError(f"cannot decode {pair.image} or its mask: {error}") from None
    return pixels, label.astype(np.uint8)
