"""The `synthetic` back end: random uint8 views made once on the device and replayed. It costs nothing
to produce, so a run on it measures the compute ceiling of the step (augmentation included). Its sample indices
come from the shared epoch order (loaders/order.py), as every back end's: the same permutation, rank split and
skip."""
from __future__ import annotations

import torch

from loaders.augment import DeviceAugment
from loaders.batch import RawBatch, set_plan
from loaders.order import EpochOrder


class SyntheticLoader:
    POOL = 4   # distinct batches replayed

    def __init__(self, source, recipe, opts, device, augment: DeviceAugment, rank=0, world=1):
        """As many steps as `source` would give, its samples' indices in the epoch order; its class count labels
        the batches (its images are not read)."""
        res, batch_size, views = opts.res, opts.batch_size, len(recipe)
        g = torch.Generator(device="cpu").manual_seed(opts.seed + rank)
        self.order = EpochOrder(len(source), batch_size, rank=rank, world=world, seed=opts.seed, drop_last=True)
        self.augment, self.device, self.epoch = augment, torch.device(device), 0
        self.pool = [(torch.randint(0, 256, (views, batch_size, 3, res, res), dtype=torch.uint8, generator=g),
                      torch.randint(0, max(1, source.num_classes), (batch_size,), generator=g)) for _ in range(self.POOL)]
        self.pool = [(v.to(device), y.to(device)) for v, y in self.pool]

    resumes_mid_epoch = True
    set_plan = set_plan

    def set_epoch(self, epoch: int, skip: int = 0):
        self.epoch = epoch
        self.order.set_epoch(epoch, skip)

    def __len__(self):
        return len(self.order)

    def __iter__(self):
        skip = self.order.skip
        # the epoch's indices copied to the device once, before its first batch (no copy inside a step)
        index = torch.as_tensor(self.order.samples()).to(self.device)
        B = self.order.batch
        for k in range(len(self.order) - skip):
            views, label = self.pool[(skip + k) % len(self.pool)]
            yield self.augment(RawBatch(views, index[k * B:(k + 1) * B], label, epoch=self.epoch))
