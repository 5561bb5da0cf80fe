"""torchvision ResNets as feature extractors, with a small-image stem for 28-96 px inputs."""
from __future__ import annotations

import torch.nn as nn
import torchvision.models as tvm
from torchvision.models.resnet import BasicBlock, ResNet

from engine.errors import UsageError


def resnet10(**kw):
    """ResNet-18's blocks once each: a quarter of its depth, for CPU demos and tests."""
    return ResNet(BasicBlock, [1, 1, 1, 1], **kw)


ARCHS = {"resnet10": resnet10, "resnet18": tvm.resnet18, "resnet34": tvm.resnet34, "resnet50": tvm.resnet50}


def build_backbone(arch: str, small_stem: bool = False, stem_stride: int = 1, zero_init_residual: bool = True):
    """-> (module mapping [B, 3, H, W] to pooled features [B, D], D).

    small_stem: the CIFAR variant (3x3 stride-1 first conv, no max-pool), so 28-96 px images keep their
    spatial detail instead of being downsampled 4x before the first block; stem_stride=2 halves the
    resolution once (4x fewer FLOPs: what makes CPU demos at 28 px run at ~300 img/s on 2 cores)."""
    if arch not in ARCHS:
        raise UsageError(f"--arch {arch}: unknown (choose from {', '.join(ARCHS)})")
    net = ARCHS[arch](zero_init_residual=zero_init_residual)
    if small_stem:
        net.conv1 = nn.Conv2d(3, 64, 3, stem_stride, 1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim
