"""The `torch` back end: a source on disk -> torch DataLoader workers that decode each image once and take
V random-resized crops of it (uint8) -> the device -> the shared device augmentation. Works anywhere."""
from __future__ import annotations

import os
import signal
import threading

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset

from loaders.augment import DeviceAugment
from loaders.batch import RawBatch, set_plan
from loaders.crops import view_box
from loaders.order import EpochOrder


class MultiCrop(Dataset):
    """Item (index, epoch) -> (uint8 [V, C, res, res], index, label): one decode, V crops."""

    def __init__(self, source, res: int, scales, seed: int):
        self.source, self.res, self.scales, self.seed = source, res, tuple(scales), seed

    def __len__(self):
        return len(self.source)

    def __getitem__(self, item):
        i, epoch = item
        img, label = self.source.load(int(i))
        H, W = img.shape[-2:]
        crops = []
        for v, scale in enumerate(self.scales):
            t, l, h, w = view_box(self.seed, epoch, int(i), v, height=H, width=W, scale=scale)
            crops.append(TF.resized_crop(img, t, l, h, w, [self.res, self.res], antialias=True))
        return torch.stack(crops), int(i), label


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
        pin = self.device.type == "cuda"
        # Its own generator: creating an iterator must not draw from the global RNG, which the device
        # augmentation uses (a resumed run creates its iterator at another point of that stream).
        gen = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(MultiCrop(source, opts.res, [a.crop_scale for a in recipe], seed),
                                 batch_sampler=self.sampler, num_workers=workers, pin_memory=pin,
                                 persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                                 generator=gen,
                                 worker_init_fn=_stop_signals_to_the_main_process if workers else None)

    set_plan = set_plan

    def set_epoch(self, epoch: int, skip: int = 0):
        """The next iteration is `epoch`'s, from its batch `skip` on (a mid-epoch resume)."""
        self.order.set_epoch(epoch, skip)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for views, index, label in self.loader:
            yield self.to_device(views, index, label)

    def to_device(self, views, index, label):
        """The device stage: a worker's batch (pinned on a GPU run) -> Batch, copied without waiting."""
        nb = self.device.type == "cuda"
        raw = RawBatch(views.to(self.device, non_blocking=nb).transpose(0, 1),
                       index.to(self.device, non_blocking=nb), label.to(self.device, non_blocking=nb))
        return self.augment(raw)
