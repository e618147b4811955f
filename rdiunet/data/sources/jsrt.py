"""miniJSRT Segmentation01: 247 chest X-rays, 256x256 PNG, with binary lung-field labels.

Layout: Segmentation01/{train,test}/{org,label}/N.png; the official split is 199 train, 48 test.
One image per patient, so the image id is its own group.
"""

import re
from pathlib import Path

from rdiunet.data.archive import open_zip
from rdiunet.data.download import Remote, fetch
from rdiunet.errors import UserError

from . import Member, Pair, match_pairs

SIZE = 256
ARCHIVE = "Segmentation01.zip"
REMOTE = Remote(
    ARCHIVE,
    ("http://imgcom.jsrt.or.jp/imgcom/wp-content/uploads/2018/11/Segmentation01.zip",),
    sha256="ab1f26a910bc18eae170928e9f2d98512cc4dc8949bf6cd38b98a93398714fcf",
)
MEMBER = re.compile(r"(?:^|/)(train|test)/(org|label)/([^/]+)\.png$")
OFFICIAL = {"train": 0, "test": 2}


def download(out: Path, mirrors: tuple[str, ...] = (), official_splits: bool = False) -> list[Path]:
    return [fetch(REMOTE, out, mirrors)]


def archives(raw: Path) -> list[Path]:
    if not (raw / ARCHIVE).exists():
        raise UserError(f"no jsrt data in {raw}: expected {ARCHIVE} (rdiunet download --dataset jsrt)")
    return [raw / ARCHIVE]


def pairs(raw: Path, workdir: Path) -> list[Pair]:
    (source,) = archives(raw)
    images, masks = {}, {}
    with open_zip(source) as archive:
        for name in archive.namelist():
            if found := MEMBER.search(name):
                part, kind, stem = found.groups()
                (images if kind == "org" else masks)[(part, stem)] = Member(source, name)
    if not images:
        raise UserError(f"{source} holds no {{train,test}}/org/N.png images; is it {ARCHIVE}?")
    return [
        Pair(
            id=f"{part}/{stem}",
            group=f"{part}/{stem}",
            image=images[(part, stem)],
            mask=masks[(part, stem)],
            official=OFFICIAL[part],
        )
        for part, stem in match_pairs(images, masks, str(source))
    ]
