"""Loader back ends behind one function: build_loader(...) -> iterable of Batch with set_epoch and len."""
from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset

from engine.errors import UsageError
from loaders.augment import DeviceAugment

LOADERS = ("torch", "synthetic", "ffcv", "dali")


def build_loader(name, source, recipe, res, batch_size, device, rank=0, world=1, seed=0, workers=4,
                 channels_last=False, mix=None, **kw):
    aug = DeviceAugment(recipe, source.mean, source.std, channels_last, mix)
    if name == "torch":
        from loaders.torch_loader import TorchLoader
        return TorchLoader(source, res, recipe, batch_size, device, aug, rank, world, seed, workers)
    if name == "synthetic":
        from loaders.synthetic import SyntheticLoader
        return SyntheticLoader(len(source), res, len(recipe), batch_size, device, aug, rank, world, seed,
                               source.num_classes)
    if name in ("ffcv", "dali"):
        raise UsageError(f"--loader {name}: not available in this build yet (use torch or synthetic)")
    raise UsageError(f"--loader {name}: unknown (choose from {', '.join(LOADERS)})")


class Plain(Dataset):
    """Evaluation images: the whole image resized to res x res, no augmentation."""

    def __init__(self, source, res: int, indices=None):
        self.source, self.res = source, res
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        img, label = self.source.load(int(self.indices[k]))
        if img.shape[-1] != self.res or img.shape[-2] != self.res:
            img = TF.resize(img, [self.res, self.res], antialias=True)
        return img, label


def plain_loader(source, res, batch_size=256, workers=2, indices=None):
    return DataLoader(Plain(source, res, indices), batch_size=batch_size, num_workers=workers,
                      pin_memory=torch.cuda.is_available())
