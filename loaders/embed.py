"""Features of a whole image source, sharded over ranks: what the SePP bank (mining/), the kNN monitor and
the evaluations (eval/) all need, so it sits below both. Each rank embeds a contiguous 1/world share and
the shares are all-gathered, so every rank holds every row.

In-memory sets at their native size (Fashion-MNIST at 28 px, CIFAR-10 at 32) are read straight from
their array, a batch at a time, with no worker processes; other sources go through a DataLoader that
resizes each whole image (loaders.plain_loader).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from engine import dist
from engine.progress import progress as bar


def feature_dim(encoder, res: int) -> int:
    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        d = encoder(torch.zeros(1, 3, res, res, device=next(encoder.parameters()).device)).shape[1]
    encoder.train(was)
    return int(d)


def _array_batches(source, res, idx, batch):
    """uint8 [b, C, H, W] and labels of an in-memory source at its native size, or None if it is not one."""
    from loaders.datasets import array_rows
    first = array_rows(source, idx[:1])
    if first is None or first.shape[-2:] != (res, res):
        return None
    labels = np.asarray(source.labels)
    return ((torch.from_numpy(array_rows(source, idx[s:s + batch])), torch.from_numpy(labels[idx[s:s + batch]]))
            for s in range(0, len(idx), batch))


@dataclass(frozen=True)
class Images:
    """Images to embed: a source, the size and the normalisation they are seen at, which of them (indices;
    None: all), and how they are read (batch, workers)."""
    source: Any
    res: int
    normalize: Callable
    indices: Any = None
    batch: int = 256
    workers: int = 2


@torch.no_grad()
def extract_sharded(encoder, images: Images, device, *, progress=False, desc="features", l2=True):
    """Features [N, D] float32 and labels [N] of images.source[images.indices] (all by default), row i =
    indices[i]. l2=False keeps the raw pooled features (the linear probe's input)."""
    from loaders import plain_loader
    source, res, normalize, batch = images.source, images.res, images.normalize, images.batch
    idx = np.arange(len(source)) if images.indices is None else np.asarray(images.indices)
    n, rank, world = len(idx), dist.rank(), dist.world()
    mine = idx[dist.share(n, rank, world)]
    batches = _array_batches(source, res, mine, batch) or plain_loader(source, res, batch, images.workers,
                                                                                indices=mine)
    was = encoder.training
    encoder.eval()
    feats, labels = [], []
    for x, y in bar(batches, desc=desc, enabled=progress, leave=False, total=-(-len(mine) // batch)):
        f = encoder(normalize(x.to(device, non_blocking=True))).float()
        feats.append(F.normalize(f, dim=1) if l2 else f)
        labels.append(y.to(device))
    encoder.train(was)
    d = feature_dim(encoder, res) if not feats else feats[0].shape[1]
    f = torch.cat(feats) if feats else torch.zeros(0, d, device=device)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    return dist.gather_shares(f, n, 0.0), dist.gather_shares(y, n, -1)
