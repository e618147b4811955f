"""How each speed protocol's time grows with the image, beside the paper's growth.

The paper's ms per image grows 3.3-3.6x from 128² (nerve, ISIC) to 256² (JSRT): close to the 4x of
the arithmetic, so it was not a launch-bound batch-1 timing, which barely grows on a GPU. A
protocol whose growth resembles the paper's is a plausible reading of how the paper timed.
"""

import pandas as pd

from rdiunet import paper
from rdiunet.readings import PROTOCOLS

from .collect import Collection, Study

SMALL, LARGE = 128, 256
MARGIN = 0.10  # a growth within 10% of the paper's range resembles it


def paper_growth() -> tuple[float, float]:
    """The lowest and highest growth of the paper's ms from a 128² dataset to JSRT (256²)."""
    ratios = [
        paper.TABLE1[("jsrt", model)]["ms"] / paper.TABLE1[(small, model)]["ms"]
        for model in ("unet", "rdiunet")
        for small in ("nerve", "isic")
    ]
    return min(ratios), max(ratios)


def growth_table(collection: Collection, study: Study) -> pd.DataFrame:
    """Per protocol and headline model: ms per image at the smaller and larger image size measured
    (the headline precision), their ratio, and whether it resembles the paper's."""
    low, high = paper_growth()
    headline = study.plan.headline
    sizes = (
        collection.benches.set_index(["dataset", "model"])["size"] if len(collection.benches) else pd.Series()
    )
    rows = []
    for protocol in PROTOCOLS:
        for model in (headline.proposed, headline.baseline):
            speeds = collection.speeds
            mine = speeds[
                (speeds.model == model)
                & (speeds.protocol == protocol)
                & (speeds.precision == headline.precision)
            ]
            by_size = {}
            for row in mine.itertuples():
                size = sizes.get((row.dataset, row.model))
                if size is not None and pd.notna(row.ms):
                    by_size.setdefault(int(size), []).append(row.ms)
            row = {"protocol": protocol, "model": model, "paper_low": low, "paper_high": high}
            if len(by_size) < 2:
                why = (
                    "not measured on this device"
                    if mine.ms.isna().all() and len(mine)
                    else "one image size only"
                )
                rows.append({**row, "note": why})
                continue
            small, large = min(by_size), max(by_size)
            ms_small, ms_large = (sum(by_size[s]) / len(by_size[s]) for s in (small, large))
            ratio = ms_large / ms_small
            pixels = (large / small) ** 2
            resembles = (small, large) == (SMALL, LARGE) and low * (1 - MARGIN) <= ratio <= high * (
                1 + MARGIN
            )
            rows.append(
                {
                    **row,
                    "sizes": f"{small}² → {large}²",
                    "ms_small": ms_small,
                    "ms_large": ms_large,
                    "growth": ratio,
                    "pixels": pixels,
                    "resembles_paper": resembles,
                    "note": "" if (small, large) == (SMALL, LARGE) else "not the paper's sizes",
                }
            )
    return pd.DataFrame(rows)
