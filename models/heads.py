"""Projector and predictor MLPs (Linear-BN-ReLU hidden layers), as in the four methods' papers."""
from __future__ import annotations

import torch.nn as nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, hidden_bn: bool = True,
        last_bn: bool = False) -> nn.Sequential:
    mods, d = [], in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=not hidden_bn)]
        if hidden_bn:
            mods += [nn.BatchNorm1d(hidden)]
        mods += [nn.ReLU(inplace=True)]
        d = hidden
    mods += [nn.Linear(d, out_dim, bias=not last_bn)]
    if last_bn:  # SimSiam's projector ends with BN without affine parameters
        mods += [nn.BatchNorm1d(out_dim, affine=False)]
    return nn.Sequential(*mods)
