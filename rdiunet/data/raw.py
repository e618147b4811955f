"""The raw folder of a dataset (data/raw/{dataset}/): archives fetched from the source or written as
synthetic stand-ins, and manifest.json beside them, the file the workflow's prepare step depends on."""

from pathlib import Path

from rdiunet.errors import UserError
from rdiunet.fileio import write_json

from . import sources
from .synthetic import MARKER
from .synthetic import synthesize as write_stand_in


def write_manifest(out: Path, paths: list[Path], synthetic: bool) -> None:
    files = [{"name": p.name, "bytes": p.stat().st_size} for p in paths]
    write_json(out / "manifest.json", {"files": files, "synthetic": synthetic})
    for path in paths:
        print(path)


def download(
    dataset: str, out: Path, mirrors: tuple[str, ...], official_splits: bool, allow_mismatch: bool = False
) -> None:
    """`rdiunet download`: fetch (or verify in place) the source's archives. A folder that holds
    synthetic stand-ins is refused: their results must never pass for the paper's data."""
    source = sources.get(dataset)
    if (out / MARKER).exists():
        raise UserError(
            f"{out} holds synthetic stand-ins ({MARKER}), and the real {dataset} data is asked for; "
            f"delete {out} to download the real archives, or set synthetic: true"
        )
    write_manifest(out, source.download(out, mirrors, official_splits, allow_mismatch), synthetic=False)


def synthesize(dataset: str, out: Path, n: int | None, seed: int, official_splits: bool) -> None:
    """`rdiunet synth`: write a synthetic stand-in in the source's own raw format."""
    if official_splits and not sources.get(dataset).official_splits:
        raise UserError(f"--official-splits: {dataset} has no official validation and test sets")
    options = {"official_splits": True} if official_splits else {}
    write_manifest(out, write_stand_in(dataset, out, n, seed, **options), synthetic=True)
