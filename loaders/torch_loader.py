"""The `torch` back end: a source on disk -> torch DataLoader workers that decode each image once and take
V random-resized crops of it (uint8) -> the device -> the shared device augmentation. Works anywhere."""
from __future__ import annotations

import os
import signal
import sys
import threading

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset

from engine.errors import DataError
from loaders.augment import DeviceAugment
from loaders.batch import RawBatch, set_plan
from loaders.crops import reduction, scaled_box, view_box
from loaders.datasets import reducible
from loaders.order import EpochOrder


class MultiCrop(Dataset):
    """Item (index, epoch) -> one sample: one decode (DCT-scaled by libjpeg when every crop is at least twice
    the output size), V random-resized crops, and with `augment` (a CPU run) their augmentation, in the worker.
    An unreadable file is replaced by the next readable sample (a fixed stride away) and reported."""

    def __init__(self, source, res: int, scales, seed: int, augment: DeviceAugment | None = None):
        self.source, self.res, self.scales, self.seed = source, res, tuple(scales), seed
        self.augment, self.reduce = augment, reducible(source)

    def __len__(self):
        return len(self.source)

    def boxes(self, i: int, epoch: int, height: int, width: int):
        return [view_box(self.seed, epoch, i, v, height=height, width=width, scale=s) for v, s in enumerate(self.scales)]

    def crops(self, i: int, epoch: int):
        """uint8 [V, C, res, res] crops of sample i and its label; DataError if its file cannot be decoded."""
        if self.reduce:
            boxes = []

            def reduce(height, width):   # the largest power of two that keeps every crop >= res
                boxes.extend(self.boxes(i, epoch, height, width))
                return reduction(min(min(h, w) for _, _, h, w in boxes) / self.res)
            img, label, (H, W) = self.source.load_reduced(i, reduce)
            sy, sx = img.shape[-2] / H, img.shape[-1] / W
            boxes = [scaled_box(*b, sy, sx, *img.shape[-2:]) for b in boxes]
        else:
            img, label = self.source.load(i)
            boxes = self.boxes(i, epoch, *img.shape[-2:])
        crops = [TF.resized_crop(img, t, l, h, w, [self.res, self.res], antialias=True) for t, l, h, w in boxes]
        return torch.stack(crops), label

    def __getitem__(self, item):
        i, epoch = item
        bad = []
        for j in substitutes(i, len(self.source)):
            try:
                views, label = self.crops(j, epoch)
                break
            except DataError as e:
                bad.append((j, str(e)))
        else:
            raise DataError(f"no readable image among {len(bad)} tried from sample {i}: {bad[0][1]}")
        if self.augment is not None:   # a CPU run: the augmentation here, overlapping the step
            views = torch.from_numpy(self.augment.sample_views(views.permute(0, 2, 3, 1).numpy(), j, epoch))
        return views, j, label, bad


def substitutes(i: int, n: int, tries: int = 16):
    """Sample i, then the samples that stand in for it when its file is unreadable (a fixed stride apart)."""
    for k in range(min(tries, n)):
        yield (i + k * 7919) % n


def collate(items):
    """Worker items -> (views [V, B, ...]: stacked on dim 1, so a worker's float views [V, H, W, 3] arrive as
    channels_last per view with no copy), index [B], label [B], and the unreadable files met."""
    first = items[0][0]
    out = None
    if torch.utils.data.get_worker_info() is not None:   # straight into shared memory, as default_collate does
        storage = first.untyped_storage()._new_shared(first.numel() * len(items) * first.element_size())
        out = first.new(storage).view(first.shape[0], len(items), *first.shape[1:])
    views = torch.stack([it[0] for it in items], dim=1, out=out)
    return (views, torch.tensor([it[1] for it in items]), torch.tensor([it[2] for it in items]),
            [b for it in items for b in it[3]])


class EpochBatches:
    """Batch sampler over the loader's EpochOrder: this rank's batches of the current epoch (from the resumed
    batch on), each item tagged with the epoch."""

    def __init__(self, order: EpochOrder):
        self.order = order

    def __iter__(self):
        for b in self.order.batches():
            yield [(int(i), self.order.epoch) for i in b]

    def __len__(self):
        return len(self.order)


def _stop_signals_to_the_main_process(_worker_id):
    """A preemption notice (SIGTERM / SIGUSR1 to the whole process group, from torchrun or SLURM) is the main
    process's: it finishes its step, checkpoints, then shuts its workers down; a worker killed by the notice
    would end the run with a DataLoader error instead. A SIGTERM from the main process itself (multiprocessing
    terminates its workers on the way out, as after an exception) still ends the worker: a worker deaf to it
    would hold the main process's exit until something kills both. The signals are blocked and read by a
    thread that knows who sent them (Linux; elsewhere the notice ends the workers too)."""
    if not hasattr(signal, "sigwaitinfo"):
        return
    signals, parent = {signal.SIGTERM, signal.SIGUSR1}, os.getppid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # not the main process's handler, inherited by the fork
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)

    def listen():
        while True:
            got = signal.sigwaitinfo(signals)
            if got.si_signo == signal.SIGTERM and got.si_pid == parent:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=listen, name="stop-signals", daemon=True).start()


class TorchLoader:
    resumes_mid_epoch = True

    def __init__(self, source, recipe, opts, device, augment: DeviceAugment, rank=0, world=1):
        self.source, self.device, self.augment = source, torch.device(device), augment
        seed, workers = opts.seed, opts.workers
        self.order = EpochOrder(len(source), opts.batch_size, rank=rank, world=world, seed=seed,
                                drop_last=opts.drop_last)
        self.sampler = EpochBatches(self.order)
        self.skipped: dict[int, str] = {}   # unreadable files met: sample -> why
        pin = self.device.type == "cuda"
        # On a CPU the workers augment too (loaders/augment_cpu.py), overlapping the step; on a GPU the device does.
        in_workers = augment if isinstance(augment, DeviceAugment) and augment.per_sample(self.device) else None
        # Its own generator: creating an iterator must not draw from the global RNG, which the device
        # augmentation uses (a resumed run creates its iterator at another point of that stream).
        gen = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(MultiCrop(source, opts.res, [a.crop_scale for a in recipe], seed, in_workers),
                                 batch_sampler=self.sampler, num_workers=workers, pin_memory=pin,
                                 persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                                 generator=gen, collate_fn=collate,
                                 worker_init_fn=_stop_signals_to_the_main_process if workers else None)

    set_plan = set_plan

    def set_epoch(self, epoch: int, skip: int = 0):
        """The next iteration is `epoch`'s, from its batch `skip` on (a mid-epoch resume)."""
        self.order.set_epoch(epoch, skip)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for views, index, label, bad in self.loader:
            self.report(bad)
            yield self.to_device(views, index, label)

    def report(self, bad):
        """One warning per unreadable file, the first time it is met (its sample is replaced in the batch)."""
        for i, why in bad:
            if i not in self.skipped:
                self.skipped[i] = why
                print(f"warning: skipped an unreadable image ({len(self.skipped)} so far): {why.split(' (')[0]}",
                      file=sys.stderr, flush=True)

    def to_device(self, views, index, label):
        """The device stage: a worker's batch (pinned on a GPU run) -> Batch, copied without waiting."""
        nb = self.device.type == "cuda"
        views, index, label = (t.to(self.device, non_blocking=nb) for t in (views, index, label))
        if views.dtype != torch.uint8:   # augmented in the workers
            return self.augment.finish(views.permute(0, 1, 4, 2, 3), index, label)
        return self.augment(RawBatch(views, index, label, epoch=self.order.epoch))
