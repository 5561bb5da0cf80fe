"""The `synthetic` back end: random uint8 views made once on the device and replayed. It costs nothing
to produce, so a run on it measures the compute ceiling of the step (augmentation included)."""
from __future__ import annotations

import torch

from loaders.augment import DeviceAugment
from loaders.batch import RawBatch, set_plan


class SyntheticLoader:
    POOL = 4   # distinct batches replayed

    def __init__(self, source, recipe, opts, device, augment: DeviceAugment, rank=0, world=1):
        """As many steps as `source` would give; its class count labels the batches (its images are not read)."""
        res, batch_size, views = opts.res, opts.batch_size, len(recipe)
        g = torch.Generator(device="cpu").manual_seed(opts.seed + rank)
        self.steps = max(1, len(source) // (batch_size * world))
        self.augment = augment
        self.pool = [(torch.randint(0, 256, (views, batch_size, 3, res, res), dtype=torch.uint8, generator=g),
                      torch.randint(0, max(1, source.num_classes), (batch_size,), generator=g)) for _ in range(self.POOL)]
        self.pool = [(v.to(device), y.to(device)) for v, y in self.pool]
        self.base, self.stride = torch.arange(batch_size, device=device) + rank * batch_size, batch_size * world

    resumes_mid_epoch = True
    order = None   # the same pool of batches every epoch
    skip = epoch = 0
    set_plan = set_plan

    def set_epoch(self, epoch: int, skip: int = 0):
        self.epoch, self.skip = epoch, skip

    def __len__(self):
        return self.steps

    def __iter__(self):
        for s in range(self.skip, self.steps):
            views, label = self.pool[s % len(self.pool)]
            yield self.augment(RawBatch(views, self.base + s * self.stride, label, epoch=self.epoch))   # unique over ranks
