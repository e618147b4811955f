"""Kaggle ultrasound nerve segmentation (brachial plexus): 580x420 8-bit TIF pairs from 47 subjects.

The competition zip holds train.zip with train/{subject}_{n}.tif and {subject}_{n}_mask.tif, plus
test.zip and train_masks.csv. Images of one subject never straddle two splits.
"""

import re
from pathlib import Path

from rdiunet.data.archive import open_zip, safe_extract
from rdiunet.data.download import Remote, fetch, fetch_kaggle_competition
from rdiunet.errors import UserError

from . import Member, Pair, match_pairs

SIZE = 128
COMPETITION = "ultrasound-nerve-segmentation"
ARCHIVE = f"{COMPETITION}.zip"
TRAIN_ARCHIVE = "train.zip"
IMAGE = re.compile(r"(?:^|/)(\d+)_(\d+)\.tif$")
MASK = re.compile(r"(?:^|/)(\d+)_(\d+)_mask\.tif$")


def download(out: Path, mirrors: tuple[str, ...] = (), official_splits: bool = False) -> list[Path]:
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
                masks[found.groups()] = Member(source, name)
            elif found := IMAGE.search(name):
                images[found.groups()] = Member(source, name)
    if not images:
        raise UserError(f"{source} holds no {{subject}}_{{n}}.tif images")
    return [
        Pair(id=f"{subject}_{n}", group=subject, image=images[(subject, n)], mask=masks[(subject, n)])
        for subject, n in sorted(
            match_pairs(images, masks, str(source)), key=lambda k: (int(k[0]), int(k[1]))
        )
    ]
