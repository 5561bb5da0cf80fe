"""The SePP embedding bank: one L2-normalised embedding per training sample, from a pass over the training
set without augmentation (the whole image resized), in fp16 on the device. Each rank embeds a 1/world
share and the shares are all-gathered, so every rank holds the whole bank."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine import dist
from eval.knn import extract
from loaders import plain_loader


@torch.no_grad()
def embed_all(encoder, source, res, normalize, device, rank=0, world=1, batch=256, workers=2, progress=False):
    """-> fp16 [N, D] on `device`, row i = normalised embedding of sample i (all ranks get all rows)."""
    n = len(source)
    per = -(-n // world)
    mine = np.arange(rank * per, min(n, (rank + 1) * per))
    was = encoder.training
    encoder.eval()
    feats, _ = extract(encoder, plain_loader(source, res, batch, workers, indices=mine), normalize, device,
                       progress, desc="SePP bank")
    encoder.train(was)
    feats = F.normalize(feats.float(), dim=1).half()
    if world > 1:  # equal shapes for all_gather: pad the last share
        pad = torch.zeros(per - len(mine), feats.shape[1], dtype=feats.dtype, device=feats.device)
        feats = dist.all_gather(torch.cat([feats, pad]))[:n]
    return feats


def label_agreement(labels: np.ndarray, partner: np.ndarray) -> tuple[float, float]:
    """(share of samples that got a positive, share of those whose positive has the same label)."""
    has = partner >= 0
    if not has.any():
        return 0.0, 0.0
    return float(has.mean()), float((labels[has] == labels[partner[has]]).mean())
