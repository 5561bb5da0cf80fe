"""The SePP embedding bank: one L2-normalised embedding per training sample, from a pass over the training
set without augmentation (the whole image resized), in fp16 on the device. Each rank embeds a 1/world
share and the shares are all-gathered, so every rank holds the whole bank."""
from __future__ import annotations

import numpy as np
import torch

from loaders.embed import Images, extract_sharded


@torch.no_grad()
def embed_all(encoder, images: Images, device, progress=False):
    """-> fp16 [N, D] on `device`, row i = normalised embedding of sample i (all ranks get all rows: each
    embeds the share of the process group's rank)."""
    feats, _ = extract_sharded(encoder, images, device, progress=progress, desc="SePP bank")
    return feats.half()


def label_agreement(labels: np.ndarray, partner: np.ndarray) -> tuple[float, float]:
    """(share of samples that got a positive, share of those whose positive has the same label); the second is
    NaN for unlabelled images (label -1: nothing to compare)."""
    has = partner >= 0
    if not has.any():
        return 0.0, 0.0
    labelled = has & (labels >= 0)
    labelled[has] &= labels[partner[has]] >= 0
    agree = float((labels[labelled] == labels[partner[labelled]]).mean()) if labelled.any() else float("nan")
    return float(has.mean()), agree


def agreement_words(agree: float) -> str:
    return "no labels to check them against" if agree != agree else f"{agree:.1%} of pairs share a label"
