"""The `device` back end: a small in-memory dataset (Fashion-MNIST, CIFAR-10, STL-10) held whole as one uint8
tensor on the training device, made once. Each step gathers the batch's images on the device and cuts
V random-resized crops of all of them in one batched resample: no worker processes, no per-sample Python,
no host-to-device copy per step (the epoch's order and crop boxes go over once per epoch).

The order is the one every back end shares (loaders/order.py, or SePP's pair plan), the crops are the
(seed, epoch, sample, view) stream of loaders/crops.py, and the resample is the torch loader's
(TF.resized_crop, bilinear, antialiased where a crop is shrunk) written as two weight matrices per sample:
view = Wy @ image @ Wx^T, with the weights torch's antialiased bilinear kernel gives. So a sample's views
equal the torch loader's up to uint8 rounding.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.errors import UsageError
from loaders.augment import DeviceAugment
from loaders.batch import RawBatch, set_plan
from loaders.crops import crop_boxes
from loaders.datasets import array_rows
from loaders.order import EpochOrder


def resample_weights(start: torch.Tensor, length: torch.Tensor, size: int, out: int) -> torch.Tensor:
    """float32 [B, out, size]: row i of sample b resamples input[start_b : start_b + length_b] (of an axis of
    `size` pixels) to `out` pixels, as torch's antialiased bilinear interpolation (aten's
    _upsample_bilinear2d_aa: a triangle filter widened by the scale when shrinking, cut at the crop's border,
    each row normalised). Upscaling gives plain bilinear (align_corners=False, border clamped)."""
    scale = (length.double() / out).view(-1, 1, 1)                       # input pixels per output pixel
    support = scale.clamp(min=1.0)
    inv = 1.0 / support
    center = scale * (torch.arange(out, device=start.device, dtype=torch.float64).view(1, -1, 1) + 0.5)
    lo = (center - support + 0.5).floor().clamp(min=0)
    hi = torch.minimum((center + support + 0.5).floor(), length.double().view(-1, 1, 1))
    u = torch.arange(size, device=start.device, dtype=torch.float64).view(1, 1, -1) - start.double().view(-1, 1, 1)
    w = (1 - ((u - center + 0.5) * inv).abs()).clamp(min=0) * ((u >= lo) & (u < hi))
    return (w / w.sum(-1, keepdim=True)).float()


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, res: int) -> torch.Tensor:
    """uint8 [B, C, H, W] and int boxes [B, 4] (top, left, h, w) -> uint8 [B, C, res, res], every crop
    resampled to res x res in two batched matrix products."""
    B, C, H, W = images.shape
    wy = resample_weights(boxes[:, 0], boxes[:, 2], H, res)              # [B, res, H]
    wx = resample_weights(boxes[:, 1], boxes[:, 3], W, res)              # [B, res, W]
    x = images.float()
    x = torch.matmul(wy.unsqueeze(1), x)                                 # [B, C, res, W]
    x = torch.matmul(x, wx.unsqueeze(1).transpose(-1, -2))               # [B, C, res, res]
    return x.round_().clamp_(0, 255).to(torch.uint8)


def resident_images(source) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, C, H, W], labels) of an in-memory source (or a subset of one); else UsageError."""
    images = array_rows(source)
    if images is None:
        raise UsageError(f"`loader` device holds in-memory datasets (fashion-mnist, cifar10, stl10) on the device; "
                         f"{source.name} is read from files: use `loader` ffcv or dali")
    return images, np.asarray(source.labels)


def check_fits(nbytes: int, device: torch.device, fraction: float):
    """The dataset may take at most `fraction` of the free memory of the device (host memory for cpu)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        where = f"free GPU memory on {device}"
    else:
        import psutil
        free = psutil.virtual_memory().available
        where = "available host memory"
    if nbytes > fraction * free:
        raise UsageError(f"`loader` device: the training set is {nbytes / 2**30:.2f} GiB, more than "
                         f"{fraction:.0%} of the {free / 2**30:.2f} GiB of {where} (`device_max_fraction`); "
                         f"use `loader` ffcv or dali for data that does not fit")


class DeviceLoader:
    resumes_mid_epoch = True

    def __init__(self, source, recipe, opts, device, augment: DeviceAugment, rank=0, world=1):
        self.device, self.augment, self.res = torch.device(device), augment, opts.res
        self.seed, self.scales = opts.seed, [a.crop_scale for a in recipe]
        images, labels = resident_images(source)
        check_fits(images.nbytes, self.device, opts.device_max_fraction)
        self.n, (_, _, self.H, self.W) = len(images), images.shape
        self.images = torch.from_numpy(images).to(self.device)   # once
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        self.order = EpochOrder(self.n, opts.batch_size, rank=rank, world=world, seed=opts.seed,
                                drop_last=opts.drop_last)

    set_plan = set_plan

    def set_epoch(self, epoch: int, skip: int = 0):
        """The next iteration is `epoch`'s, from its batch `skip` on (a mid-epoch resume)."""
        self.order.set_epoch(epoch, skip)

    def __len__(self):
        return len(self.order)

    def epoch_tables(self, epoch: int):
        """This rank's batches [steps, B] (from the resumed batch on) and every sample's boxes [V, N, 4] of an
        epoch, on the device."""
        parts = self.order.batches(epoch)
        flat = torch.as_tensor(np.concatenate(parts) if parts else np.zeros(0, np.int64), device=self.device)
        boxes = np.stack([crop_boxes(self.seed, epoch, np.arange(self.n), v, height=self.H, width=self.W, scale=s)
                          for v, s in enumerate(self.scales)])
        return flat.split([len(p) for p in parts]), torch.as_tensor(boxes, device=self.device)

    def __iter__(self):
        batches, boxes = self.epoch_tables(self.order.epoch)
        for idx in batches:
            yield self.make_batch(idx, boxes)

    def make_batch(self, idx: torch.Tensor, boxes: torch.Tensor):
        """One step's batch from the resident images, all on the device: gather, V crops, augmentation."""
        imgs = self.images[idx]
        views = torch.stack([resized_crops(imgs, boxes[v, idx], self.res) for v in range(len(self.scales))])
        return self.augment(RawBatch(views, idx, self.labels[idx], epoch=self.order.epoch))
