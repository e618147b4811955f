"""ISIC 2018 Task 1 (lesion boundary segmentation, CC-0): RGB dermoscopy JPEGs of varying size
with ISIC_<id>_segmentation.png masks (0/255). The training set is 2,594 images; the official
validation (100) and test (1,000) sets are used as such when their archives are present.
"""

import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from rdiunet.data.archive import open_zip
from rdiunet.data.download import Remote, fetch
from rdiunet.data.source import Member, Pair, Source, Terms, add_member, match_pairs
from rdiunet.data.synthetic import encode, image_rng, smooth_noise, to_uint8, write_zip
from rdiunet.errors import UserError

HOSTS = (
    "https://isic-archive.s3.amazonaws.com/challenges/2018",
    "https://isic-challenge-data.s3.amazonaws.com/2018",
)
# (official split, input archive, ground-truth archive, sha256 of each). The checksums were
# computed by a third party: a mismatch is a loud warning, not an error.
PARTS = (
    (
        None,
        "ISIC2018_Task1-2_Training_Input",
        "ISIC2018_Task1_Training_GroundTruth",
        "80f98572347a2d7a376227fa9eb2e4f7459d317cb619865b8b9910c81446675f",
        "99f8b2bb3c4d6af483362010715f7e7d5d122d9f6c02cac0e0d15bef77c7604c",
    ),
    (
        1,
        "ISIC2018_Task1-2_Validation_Input",
        "ISIC2018_Task1_Validation_GroundTruth",
        "0ea920fcfe512d12a6e620b50b50233c059f67b10146e1479c82be58ff15a797",
        "f6911e9c0a64e6d687dd3ca466ca927dd5e82145cb2163b7a1e5b37d7a716285",
    ),
    (
        2,
        "ISIC2018_Task1-2_Test_Input",
        "ISIC2018_Task1_Test_GroundTruth",
        "e59ae1f69f4ed16f09db2cb1d76c2a828487b63d28f6ab85997f5616869b127d",
        "2e8f6edce454a5bdee52485e39f92bd6eddf357e81f39018d05512175238ef82",
    ),
)
IMAGE = re.compile(r"(?:^|/)ISIC_(\d+)\.jpg$", re.IGNORECASE)
MASK = re.compile(r"(?:^|/)ISIC_(\d+)_segmentation\.png$", re.IGNORECASE)


def remote(stem: str, sha256: str) -> Remote:
    name = f"{stem}.zip"
    return Remote(name, tuple(f"{host}/{name}" for host in HOSTS), sha256, trusted=False)


def download(
    out: Path, mirrors: tuple[str, ...] = (), official_splits: bool = False, allow_mismatch: bool = False
) -> list[Path]:
    parts = PARTS if official_splits else PARTS[:1]
    fetched = []
    for _, inputs, truth, inputs_sha, truth_sha in parts:
        fetched.append(fetch(remote(truth, truth_sha), out, mirrors, allow_mismatch))
        fetched.append(fetch(remote(inputs, inputs_sha), out, mirrors, allow_mismatch))
    return fetched


def present_parts(raw: Path) -> list[tuple]:
    """The training part, plus each official part whose two archives are both present."""
    parts = [p for p in PARTS if (raw / f"{p[1]}.zip").exists() and (raw / f"{p[2]}.zip").exists()]
    if not parts or parts[0][0] is not None:
        raise UserError(
            f"no isic data in {raw}: expected {PARTS[0][1]}.zip and {PARTS[0][2]}.zip "
            "(rdiunet download --dataset isic)"
        )
    return parts


def archives(raw: Path) -> list[Path]:
    return [raw / f"{stem}.zip" for part in present_parts(raw) for stem in part[1:3]]


def pairs(raw: Path, workdir: Path) -> list[Pair]:
    found = []
    for official, inputs, truth, *_ in present_parts(raw):
        images, masks = {}, {}
        for stem, pattern, into in ((inputs, IMAGE, images), (truth, MASK, masks)):
            archive_path = raw / f"{stem}.zip"
            with open_zip(archive_path) as archive:
                for name in archive.namelist():
                    if match := pattern.search(name):
                        add_member(into, match.group(1), Member(archive_path, name))
        if not images:
            raise UserError(f"{raw / inputs}.zip holds no ISIC_<id>.jpg images")
        found += [
            Pair(id=f"ISIC_{key}", group=f"ISIC_{key}", image=images[key], mask=masks[key], official=official)
            for key in match_pairs(images, masks, f"{raw / inputs}.zip")
        ]
    return found


# --- synthetic stand-in ---------------------------------------------------------------------------


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
    for (_, inputs, truth, *_), count in zip(PARTS, counts, strict=False):
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


SOURCE = Source(
    name="isic",
    size=128,
    keep_empty=True,
    synthetic_n=80,
    download=download,
    archives=archives,
    pairs=pairs,
    synthesize=synth_isic,
    terms=Terms(
        title="ISIC 2018 Challenge, Task 1: lesion boundary segmentation",
        url="https://challenge.isic-archive.com/data/#2018",
        licence="CC BY-NC 4.0",
        terms="Creative Commons Attribution-NonCommercial 4.0: non-commercial use, with attribution to "
        "the challenge and to HAM10000.",
        cite="Codella N. et al., Skin Lesion Analysis Toward Melanoma Detection 2018 (ISIC), "
        "arXiv:1902.03368, 2019; Tschandl P., Rosendahl C., Kittler H., The HAM10000 dataset, "
        "Scientific Data 5:180161, 2018, doi:10.1038/sdata.2018.161",
    ),
    official_splits=True,
)
