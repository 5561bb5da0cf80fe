"""The sample order of one epoch, shared by every back end (EpochOrder): a seeded permutation per epoch, split
by rank into per-rank batches. Ranks get disjoint indices; with drop_last the remainder (< world*batch) is dropped,
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


class EpochOrder:
    """The one sample order every back end consumes: each epoch a seeded permutation of the n samples, or
    the order of a plan (SePP's pairs, mining/sampler.py: epoch -> order), split by rank into batches, and
    from batch `skip` on after a mid-epoch resume. A loader holds one as `order` (loaders/batch.py, Loader)."""

    def __init__(self, n: int, batch: int, rank: int = 0, world: int = 1, seed: int = 0, drop_last: bool = True):
        self.n, self.batch, self.rank, self.world = n, batch, rank, world
        self.seed, self.drop_last = seed, drop_last
        self.epoch, self.skip, self.plan = 0, 0, None

    def set_epoch(self, epoch: int, skip: int = 0):
        """The next iteration is `epoch`'s, from its batch `skip` on."""
        self.epoch, self.skip = epoch, skip

    def permutation(self, epoch: int) -> np.ndarray:
        """The global order of `epoch`: the plan's, or the seeded permutation."""
        return np.asarray(self.plan(epoch) if self.plan else epoch_permutation(self.n, self.seed, epoch))

    def batches(self, epoch: int | None = None, skip: int | None = None) -> list[np.ndarray]:
        """This rank's batches of `epoch` (default: the current one), from batch `skip` (default: set_epoch's)."""
        epoch = self.epoch if epoch is None else epoch
        parts = rank_batches(self.permutation(epoch), self.batch, rank=self.rank, world=self.world,
                             drop_last=self.drop_last)
        return parts[self.skip if skip is None else skip:]

    def samples(self, epoch: int | None = None, skip: int | None = None) -> np.ndarray:
        """This rank's samples of `epoch`, its batches one after the other (the order a reader is fed)."""
        parts = self.batches(epoch, skip)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return num_steps(self.n, self.batch, self.world, self.drop_last)
