"""The one subset picker of every evaluation (kNN, linear probe, the training-time kNN monitor, the embedding
picture): a fixed random subset of n of a split's images, the same for every caller and every run, so that
kNN and the linear probe of one study score the same test images, and runs of different seeds too."""
from __future__ import annotations

import hashlib

import numpy as np

SEED = 0


def pick(n: int, total: int, seed: int = SEED) -> np.ndarray | None:
    """Sorted indices of a fixed random subset of n of total items, or None (all of them) when n is 0 or not
    smaller than total."""
    return np.sort(np.random.default_rng([seed, n]).permutation(total)[:n]) if 0 < n < total else None


def digest(indices: np.ndarray | None, total: int) -> str:
    """A short name of the images scored (written beside each score): 'all N' or 'N of M <hash>'."""
    if indices is None:
        return f"all {total}"
    return f"{len(indices)} of {total} " + hashlib.sha1(np.asarray(indices, np.int64).tobytes()).hexdigest()[:12]
