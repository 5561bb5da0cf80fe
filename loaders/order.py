"""The sample order of one epoch, shared by every back end: a seeded permutation per epoch, split by rank
into per-rank batches. Ranks get disjoint indices; with drop_last the remainder (< world*batch) is dropped,
otherwise the last batch is short (indices are never duplicated)."""
from __future__ import annotations

import numpy as np


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


def rank_batches(order: np.ndarray, batch: int, rank: int, world: int, drop_last: bool) -> list[np.ndarray]:
    """Global order -> this rank's batches. Global step s takes order[s*world*batch:(s+1)*world*batch] and
    rank r its r-th slice, so a group of consecutive samples (an anchor and its positive) stays on one rank."""
    gb = batch * world
    steps = len(order) // gb if drop_last else -(-len(order) // gb)
    out = []
    for s in range(steps):
        chunk = order[s * gb:(s + 1) * gb]
        if len(chunk) < gb:  # short last step: split what is left evenly, never duplicate
            part = np.array_split(chunk, world)[rank]
        else:
            part = chunk[rank * batch:(rank + 1) * batch]
        if len(part):
            out.append(part)
    return out


def num_steps(n: int, batch: int, world: int, drop_last: bool) -> int:
    gb = batch * world
    return n // gb if drop_last else -(-n // gb)
