"""Kaggle ultrasound nerve segmentation (brachial plexus): 580x420 8-bit TIF pairs from 47 subjects.

The competition zip holds train.zip with train/{subject}_{n}.tif and {subject}_{n}_mask.tif, plus
test.zip and train_masks.csv. Images of one subject never straddle two splits.
"""

import csv
import io
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from rdiunet.data.archive import open_zip, safe_extract
from rdiunet.data.download import Remote, fetch, fetch_kaggle_competition
from rdiunet.data.source import Member, Pair, Source, Terms, add_member, match_pairs
from rdiunet.data.synthetic import ellipse, encode, fill_zip, image_rng, smooth_noise, to_uint8, write_zip
from rdiunet.errors import UserError

COMPETITION = "ultrasound-nerve-segmentation"
ARCHIVE = f"{COMPETITION}.zip"
TRAIN_ARCHIVE = "train.zip"
IMAGE = re.compile(r"(?:^|/)(\d+)_(\d+)\.tif$")
MASK = re.compile(r"(?:^|/)(\d+)_(\d+)_mask\.tif$")


def download(
    out: Path, mirrors: tuple[str, ...] = (), official_splits: bool = False, allow_mismatch: bool = False
) -> list[Path]:
    if mirrors:
        return [fetch(Remote(ARCHIVE, ()), out, mirrors)]
    return [fetch_kaggle_competition(COMPETITION, out / ARCHIVE)]


def archives(raw: Path) -> list[Path]:
    """The raw inputs prepare reads: the competition zip, or train.zip placed by hand."""
    for name in (ARCHIVE, TRAIN_ARCHIVE):
        if (raw / name).exists():
            return [raw / name]
    raise UserError(
        f"no nerve data in {raw}: expected {ARCHIVE} (kaggle competitions download -c "
        f"{COMPETITION}) or {TRAIN_ARCHIVE} from it"
    )


def pairs(raw: Path, workdir: Path) -> list[Pair]:
    """Image/mask pairs of the training set; train.zip is first extracted from the competition zip."""
    (source,) = archives(raw)
    if source.name == ARCHIVE:
        with open_zip(source) as outer:
            inner = [n for n in outer.namelist() if n.rsplit("/", 1)[-1] == TRAIN_ARCHIVE]
        if not inner:
            raise UserError(f"{source} holds no {TRAIN_ARCHIVE}; is it the {COMPETITION} download?")
        source = safe_extract(source, workdir / "nerve", members=inner[:1]) / inner[0]
    images, masks = {}, {}
    with open_zip(source) as train:
        for name in train.namelist():
            if found := MASK.search(name):
                add_member(masks, found.groups(), Member(source, name))
            elif found := IMAGE.search(name):
                add_member(images, found.groups(), Member(source, name))
    if not images:
        raise UserError(f"{source} holds no {{subject}}_{{n}}.tif images")
    return [
        Pair(id=f"{subject}_{n}", group=subject, image=images[(subject, n)], mask=masks[(subject, n)])
        for subject, n in sorted(
            match_pairs(images, masks, str(source)), key=lambda k: (int(k[0]), int(k[1]))
        )
    ]


# --- synthetic stand-in ---------------------------------------------------------------------------

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
    subjects = int(np.clip(n // 5, 3, 47))
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
    target = out / ARCHIVE
    write_zip(
        target,
        [(TRAIN_ARCHIVE, train.getvalue()), ("train_masks.csv", table.getvalue().encode())],
        compress=False,
    )
    return [target]


SOURCE = Source(
    name="nerve",
    size=128,
    # Ultrasound frames without a nerve are most of the set; the paper's 2,326 images are (almost
    # exactly) the 2,323 with a non-empty mask, so empty ones are dropped unless asked for.
    keep_empty=False,
    synthetic_n=120,
    download=download,
    archives=archives,
    pairs=pairs,
    synthesize=synth_nerve,
    terms=Terms(
        title="Ultrasound Nerve Segmentation (Kaggle competition data, 2016)",
        url="https://www.kaggle.com/competitions/ultrasound-nerve-segmentation",
        licence="Kaggle competition rules (no open licence)",
        terms="Governed by the competition's rules, which each user accepts on its rules page before the "
        "download; read them there. Assume non-commercial research use only; the suite never "
        "redistributes the data: everyone downloads it with their own Kaggle account.",
        cite="Kaggle, Ultrasound Nerve Segmentation (competition data), 2016, "
        "https://www.kaggle.com/competitions/ultrasound-nerve-segmentation",
    ),
)
