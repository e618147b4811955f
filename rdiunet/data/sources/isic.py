"""ISIC 2018 Task 1 (lesion boundary segmentation, CC-0): RGB dermoscopy JPEGs of varying size
with ISIC_<id>_segmentation.png masks (0/255). The training set is 2,594 images; the official
validation (100) and test (1,000) sets are used as such when their archives are present.
"""

import re
from pathlib import Path

from rdiunet.data.archive import open_zip
from rdiunet.data.download import Remote, fetch
from rdiunet.errors import UserError

from . import Member, Pair, match_pairs

SIZE = 128
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


def download(out: Path, mirrors: tuple[str, ...] = (), official_splits: bool = False) -> list[Path]:
    parts = PARTS if official_splits else PARTS[:1]
    fetched = []
    for _, inputs, truth, inputs_sha, truth_sha in parts:
        fetched.append(fetch(remote(truth, truth_sha), out, mirrors))
        fetched.append(fetch(remote(inputs, inputs_sha), out, mirrors))
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
                        into[match.group(1)] = Member(archive_path, name)
        if not images:
            raise UserError(f"{raw / inputs}.zip holds no ISIC_<id>.jpg images")
        found += [
            Pair(id=f"ISIC_{key}", group=f"ISIC_{key}", image=images[key], mask=masks[key], official=official)
            for key in match_pairs(images, masks, f"{raw / inputs}.zip")
        ]
    return found
