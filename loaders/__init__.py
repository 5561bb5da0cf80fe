"""Loader back ends behind one function: build_loader(LoaderOptions, source, recipe, device, rank, world) ->
iterable of Batch with set_epoch and len."""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset

from engine.errors import DataError, UsageError
from loaders.augment import DeviceAugment

LOADERS = ("torch", "device", "synthetic", "ffcv", "dali")


def progressive_res(epoch: int, min_res: int, max_res: int, start: int, end: int, step: int = 0) -> int:
    """FFCV's progressive resizing: min_res until epoch `start`, linear up to max_res at `end`, rounded to
    a multiple of `step` (default 32 at ImageNet sizes, 4 below 128 px)."""
    step = step or (32 if max_res >= 128 else 4)
    r = float(np.interp(epoch, [start, end], [min_res, max_res]))
    return int(min(max_res, max(step, round(r / step) * step)))


@dataclass
class LoaderOptions:
    """Every loader setting, from the caller (from_args: an argparse namespace of the same names) to the back
    ends. batch_size is per rank."""
    name: str = "torch"
    res: int = 224
    batch_size: int = 256
    seed: int = 0
    workers: int = 4
    channels_last: bool = False
    amp: str = "off"                        # the step's precision (dali: fp16 views under autocast, else fp32)
    compile_augment: bool = False
    drop_last: bool = True
    res_at: Callable[[int], int] | None = None   # progressive resolution (ffcv): epoch -> crop size
    beton: str | None = None                # ffcv
    ffcv_order: str = "auto"
    os_cache: bool = True
    batches_ahead: int = 3
    skip_files: str | None = None           # dali
    dali_roi: bool = False
    dali_hw_load: float | None = None
    dali_branchless: bool = False
    dali_pipes: int = 1
    dali_concurrent: bool = False
    dali_augment: str = "pipeline"
    dali_prefetch: int = 2                  # batches DALI prepares ahead (prefetch_queue_depth)
    device_max_fraction: float = 0.5        # device: the dataset's share of free device memory at most

    @classmethod
    def from_args(cls, args, batch_size: int, **override) -> "LoaderOptions":
        """The options that the values in `args` (an argparse namespace) name; `override` wins."""
        kw = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        kw.update(name=args.loader, batch_size=batch_size)
        if "res_at" not in override and getattr(args, "min_res", 0):
            kw["res_at"] = functools.partial(progressive_res, min_res=args.min_res, max_res=args.res,
                                             start=args.start_ramp, end=args.end_ramp)
        return cls(**(kw | override))


def build_loader(opts: LoaderOptions, source, recipe, device, rank=0, world=1):
    """The loader opts.name over `source` (ffcv: the .beton opts.beton, whose rows `source` is: a BetonSource of
    it, a Subset of one, or a source with the same samples)."""
    name = opts.name
    aug = DeviceAugment(recipe, source.mean, source.std, channels_last=opts.channels_last,
                        compile=opts.compile_augment, device=device)
    if opts.res_at is not None and name != "ffcv":
        raise UsageError(f"progressive resolution (`min_res`) needs `loader` ffcv, not {name}")
    if name == "ffcv":   # the source is the .beton's (loaders/beton.py), all its rows or some
        from loaders.beton import rows_of
        from loaders.ffcv_loader import FFCVLoader
        return FFCVLoader(recipe, opts, device, aug, rank=rank, world=world, rows=rows_of(source, opts.beton))
    if name == "torch":
        from loaders.torch_loader import TorchLoader
        return TorchLoader(source, recipe, opts, device, aug, rank=rank, world=world)
    if name == "device":
        from loaders.device import DeviceLoader
        return DeviceLoader(source, recipe, opts, device, aug, rank=rank, world=world)
    if name == "synthetic":
        from loaders.synthetic import SyntheticLoader
        return SyntheticLoader(source, recipe, opts, device, aug, rank=rank, world=world)
    if name == "dali":
        from loaders.dali import DALILoader
        return DALILoader(source, recipe, opts, device, rank=rank, world=world,
                          augment=aug if opts.dali_augment == "device" else None)
    raise UsageError(f"`loader` {name}: unknown (choose from {', '.join(LOADERS)})")


class Plain(Dataset):
    """Evaluation images: the whole image resized to res x res, no augmentation."""

    def __init__(self, source, res: int, indices=None):
        self.source, self.res = source, res
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        try:
            img, label = self.source.load(int(self.indices[k]))
        except DataError as e:   # scored as a black image rather than ending the evaluation: said once per file
            print(f"warning: {str(e).split(' (')[0]}: embedded as a black image", file=sys.stderr, flush=True)
            return torch.zeros(3, self.res, self.res, dtype=torch.uint8), int(self.source.labels[int(self.indices[k])])
        if img.shape[-1] != self.res or img.shape[-2] != self.res:
            img = TF.resize(img, [self.res, self.res], antialias=True)
        return img, label


def plain_loader(source, res, batch_size=256, workers=2, indices=None):
    return DataLoader(Plain(source, res, indices), batch_size=batch_size, num_workers=workers,
                      pin_memory=torch.cuda.is_available())
