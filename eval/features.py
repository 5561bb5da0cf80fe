"""What every evaluation needs: a trained run's backbone, its labelled data, and features extracted in
shards (each rank embeds 1/world of the images, all ranks get all rows), plus the labelled training views
(crop + flip) for the linear probe on images and for semi-supervised fine-tuning."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from engine import dist
from engine.errors import UsageError


def load_run(checkpoint: str, random_init: bool = False):
    """-> (config dict, method model on the CPU) of a train.py checkpoint; random_init: same arch, untrained."""
    from engine import ckpt
    from engine.config import build_model_from_config
    state = ckpt.load(checkpoint)
    cfg = state.get("config")
    if cfg is None or "model" not in state:
        raise UsageError(f"{checkpoint}: no config/model inside; is it a checkpoint of this project's train.py?")
    torch.manual_seed(cfg.get("seed", 0))
    model = build_model_from_config(cfg)
    if not random_init:
        model.load_state_dict(state["model"])
    return cfg, model


def eval_sources(cfg: dict, dataset: str | None = None, data: str | None = None):
    """(train source, test source, uint8 -> normalized float) of the run's dataset, or of --dataset/--data."""
    from loaders.augment import DeviceAugment
    from loaders.datasets import open_source
    dataset, data = dataset or cfg["dataset"], data or cfg["data"]
    train, test = open_source(dataset, data, True), open_source(dataset, data, False)
    return train, test, DeviceAugment([], train.mean, train.std).plain


def feature_dim(backbone, res: int) -> int:
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        d = backbone(torch.zeros(1, 3, res, res, device=next(backbone.parameters()).device)).shape[1]
    backbone.train(was)
    return int(d)


@torch.no_grad()
@torch.no_grad()
def extract_sharded(encoder, source, res, normalize, device, indices=None, batch=256, workers=2,
                    progress=False, desc="features", l2=True):
    """Features [N, D] float32 and labels [N] of source[indices] (all by default), row i = indices[i]; each
    rank embeds a contiguous 1/world share, shares are all-gathered so every rank holds every row.
    l2=False keeps the raw pooled features (the linear probe's input)."""
    from loaders import plain_loader
    idx = np.arange(len(source)) if indices is None else np.asarray(indices)
    n, rank, world = len(idx), dist.rank(), dist.world()
    mine = idx[dist.share(n, rank, world)]
    was = encoder.training
    encoder.eval()
    feats, labels = [], []
    for x, y in tqdm(plain_loader(source, res, batch, workers, indices=mine), desc=desc,
                     disable=not progress, leave=False):
        f = encoder(normalize(x.to(device, non_blocking=True))).float()
        feats.append(F.normalize(f, dim=1) if l2 else f)
        labels.append(y.to(device))
    encoder.train(was)
    d = feature_dim(encoder, res) if not feats else feats[0].shape[1]
    f = torch.cat(feats) if feats else torch.zeros(0, d, device=device)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    return dist.gather_shares(f, n, 0.0), dist.gather_shares(y, n, -1)


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


def labelled_loader(source, res, batch, indices=None, aug="rrc", workers=2, seed=0, train=True):
    """A DataLoader over this rank's share: train: a seeded DistributedSampler (set_epoch each epoch,
    drop_last so every rank takes the same number of steps); test: the rank's contiguous shard, in order."""
    rank, world = dist.rank(), dist.world()
    if train:
        ds = Labelled(source, res, indices, aug)
        sampler = DistributedSampler(ds, world, rank, shuffle=True, seed=seed, drop_last=True)
        return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                          pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    idx = np.arange(len(source)) if indices is None else np.asarray(indices)
    ds = Labelled(source, res, idx[dist.share(len(idx), rank, world)], "none")
    return DataLoader(ds, batch_size=batch, num_workers=workers, pin_memory=torch.cuda.is_available())
