"""torchvision ResNets as feature extractors, with a small-image stem for 28-96 px inputs and an optional
narrower width (fewer channels in every stage) for CPU-sized studies."""
from __future__ import annotations

import torch.nn as nn
import torchvision.models as tvm
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from engine.errors import UsageError


def resnet10(**kw):
    """ResNet-18's blocks once each: a quarter of its depth, for CPU demos and tests."""
    return ResNet(BasicBlock, [1, 1, 1, 1], **kw)


ARCHS = {"resnet10": resnet10, "resnet18": tvm.resnet18, "resnet34": tvm.resnet34, "resnet50": tvm.resnet50}


def _rewidth(net: ResNet, width: int, zero_init_residual: bool):
    """The same ResNet with `width` channels in its first stage (64 in torchvision's), doubling per stage:
    the stages rebuilt by torchvision's own _make_layer, so parameter names stay torchvision's."""
    block = type(net.layer1[0])
    depths = [len(getattr(net, f"layer{i}")) for i in range(1, 5)]
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    for i, d in enumerate(depths):
        setattr(net, f"layer{i + 1}", net._make_layer(block, width * 2 ** i, d, stride=1 if i == 0 else 2))
    net.fc = nn.Linear(width * 8 * block.expansion, 1000)
    for m in net.modules():   # torchvision's initialisation (ResNet.__init__)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in net.modules():
            if isinstance(m, (Bottleneck, BasicBlock)):
                nn.init.constant_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight, 0)


def build_backbone(arch: str, small_stem: bool = False, stem_stride: int = 1, zero_init_residual: bool = True,
                   width: int = 64):
    """-> (module mapping [B, 3, H, W] to pooled features [B, D], D).

    small_stem: the CIFAR variant (3x3 stride-1 first conv, no max-pool), so 28-96 px images keep their
    spatial detail instead of being downsampled 4x before the first block; stem_stride=2 halves the
    resolution once (4x fewer FLOPs: what makes CPU demos at 28 px run at ~300 img/s on 2 cores).
    width: channels of the first stage (torchvision: 64); 32 halves every stage (about 4x fewer FLOPs)."""
    if arch not in ARCHS:
        raise UsageError(f"`arch` {arch}: unknown (choose from {', '.join(ARCHS)})")
    if width < 1:
        raise UsageError(f"`width` {width}: must be >= 1")
    net = ARCHS[arch](zero_init_residual=zero_init_residual)
    if width != 64:
        _rewidth(net, width, zero_init_residual)
    if small_stem:
        net.conv1 = nn.Conv2d(3, net.layer1[0].conv1.in_channels, 3, stem_stride, 1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim
