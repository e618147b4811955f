"""miniJSRT Segmentation01: 247 chest X-rays, 256x256 PNG, with binary lung-field labels.

Layout: Segmentation01/{train,test}/{org,label}/N.png; the official split is 199 train, 48 test.
One image per patient, so the image id is its own group.
"""

import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from rdiunet.data.archive import open_zip
from rdiunet.data.download import Remote, fetch
from rdiunet.data.source import Member, Pair, Source, Terms, add_member, match_pairs
from rdiunet.data.synthetic import ellipse, encode, image_rng, smooth_noise, to_uint8, write_zip
from rdiunet.errors import UserError

ARCHIVE = "Segmentation01.zip"
REMOTE = Remote(
    ARCHIVE,
    ("http://imgcom.jsrt.or.jp/imgcom/wp-content/uploads/2018/11/Segmentation01.zip",),
    sha256="ab1f26a910bc18eae170928e9f2d98512cc4dc8949bf6cd38b98a93398714fcf",
)
MEMBER = re.compile(r"(?:^|/)(train|test)/(org|label)/([^/]+)\.png$")
OFFICIAL = {"train": 0, "test": 2}


def download(
    out: Path, mirrors: tuple[str, ...] = (), official_splits: bool = False, allow_mismatch: bool = False
) -> list[Path]:
    return [fetch(REMOTE, out, mirrors, allow_mismatch)]


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
                add_member(images if kind == "org" else masks, (part, stem), Member(source, name))
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


# --- synthetic stand-in ---------------------------------------------------------------------------

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
    target = out / ARCHIVE
    write_zip(target, members)
    return [target]


SOURCE = Source(
    name="jsrt",
    size=256,
    keep_empty=True,
    synthetic_n=60,
    download=download,
    archives=archives,
    pairs=pairs,
    synthesize=synth_jsrt,
    terms=Terms(
        title="JSRT database: miniJSRT Segmentation01 (Japanese Society of Radiological Technology)",
        url="http://imgcom.jsrt.or.jp/minijsrtdb/",
        licence="JSRT terms of use (no open licence)",
        terms="Free for research and education on the society's terms, stated on its pages; cite "
        "Shiraishi et al. (2000) in any publication. The suite never redistributes the images.",
        cite="Shiraishi J. et al., Development of a digital image database for chest radiographs with and "
        "without a lung nodule, AJR 174(1):71-74, 2000, doi:10.2214/ajr.174.1.1740071",
    ),
)
