"""What every evaluation needs: a trained run's backbone, its labelled data, and the labelled training views
(crop + flip) for the linear probe on images and for semi-supervised fine-tuning. Features are extracted by
loaders/embed.py (sharded over ranks; shared with the SePP bank)."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from engine import dist
from engine.errors import UsageError

STEM_STRIDE_HELP = ("foreign weights with a 3x3 small-image stem: its stride, which the weights do not hold "
                    "(solo-learn's and lightly's CIFAR ResNets: 1); a train.py checkpoint's config has its own")


def load_run(checkpoint: str, random_init: bool = False, stem_stride: int = 1):
    """-> (config dict, method model on the CPU) of a train.py checkpoint; random_init: same arch, untrained.
    Foreign ResNet weights (torchvision, timm, MoCo, solo-learn, lightly: mining/encoders.py) give a config of
    what they hold and a model with only a backbone; a small 3x3 stem's stride is not in the weights, so it is
    `stem_stride` (a train.py checkpoint's config has its own)."""
    from engine import ckpt
    from models.methods import build_model_from_config
    state = ckpt.load(checkpoint)
    cfg = state.get("config") if isinstance(state, dict) else None
    if cfg is None or "model" not in state:
        return foreign_run(checkpoint, random_init, stem_stride)
    torch.manual_seed(cfg.get("seed", 0))
    model = build_model_from_config(cfg)
    if not random_init:
        model.load_state_dict(state["model"])
    return cfg, model


def foreign_run(path: str, random_init: bool, stem_stride: int = 1):
    from types import SimpleNamespace

    from mining.encoders import load_encoder
    from models.backbones import build_backbone
    enc, desc = load_encoder(path, stem_stride=stem_stride, flag="--checkpoint")
    if random_init:
        torch.manual_seed(0)
        enc, _ = build_backbone(desc["arch"], desc["small_stem"], stem_stride, width=desc["width"])
    cfg = {"dataset": None, "data": None, "res": None, "seed": 0, "val_split": 0, "method": "none (foreign weights)",
           "arch": desc["arch"]}
    return cfg, SimpleNamespace(backbone=enc)


def eval_sources(cfg: dict, dataset: str | None = None, data: str | None = None):
    """(training source, scored source, uint8 -> normalized float) of the run's data set, or of --dataset/--data,
    as loaders/splits.py splits it: the run's own is its whole training set (or its .beton) less the samples it
    held out (--val-split, or a set with no val split of its own), which are scored; another data set's scored
    split is its test or val split, or a part of it held out. Never a scored image among the training ones."""
    from loaders.augment import DeviceAugment
    from loaders.splits import DataSpec, open_splits, recognised
    own = DataSpec.of_run(cfg)
    if data is None and own.beton and not os.path.isfile(own.beton):
        raise UsageError(f"the run trained on {own.beton}, which is not here: copy it here, or point --data at a "
                         "labelled set to score on")
    if data is None or _same_data(cfg, dataset, data):   # the run's own set (a class tree trained as images: labelled)
        spec = replace(own, dataset=dataset or own.dataset)
    else:
        spec = DataSpec(dataset, data)
    spec, found = recognised(spec)
    if spec.dataset == "images":
        raise UsageError(f"scoring needs labels, and {spec.data} holds unlabelled images: point --data at a labelled "
                         "set (class folders, Fashion-MNIST, CIFAR-10, STL-10, a file list)")
    splits = open_splits(spec)
    if dist.rank() == 0:
        print(f"data: {found}", flush=True)
        if splits.note:
            print(f"scored on: {splits.note}", flush=True)
    train = splits.train
    return train, splits.scored, DeviceAugment([], train.mean, train.std).plain


def _same_data(cfg: dict, dataset: str | None, data: str) -> bool:
    """Whether --data names the run's own data set (then the samples it held out are held out again)."""
    from loaders.datasets import DEFAULT_DATA
    if cfg.get("loader") == "ffcv" and cfg.get("beton"):
        return False
    mine = cfg.get("data") or DEFAULT_DATA.get(cfg.get("dataset"))
    same_kind = dataset in (None, cfg.get("dataset"))
    return bool(mine) and same_kind and os.path.realpath(mine) == os.path.realpath(data)


class Labelled(Dataset):
    """Training views for a classifier: the standard crops of the linear-probe and fine-tuning protocols.
    aug 'rrc': RandomResizedCrop(res, 0.08-1) + flip (ImageNet); 'crop': pad 4 + random crop + flip (small
    images, CIFAR style); 'none': the whole image resized."""

    def __init__(self, source, res: int, indices=None, aug: str = "rrc"):
        self.source, self.res = source, res
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        flip = T.RandomHorizontalFlip()
        self.tf = {"rrc": T.Compose([T.RandomResizedCrop(res, antialias=True), flip]),
                   "crop": T.Compose([T.Resize([res, res], antialias=True), T.RandomCrop(res, padding=res // 7),
                                      flip]),
                   "none": T.Resize([res, res], antialias=True)}[aug]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        img, label = self.source.load(int(self.indices[k]))
        return self.tf(img), label


def labelled_loader(source, res, batch, *, indices=None, aug="rrc", workers=2, seed=0):
    """Training batches of this rank's share: a seeded DistributedSampler (set_epoch each epoch, drop_last so
    every rank takes the same number of steps)."""
    rank, world = dist.rank(), dist.world()
    ds = Labelled(source, res, indices, aug)
    sampler = DistributedSampler(ds, world, rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def scoring_loader(source, res, batch, *, indices=None, workers=2):
    """Scoring batches: the rank's contiguous shard of `indices` (all of `source` if None), in order, whole images."""
    rank, world = dist.rank(), dist.world()
    idx = np.arange(len(source)) if indices is None else np.asarray(indices)
    ds = Labelled(source, res, idx[dist.share(len(idx), rank, world)], "none")
    return DataLoader(ds, batch_size=batch, num_workers=workers, pin_memory=torch.cuda.is_available())
