"""What every evaluation needs: a trained run's backbone, its labelled data, and the labelled training views
(crop + flip) for the linear probe on images and for semi-supervised fine-tuning. Features are extracted by
loaders/embed.py (sharded over ranks; shared with the SePP bank)."""
from __future__ import annotations

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
    """(train source, test source, uint8 -> normalized float) of the run's dataset, or of --dataset/--data.
    A run trained with --val-split is scored on its validation split (the rest of the training set trains
    the kNN / probe), never on the test split."""
    from loaders.augment import DeviceAugment
    from loaders.datasets import open_source, recognise
    if data is None:   # the run's own set (a class tree trained --dataset images has its labels back)
        dataset, data = dataset or cfg["dataset"], cfg["data"]
        dataset = None if dataset == "images" else dataset
    dataset, found = recognise(dataset, data)
    if dataset == "images":
        raise UsageError(f"scoring needs labels, and {data} holds unlabelled images: point --data at a labelled "
                         "set (class folders, Fashion-MNIST, CIFAR-10, STL-10, a file list)")
    if dist.rank() == 0:
        print(f"data: {found}", flush=True)
    split = cfg.get("val_split", 0) if dataset == cfg["dataset"] else 0   # a run tuned on a validation split
    train, test = open_source(dataset, data, True, val_split=split), open_source(dataset, data, False, val_split=split)
    return train, test, DeviceAugment([], train.mean, train.std).plain


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
