"""Subject-wise k-fold cross-validation: which fold each image is in, and each seed's split.

Whole subjects (images, where a source names none) are dealt to the folds so that the folds hold
about as many images each; a training seed s tests on fold s mod k, validates on fold
(s + 1) mod k and trains on the rest, so k consecutive seeds test every subject exactly once, and
2k seeds twice, with other initial weights. Numpy only: the data environment prepares with it.
"""

import numpy as np

from rdiunet.errors import UserError


def assign_folds(groups: list[str], folds: int, seed: int) -> np.ndarray:
    """0..folds-1 per item: whole groups (subjects; images where a source has none) dealt to the
    folds, largest first, each to the fold holding the fewest images so far (ties: the lower
    fold), after a seeded shuffle so that equal-sized groups are dealt at random."""
    names, sizes = np.unique(np.asarray(groups), return_counts=True)
    if len(names) < folds:
        raise UserError(f"{len(names)} subjects cannot fill {folds} folds; use fewer --folds or more images")
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-sizes[order], kind="stable")]
    filled, fold_of = np.zeros(folds, int), {}
    for index in order:
        fold = int(np.argmin(filled))
        fold_of[names[index]] = fold
        filled[fold] += sizes[index]
    return np.array([fold_of[g] for g in groups], dtype=np.int8)


def fold_split(fold: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The split of training seed `seed` in k-fold cross-validation: test on fold seed mod k,
    validate on fold (seed + 1) mod k, train on the rest; k consecutive seeds test every fold once."""
    test, val = seed % folds, (seed + 1) % folds
    return np.where(fold == test, 2, np.where(fold == val, 1, 0)).astype(np.int8)
