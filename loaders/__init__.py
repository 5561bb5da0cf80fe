"""Loader back ends behind one function: build_loader(...) -> iterable of Batch with set_epoch and len."""
from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset

from engine.errors import UsageError
from loaders.augment import DeviceAugment

LOADERS = ("torch", "synthetic", "ffcv", "dali")


def progressive_res(epoch: int, min_res: int, max_res: int, start: int, end: int, step: int = 0) -> int:
    """FFCV's progressive resizing: min_res until epoch `start`, linear up to max_res at `end`, rounded to
    a multiple of `step` (default 32 at ImageNet sizes, 4 below 128 px)."""
    step = step or (32 if max_res >= 128 else 4)
    r = float(np.interp(epoch, [start, end], [min_res, max_res]))
    return int(min(max_res, max(step, round(r / step) * step)))


def build_loader(name, source, recipe, res, batch_size, device, rank=0, world=1, seed=0, workers=4,
                 channels_last=False, mix=None, beton=None, ffcv_order="auto", os_cache=True, batches_ahead=3,
                 res_at=None, **kw):
    """The loader `name` over `source` (ffcv: over the .beton `beton` made from it). res_at(epoch) -> crop
    size gives progressive resolution (ffcv only)."""
    aug = DeviceAugment(recipe, source.mean, source.std, channels_last, mix,
                        compile=kw.get("compile_augment", False))
    if res_at is not None and name != "ffcv":
        raise UsageError(f"progressive resolution (--min-res) needs --loader ffcv, not {name}")
    if name == "ffcv":
        from loaders.ffcv_loader import FFCVLoader
        loader = FFCVLoader(beton, res_at(0) if res_at else res, recipe, batch_size, device, aug, rank, world,
                            seed, workers, ffcv_order, os_cache, batches_ahead, res_at=res_at)
        if loader.n != len(source) and rank == 0:
            print(f"note: {beton} holds {loader.n} images, the source {len(source)} (images skipped at prepare "
                  "time, or another subset)", flush=True)
        return loader
    if name == "torch":
        from loaders.torch_loader import TorchLoader
        return TorchLoader(source, res, recipe, batch_size, device, aug, rank, world, seed, workers)
    if name == "synthetic":
        from loaders.synthetic import SyntheticLoader
        return SyntheticLoader(len(source), res, len(recipe), batch_size, device, aug, rank, world, seed,
                               source.num_classes)
    if name == "dali":
        from loaders.dali import DALILoader, check_options
        check_options(augment=kw.get("dali_augment", "pipeline"))
        return DALILoader(source, res, recipe, batch_size, device, rank, world, seed, workers, channels_last, mix,
                          skip_files=kw.get("skip_files"), roi=kw.get("dali_roi", False),
                          hw_load=kw.get("dali_hw_load"), branchless=kw.get("dali_branchless", False),
                          pipes=kw.get("dali_pipes", 1), concurrent=kw.get("dali_concurrent", False),
                          augment=aug if kw.get("dali_augment", "pipeline") == "device" else None)
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
