"""Run under torchrun (gloo): each rank iterates a loader for some epochs and saves the sample indices it saw.

    python -m torch.distributed.run --nproc_per_node=2 tests/dump_indices.py --loader ffcv --beton F --out DIR
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loaders import LoaderOptions, build_loader  # noqa: E402
from loaders.augment import RECIPES  # noqa: E402
from loaders.datasets import open_source  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--loader", default="ffcv")
p.add_argument("--dataset", default="fashion-mnist")
p.add_argument("--data", default=None)
p.add_argument("--subset", type=int, default=0)
p.add_argument("--beton", default=None)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--res", type=int, default=16)
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--out", required=True)
a = p.parse_args()
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
if world > 1:
    dist.init_process_group("gloo")
src = open_source(a.dataset, a.data, True, a.subset, 0)
loader = build_loader(LoaderOptions(a.loader, a.res, a.batch, seed=0, workers=1, beton=a.beton),
                      src, RECIPES["simclr"], "cpu", rank, world)
for ep in range(a.epochs):
    loader.set_epoch(ep)
    seen, steps = [], 0
    for b in loader:
        assert b.views.shape[:2] == (2, a.batch) and torch.isfinite(b.views).all()
        seen.append(b.index.numpy().copy())
        steps += 1
    assert steps == len(loader), (steps, len(loader))
    np.save(os.path.join(a.out, f"r{rank}_e{ep}.npy"), np.concatenate(seen))
if world > 1:
    dist.barrier()
    dist.destroy_process_group()
