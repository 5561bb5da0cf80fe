"""Why the torch loader read ~30% slower inside eval.bench than timed on its own (issue 21): the same loader
(the demo config's: Fashion-MNIST 8192, 28 px, batch 256, 2 workers) timed five ways in one process, each
twice, with a fresh loader each time:

    .venv/bin/python scripts/bench_torch_alone.py

- old bench: one pass of 20 batches after 3 warm-up batches (what eval.bench did before), with and without
  its host-memory sampler (PeakHost);
- a fresh iterator per pass, median of 3 passes (how it was timed "on its own");
- one stream (one iterator, as eval.bench does now): 3 windows of 20 batches after the warm-up, median,
  with and without PeakHost.
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from eval import bench  # noqa: E402
import flags  # noqa: E402
from loaders import build_loader  # noqa: E402
from loaders.augment import RECIPES  # noqa: E402
from loaders.datasets import open_source  # noqa: E402


def main():
    a = bench.build_parser().parse_args(["--config", "configs/fashion_demo.yaml", "--workers", "2"])
    t = bench.train_args(a)
    warmup, steps, dev = t.workers + 1, 20, torch.device("cpu")
    src = open_source(t.dataset, t.data, train=True, subset=t.subset, seed=t.seed)

    def loader():
        return build_loader(flags.loader_options(t, t.batch_size, res=t.res, seed=0), src, RECIPES["simclr"], dev)

    def windows(ld):
        s = bench.Stream(ld)
        for _ in range(warmup):
            s.next()
        return statistics.median(bench.window(s, steps, dev)["img_s"] for _ in range(3))

    ways = {"old bench: one pass of 20 after 3": lambda: bench.timed(loader(), steps, warmup, dev)[0],
            "old bench, with PeakHost": lambda: with_peak(lambda: bench.timed(loader(), steps, warmup, dev)[0]),
            "fresh iterator per pass, median of 3": lambda: statistics.median(
                bench.timed(ld, steps, warmup, dev)[0] for ld in [loader()] for _ in range(3)),
            "one stream, median of 3 windows (eval.bench now)": lambda: windows(loader()),
            "one stream, median of 3 windows, with PeakHost": lambda: with_peak(lambda: windows(loader()))}
    res = {k: [] for k in ways}
    for _ in range(2):
        for k, f in ways.items():
            res[k].append(f())
    for k, v in res.items():
        print(f"{k:50s} " + " ".join(f"{x:6.0f}" for x in v) + " img/s")


def with_peak(f):
    with bench.PeakHost():
        return f()


if __name__ == "__main__":
    main()
