"""A classifier on a backbone, and the one loop that trains and scores it: the linear probe (frozen backbone,
or precomputed features with no backbone at all) and semi-supervised fine-tuning (everything trains).

SGD with momentum and a per-iteration cosine schedule (as MoCo's and SimCLR's evaluation protocols); under
torchrun the trainable part is wrapped in DDP and every rank takes its share of the data."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from engine import dist
from engine.precision import grad_scaler
from engine.progress import progress as progress_bar
from engine.sched import warmup_cosine


class Standardize(nn.Module):
    """x -> (x - mean) / std with fixed statistics of the training features (a BatchNorm without affine
    whose statistics are exact: the same on every rank and in every batch)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std.clamp(min=1e-6))

    def forward(self, x):
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """backbone -> norm -> linear. frozen: the backbone stays in eval mode (BatchNorm statistics fixed) and
    gets no gradient; backbone None: the inputs are features already."""

    def __init__(self, backbone, dim: int, num_classes: int, frozen: bool, norm: nn.Module | None = None):
        super().__init__()
        self.backbone, self.frozen = backbone, frozen
        self.norm = norm if norm is not None else nn.BatchNorm1d(dim, affine=False)   # MAE's linear probe
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if backbone is not None and frozen:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone is not None and self.frozen:
            self.backbone.eval()
        return self

    def forward(self, x):
        if self.backbone is None:
            f = x
        elif self.frozen:
            with torch.no_grad():
                f = self.backbone(x)
        else:
            f = self.backbone(x)
        return self.fc(self.norm(f.float()))


class TensorBatches:
    """Batches of precomputed features: a seeded permutation per epoch, split by rank (DistributedSampler's
    contract: set_epoch, the same number of batches on every rank)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0, shuffle: bool = True):
        self.x, self.y, self.batch, self.seed, self.shuffle = x, y, batch, seed, shuffle
        self.epoch, self.rank, self.world = 0, dist.rank(), dist.world()
        self.per_rank = len(x) // self.world if shuffle else len(x)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.per_rank // self.batch if self.shuffle else -(-len(self.x) // self.batch)

    def __iter__(self):
        if self.shuffle:
            g = np.random.default_rng([self.seed, self.epoch])
            order = g.permutation(len(self.x))[self.rank::self.world][:self.per_rank]
            order = torch.as_tensor(order[:len(self) * self.batch], device=self.x.device)
        else:
            order = torch.arange(len(self.x), device=self.x.device)
        for b in order.split(self.batch):
            yield self.x[b], self.y[b]


@dataclass(frozen=True)
class Sgd:
    """A classifier's training: SGD with momentum 0.9 (Nesterov's if asked) and weight decay, on a per-iteration
    cosine schedule from the peak `lr` to 0 over `epochs`; `amp` an autocast dtype or None; `name` labels the
    progress bar and the errors."""
    epochs: int
    lr: float
    wd: float = 0.0
    nesterov: bool = False
    amp: torch.dtype | None = None
    name: str = "train"


def fit(clf: Classifier, train, sgd: Sgd, *, device, prep=None, progress: bool = False, scaler=None) -> list[float]:
    """Train the trainable part of `clf` on `train` (an iterable of (x, y) with set_epoch and len, already
    this rank's share) as `sgd` says; fp16 scales the loss (a GradScaler: `scaler`, or a new one), else small
    gradients underflow. -> every epoch's mean loss."""
    epochs, lr, amp, desc = sgd.epochs, sgd.lr, sgd.amp, sgd.name
    params = [p for p in clf.parameters() if p.requires_grad]
    net = torch.nn.parallel.DistributedDataParallel(clf) if dist.world() > 1 else clf
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=sgd.wd, nesterov=sgd.nesterov)
    scaler = scaler or grad_scaler(device.type, "fp16" if amp == torch.float16 else "off")
    steps = len(train)
    lr_s = warmup_cosine(lr, 0.0, max(1, epochs * steps), 0)
    losses = []
    for epoch in range(epochs):
        train.set_epoch(epoch) if hasattr(train, "set_epoch") else train.sampler.set_epoch(epoch)
        clf.train()
        total, n = torch.zeros((), device=device), 0
        bar = progress_bar(train, desc=f"{desc} {epoch + 1}/{epochs}", enabled=progress, leave=False,
                           file=sys.stdout)
        for it, (x, y) in enumerate(bar):
            for g in opt.param_groups:
                g["lr"] = lr_s[epoch * steps + it]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = prep(x) if prep else x
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = nn.functional.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.detach()
            n += 1
        mean = dist.all_reduce_mean(total / max(1, n)).item()
        if not math.isfinite(mean):
            from engine.errors import UsageError
            raise UsageError(f"{desc}: loss is {mean} at epoch {epoch + 1}: lower --lr")
        losses.append(mean)
    return losses


@torch.no_grad()
def evaluate(clf: Classifier, loader, device, prep=None, amp=None, sharded: bool = True) -> dict:
    """Top-1 and top-5 accuracy (%) over `loader`; sharded: each rank saw its share, counts are summed."""
    clf.eval()
    counts = torch.zeros(3, device=device, dtype=torch.float64)   # top-1 hits, top-5 hits, images
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = prep(x) if prep else x
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = clf(x).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == y[:, None]
        counts += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), torch.tensor(len(y), device=device)]).double()
    if sharded and dist.world() > 1:
        torch.distributed.all_reduce(counts)
    n = max(1.0, counts[2].item())
    return {"top1": 100.0 * counts[0].item() / n, "top5": 100.0 * counts[1].item() / n, "n": int(counts[2].item())}
