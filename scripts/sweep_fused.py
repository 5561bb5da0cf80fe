"""Time the tile-max kernel of mining/fused.py under launch settings (GPU): a 131072-query chunk against
N keys, the search's hot loop. Prints one line per setting, fastest last.

    python scripts/sweep_fused.py --n 1280000 --dim 128
"""
import argparse
import itertools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mining import fused  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=1280000)
p.add_argument("--dim", type=int, default=128)
p.add_argument("--rows", type=int, default=131072)
a = p.parse_args()
keys = torch.nn.functional.normalize(torch.randn(a.n, a.dim, device="cuda"), dim=1).bfloat16()
q = keys[:a.rows]
res = []
for bm, bn, tiles, warps, stages in itertools.product((64, 128), (64, 128, 256), (16, 64), (4, 8), (2, 3)):
    try:
        fused.tile_maxima(q, keys, bn=bn, bm=bm, tiles=tiles, num_warps=warps, num_stages=stages)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            fused.tile_maxima(q, keys, bn=bn, bm=bm, tiles=tiles, num_warps=warps, num_stages=stages)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / 3 * a.n / a.rows
    except Exception as e:   # out of shared memory / registers for this setting
        print(f"bm {bm} bn {bn} tiles {tiles} warps {warps} stages {stages}: {type(e).__name__}", flush=True)
        continue
    res.append((dt, bm, bn, tiles, warps, stages))
    print(f"bm {bm} bn {bn} tiles {tiles} warps {warps} stages {stages}: whole set {dt:.3f} s", flush=True)
for r in sorted(res, reverse=True)[-5:]:
    print("best: %.3f s  bm %d bn %d tiles %d warps %d stages %d" % r)
