"""Run logs: per-step CSV + TensorBoard on rank 0, and meters for throughput and data-wait."""
from __future__ import annotations

import csv
import os
import time


class RunLog:
    def __init__(self, out: str, enabled: bool, tensorboard: bool = True):
        self.enabled, self.files, self.tb = enabled, {}, None
        self.out = out
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(out, "tb"))
            except ImportError:
                self.tb = None

    def write(self, kind: str, row: dict, step: int):
        """Append a row to OUT/<kind>.csv (header on first write) and scalars to TensorBoard."""
        if not self.enabled:
            return
        path = os.path.join(self.out, f"{kind}.csv")
        if kind not in self.files:
            new = not os.path.exists(path) or os.path.getsize(path) == 0
            header = list(row)
            if not new:   # a resumed run goes on under the file's own header (one written by an older version too)
                with open(path, newline="") as old:
                    header = next(csv.reader(old), None) or header
            f = open(path, "a", newline="")
            w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore", restval="")
            if new:
                w.writeheader()
            self.files[kind] = (f, w)
        f, w = self.files[kind]
        w.writerow(row)
        f.flush()
        if self.tb:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self):
        for f, _ in self.files.values():
            f.close()
        if self.tb:
            self.tb.close()


class Throughput:
    """Images/s and the fraction of wall time spent waiting for the loader, over a logging window."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.t0, self.wait, self.images = time.perf_counter(), 0.0, 0

    def waited(self, seconds: float, images: int):
        self.wait += seconds
        self.images += images

    def read(self) -> tuple[float, float]:
        dt = max(1e-9, time.perf_counter() - self.t0)
        out = (self.images / dt, self.wait / dt)
        self.reset()
        return out
