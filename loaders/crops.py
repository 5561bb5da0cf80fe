"""Random-resized-crop parameters, drawn from a per-(seed, epoch, sample) generator so that every
back end, worker count and resume point gives the same crops for the same sample and epoch."""
from __future__ import annotations

import math

import numpy as np

RATIO = (3 / 4, 4 / 3)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def rrc_params(rng: np.random.Generator, H: int, W: int, scale, ratio=RATIO):
    """(top, left, h, w) exactly as torchvision's RandomResizedCrop.get_params draws them."""
    area = H * W
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*lr))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
    in_ratio = W / H
    if in_ratio < min(ratio):
        w, h = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = H, int(round(H * max(ratio)))
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w
