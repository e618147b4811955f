"""Synthetic stand-ins for the datasets, written in each source's own raw format.

The real archives cannot be fetched everywhere (CI, laptops without credentials), so the whole
pipeline also runs on stand-ins that `prepare` reads through exactly the same code path. Each
source module writes its own stand-in (`Source.synthesize`), with the modality's learnable
structure; this module holds what they share (seeded generators, noise, shapes, image and zip
encoding) and the entry point.

Output is a pure function of (dataset, n, seed): every image draws from its own seeded generator,
and zip members carry a fixed timestamp, so the same arguments give byte-identical archives. A
SYNTHETIC.json marker beside the archives tells `prepare` (and through it every report) that the
data is synthetic.
"""

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from rdiunet.errors import UserError
from rdiunet.fileio import atomic_path, write_json

from . import sources

MARKER = "SYNTHETIC.json"
ZIP_TIME = (2018, 1, 1, 0, 0, 0)


def image_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, sum(map(ord, dataset)), index])


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with correlation length `sigma` pixels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def ellipse(shape, centre, axes, angle: float) -> np.ndarray:
    """Normalised radius (1 on the boundary) of a rotated ellipse at every pixel."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((u / axes[1]) ** 2 + (v / axes[0]) ** 2)


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def fill_zip(file, members: list[tuple[str, bytes]], compress: bool = True) -> None:
    """Write a zip with fixed timestamps and member order into a path or file object."""
    with zipfile.ZipFile(file, "w") as archive:
        for name, payload in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, payload)


def write_zip(target: Path, members: list[tuple[str, bytes]], compress: bool = True) -> None:
    with atomic_path(target) as tmp:
        fill_zip(tmp, members, compress)


def synthesize(dataset: str, out: Path, n: int | None = None, seed: int = 0, **options) -> list[Path]:
    """Write the stand-in archives for `dataset` into `out`, plus the SYNTHETIC.json marker."""
    source = sources.get(dataset)
    n = source.synthetic_n if n is None else n
    if n < 3:
        raise UserError(f"--n must be at least 3 (one image per split), got {n}")
    out.mkdir(parents=True, exist_ok=True)
    written = source.synthesize(out, n, seed, **options)
    write_json(out / MARKER, {"dataset": dataset, "n": n, "seed": seed, "synthetic": True, **options})
    return written
