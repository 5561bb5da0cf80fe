"""The SePP sample plan: an epoch order in which each anchor's mined positive sits right after it, in pairs
aligned to even positions, so that with an even per-rank batch size the rank split (loaders/order.py:
consecutive samples stay on one rank and in one batch) keeps every pair in one batch. Every sample still
appears exactly once per epoch; a sample whose neighbours are all taken (or below the threshold) is paired
with another such sample and has no positive (partner -1).

    plan = PairPlan(neighbours, seed)          # neighbours: int64 [N, k], -1 = none
    order, partner = plan(epoch)               # loaders take order; Batch.pos = partner[Batch.index]
"""
from __future__ import annotations

import numpy as np


def pair_order(neighbours: np.ndarray, seed: int, epoch: int):
    """(order [N], partner [N]): a random greedy matching of anchors to unplaced neighbours."""
    n = neighbours.shape[0]
    rng = np.random.default_rng([seed, epoch, 13])
    placed = np.zeros(n, bool)
    partner = np.full(n, -1, np.int64)
    pairs, lonely = [], []
    for a in rng.permutation(n):
        if placed[a]:
            continue
        placed[a] = True
        cand = [int(j) for j in neighbours[a] if j >= 0 and not placed[j]]
        if cand:
            p = cand[rng.integers(len(cand))]
            placed[p] = True
            partner[a], partner[p] = p, a
            pairs.append((a, p))
        else:
            lonely.append(a)
    lonely = np.array(lonely, np.int64)
    blocks = pairs + [tuple(lonely[i:i + 2]) for i in range(0, len(lonely), 2)]
    blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    # an odd leftover (odd N) goes last so that every pair before it sits at even positions
    blocks.sort(key=lambda b: len(b) == 1)
    order = np.fromiter((i for b in blocks for i in b), np.int64, count=n)
    return order, partner


class PairPlan:
    """Callable plan for the loaders (torch: EpochBatches.plan; ffcv: FFCVLoader.plan; dali in-memory:
    DALILoader.plan): epoch -> order, and the partner table of the last epoch planned."""

    def __init__(self, neighbours: np.ndarray, seed: int):
        self.neighbours, self.seed = np.asarray(neighbours), seed
        self.partner = np.full(len(self.neighbours), -1, np.int64)
        self._cache = {}

    def plan(self, epoch: int):
        if epoch not in self._cache:
            self._cache = {epoch: pair_order(self.neighbours, self.seed, epoch)}
        return self._cache[epoch]

    def __call__(self, epoch: int) -> np.ndarray:
        order, self.partner = self.plan(epoch)
        return order
