"""Prepare speed on ISIC-sized JPEGs: rdiunet's decoder against a plain full decode + resize.

A synthetic ISIC training set with realistic image sizes (widths 1500-4000 px, as in the real
set's 1022-6748) is written once into benchmarks/out/, then decoded to 128x128 grayscale by
(a) the plain way: full RGB decode, convert, area resize, one process;
(b) rdiunet.data.prepare.decode_all with one worker: reduced-scale JPEG decode (`draft`);
(c) the same with two workers (what `rdiunet prepare` uses on a 2-core machine).

    python benchmarks/prepare.py [--n 48] [--workers 2]
"""

import argparse
import io
import platform
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from rdiunet.data.prepare import decode_all
from rdiunet.data.sources import isic
from rdiunet.data.synthetic import synthesize

OUT = Path(__file__).parent / "out" / "prepare"


def plain_decode(pairs, size: int):
    """The baseline: decode every JPEG at full resolution, then convert and resize."""
    archives = {}
    for pair in pairs:
        for member in (pair.image, pair.mask):
            archives.setdefault(member.archive, zipfile.ZipFile(member.archive))
        image = Image.open(io.BytesIO(archives[pair.image.archive].read(pair.image.name)))
        mask = Image.open(io.BytesIO(archives[pair.mask.archive].read(pair.mask.name)))
        np.asarray(image.convert("L").resize((size, size), Image.Resampling.BOX))
        np.asarray(mask.convert("L").resize((size, size), Image.Resampling.NEAREST))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    raw = OUT / f"isic-{args.n}"
    if not (raw / "SYNTHETIC.json").exists():
        print(f"writing {args.n} synthetic ISIC images to {raw} (once)...")
        synthesize("isic", raw, n=args.n, seed=0, widths=(1500, 4000))
    pairs = isic.pairs(raw, raw)
    megapixels = []
    with zipfile.ZipFile(pairs[0].image.archive) as archive:
        for pair in pairs:
            megapixels.append(np.prod(Image.open(io.BytesIO(archive.read(pair.image.name))).size) / 1e6)

    def rate(run) -> float:
        start = time.perf_counter()
        run()
        return len(pairs) / (time.perf_counter() - start)

    plain = rate(lambda: plain_decode(pairs, 128))
    draft = rate(lambda: decode_all(pairs, 128, workers=1))
    parallel = rate(lambda: decode_all(pairs, 128, workers=args.workers))
    low, high, mean = min(megapixels), max(megapixels), np.mean(megapixels)
    print(
        f"# {platform.machine()}, {len(pairs)} JPEGs of {low:.1f}-{high:.1f} MP "
        f"(mean {mean:.1f}), to 128x128 grayscale"
    )
    print("| method | images/s | speed-up |")
    print("|---|---|---|")
    for label, value in (
        ("plain full decode + resize, 1 process", plain),
        ("rdiunet, reduced-scale decode, 1 worker", draft),
        (f"rdiunet, reduced-scale decode, {args.workers} workers", parallel),
    ):
        print(f"| {label} | {value:.1f} | {value / plain:.1f}x |")


if __name__ == "__main__":
    main()
