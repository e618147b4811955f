"""Synthetic stand-ins for the three datasets, written in each source's own raw format.

The real archives cannot be fetched everywhere (CI, laptops without credentials), so the whole
pipeline also runs on stand-ins that `prepare` reads through exactly the same code path. Each
image carries the modality's learnable structure:

- nerve: speckled ultrasound tissue layers with a hyperechoic, ringed nerve cross-section (or none);
- jsrt: a chest radiograph with dark lung fields beside a bright mediastinum, ribs over the lungs;
- isic: skin with a pigmented lesion of irregular outline, RGB, in varying image sizes.

Output is a pure function of (dataset, n, seed): every image draws from its own seeded generator,
and zip members carry a fixed timestamp, so the same arguments give byte-identical archives. A
SYNTHETIC.json marker beside the archives tells `prepare` (and through it every report) that the
data is synthetic.
"""

import csv
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from rdiunet.errors import UserError
from rdiunet.fileio import atomic_path, write_json

from .sources import isic, jsrt, nerve

MARKER = "SYNTHETIC.json"
ZIP_TIME = (2018, 1, 1, 0, 0, 0)
DEFAULT_N = {"nerve": 120, "jsrt": 60, "isic": 80}


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


# --- nerve: ultrasound of the brachial plexus ----------------------------------------------------

NERVE_SHAPE = (420, 580)  # height, width


def nerve_image(rng: np.random.Generator, subject: np.random.Generator, has_nerve: bool):
    """`subject` draws what all images of one subject share (tissue layers, nerve position)."""
    h, w = NERVE_SHAPE
    # Tissue: horizontal layers whose depth profile is the subject's, bent a little per image.
    depth = np.linspace(0, 1, h)[:, None]
    layers = sum(
        subject.uniform(15, 35) * np.sin(2 * np.pi * (depth * subject.uniform(1.5, 4) + subject.uniform()))
        for _ in range(3)
    )
    tissue = 90 + layers + 12 * smooth_noise(rng, (h, w), 25) - 40 * depth
    mask = np.zeros((h, w), dtype=bool)
    if has_nerve:
        centre = (
            subject.uniform(0.35, 0.65) * h + rng.normal(0, 15),
            subject.uniform(0.3, 0.7) * w + rng.normal(0, 20),
        )
        axes = (rng.uniform(50, 70), rng.uniform(70, 100))
        radius = ellipse((h, w), centre, axes, rng.uniform(-0.4, 0.4))
        mask = radius <= 1
        # Hyperechoic epineurium ring around a honeycomb of darker fascicles.
        ring = np.exp(-(((radius - 0.92) / 0.1) ** 2))
        fascicles = smooth_noise(rng, (h, w), 4)
        tissue = tissue + mask * (45 + 20 * fascicles) + 70 * ring
    # Speckle: multiplicative Rayleigh noise with a grain of a few pixels.
    speckle = ndimage.uniform_filter(rng.rayleigh(1.0, (h, w)), 3) / np.sqrt(np.pi / 2)
    return to_uint8(tissue * speckle), mask


def kaggle_rle(mask: np.ndarray) -> str:
    """Kaggle's run-length encoding: 1-based pixel numbers counted down columns, then across."""
    flat = np.concatenate([[0], mask.T.flatten().astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat)) + 1
    starts, ends = edges[::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends, strict=True))


def synth_nerve(out: Path, n: int, seed: int) -> list[Path]:
    subjects = int(np.clip(n // 10, 3, 47))
    master = np.random.default_rng([seed, 0])
    # About 40% of the real images show no nerve; keep a similar share (prepare drops them).
    owners = np.sort(master.integers(0, subjects, n))
    owners[:subjects] = np.arange(subjects)  # every subject has at least one image
    owners.sort()
    members, rows, count = [], [], {}
    for index, subject in enumerate(owners):
        count[subject] = count.get(subject, 0) + 1
        rng = image_rng(seed, "nerve", index)
        anatomy = np.random.default_rng([seed, 1, int(subject)])
        image, mask = nerve_image(rng, anatomy, has_nerve=rng.uniform() > 0.3)
        stem = f"{subject + 1}_{count[subject]}"
        members.append((f"train/{stem}.tif", encode(image, "TIFF")))
        members.append((f"train/{stem}_mask.tif", encode(to_uint8(mask * 255.0), "TIFF")))
        rows.append((subject + 1, count[subject], kaggle_rle(mask)))
    train = io.BytesIO()
    fill_zip(train, members)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["subject", "img", "pixels"])
    writer.writerows(rows)
    target = out / nerve.ARCHIVE
    write_zip(
        target,
        [(nerve.TRAIN_ARCHIVE, train.getvalue()), ("train_masks.csv", table.getvalue().encode())],
        compress=False,
    )
    return [target]


# --- jsrt: chest radiographs ---------------------------------------------------------------------

JSRT_SIDE = 256


def jsrt_image(rng: np.random.Generator):
    s = JSRT_SIDE
    yy, xx = np.mgrid[:s, :s] / s
    # Body: a bright, soft-edged torso; darker air outside it.
    torso = ellipse((s, s), (0.55 * s, 0.5 * s), (0.62 * s, 0.47 * s), 0)
    body = 35 + 150 / (1 + np.exp((torso - 1) * 12))
    lungs = np.zeros((s, s), dtype=bool)
    top, bottom = rng.uniform(0.12, 0.2), rng.uniform(0.72, 0.85)
    for side, width in ((-1, rng.uniform(0.15, 0.19)), (1, rng.uniform(0.13, 0.17))):
        centre_x = 0.5 + side * rng.uniform(0.17, 0.21)
        # A lung field: rounded apex, widening downwards, flat-ish diaphragm at the bottom.
        t = np.clip((yy - top) / (bottom - top), 0, 1)
        half_width = width * np.sqrt(np.clip(t, 0, 1)) * (1.1 - 0.25 * t)
        inside = (yy > top) & (yy < bottom) & (np.abs(xx - centre_x - side * 0.03 * t) < half_width)
        lungs |= inside
    lungs = ndimage.binary_opening(lungs, iterations=2)
    soft = ndimage.gaussian_filter(lungs.astype(float), 2)
    ribs = np.sin(2 * np.pi * (yy * rng.uniform(9, 12) + 0.15 * np.cos(np.pi * (xx - 0.5) * 3)))
    spine = np.exp(-(((xx - 0.5) / 0.05) ** 2)) * (yy > 0.05)
    image = body - 95 * soft + 12 * ribs * soft + 30 * spine + 6 * smooth_noise(rng, (s, s), 6)
    image += rng.normal(0, 3, (s, s))
    return to_uint8(image), lungs


def synth_jsrt(out: Path, n: int, seed: int) -> list[Path]:
    n_test = max(1, round(n * 48 / 247))
    members = []
    for index in range(n):
        part, number = ("train", index) if index < n - n_test else ("test", index - (n - n_test))
        image, mask = jsrt_image(image_rng(seed, "jsrt", index))
        members.append((f"Segmentation01/{part}/org/{number:03d}.png", encode(image, "PNG")))
        members.append(
            (f"Segmentation01/{part}/label/{number:03d}.png", encode(to_uint8(mask * 255.0), "PNG"))
        )
    target = out / jsrt.ARCHIVE
    write_zip(target, members)
    return [target]


# --- isic: dermoscopy ----------------------------------------------------------------------------


def isic_image(rng: np.random.Generator, width: int):
    h, w = int(width * rng.uniform(0.66, 0.8)), width
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    skin_tone = np.array([rng.uniform(200, 235), rng.uniform(150, 185), rng.uniform(120, 160)])
    shade = 8 * smooth_noise(rng, (h // 8, w // 8), 6)
    shade = ndimage.zoom(shade, (h / shade.shape[0], w / shade.shape[1]), order=1)
    # Dermoscopes show a dark circular vignette at the corners.
    vignette = np.clip(1.25 - np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) * 0.45, 0.3, 1)
    # Lesion: a star-shaped outline r(theta) with a few random harmonics.
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    r0 = min(h, w) * rng.uniform(0.18, 0.3)
    theta = np.arctan2(yy - cy, xx - cx)
    outline = np.ones_like(theta)
    for k in range(2, 7):
        outline += rng.uniform(0, 0.12 / k**0.5) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = np.hypot(yy - cy, xx - cx) / (r0 * outline)
    mask = radius <= 1
    edge = 1 / (1 + np.exp((radius - 1) * 25))
    pigment = np.array([rng.uniform(90, 140), rng.uniform(50, 80), rng.uniform(30, 60)])
    blotches = 0.8 + 0.2 * smooth_noise(rng, (h // 4, w // 4), 3)
    blotches = ndimage.zoom(blotches, (h / blotches.shape[0], w / blotches.shape[1]), order=1)
    colour = (skin_tone + shade[..., None]) * (1 - edge[..., None]) + (
        pigment * blotches[..., None] * edge[..., None]
    )
    image = colour * vignette[..., None] + rng.normal(0, 4, (h, w, 1))
    return to_uint8(image), mask


ISIC_WIDTHS = (600, 1024)


def synth_isic(
    out: Path, n: int, seed: int, official_splits: bool = False, widths: tuple[int, int] = ISIC_WIDTHS
) -> list[Path]:
    counts = [n] + ([max(2, n // 10), max(2, n // 5)] if official_splits else [])
    written, first_id = [], 0
    for (_, inputs, truth, *_), count in zip(isic.PARTS, counts, strict=False):
        images, masks = [], []
        for index in range(first_id, first_id + count):
            rng = image_rng(seed, "isic", index)
            image, mask = isic_image(rng, int(rng.integers(widths[0], widths[1] + 1)))
            images.append((f"{inputs}/ISIC_{index:07d}.jpg", encode(image, "JPEG", quality=90)))
            masks.append(
                (f"{truth}/ISIC_{index:07d}_segmentation.png", encode(to_uint8(mask * 255.0), "PNG"))
            )
        first_id += count
        # JPEGs do not shrink under deflate; store them as the real archive does.
        write_zip(out / f"{inputs}.zip", images, compress=False)
        write_zip(out / f"{truth}.zip", masks)
        written += [out / f"{inputs}.zip", out / f"{truth}.zip"]
    return written


WRITERS: dict[str, Callable[..., list[Path]]] = {"nerve": synth_nerve, "jsrt": synth_jsrt, "isic": synth_isic}


def synthesize(dataset: str, out: Path, n: int | None = None, seed: int = 0, **options) -> list[Path]:
    """Write the stand-in archives for `dataset` into `out`, plus the SYNTHETIC.json marker."""
    if dataset not in WRITERS:
        raise UserError(f"unknown dataset '{dataset}'; known datasets: {', '.join(WRITERS)}")
    n = DEFAULT_N[dataset] if n is None else n
    if n < 3:
        raise UserError(f"--n must be at least 3 (one image per split), got {n}")
    out.mkdir(parents=True, exist_ok=True)
    written = WRITERS[dataset](out, n, seed, **options)
    write_json(out / MARKER, {"dataset": dataset, "n": n, "seed": seed, "synthetic": True, **options})
    return written
