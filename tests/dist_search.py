"""Run under torchrun (gloo) or alone: the whole-set search (each rank searches its share of the queries,
the answers are all-gathered); rank 0 saves the ids and every rank checks it holds the same answer.

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_search.py --n 1001 --backend torch --out F
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engine import dist  # noqa: E402
from mining.index import search_whole_set  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=1001)
p.add_argument("--backend", default="torch")
p.add_argument("--out", required=True)
a = p.parse_args()
rank, world, _ = dist.init("cpu")
x = torch.nn.functional.normalize(torch.randn(a.n, 24, generator=torch.Generator().manual_seed(0)), dim=1)
sims, ids = search_whole_set(x, k=4, threshold=0.2, backend=a.backend)
assert ids.shape == (a.n, 4)
if world > 1:
    mine = ids.clone()
    torch.distributed.broadcast(ids, src=0)
    assert torch.equal(mine, ids), f"rank {rank} holds another answer"
if rank == 0:
    np.save(a.out, ids.numpy())
dist.cleanup()
