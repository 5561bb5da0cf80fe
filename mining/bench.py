"""Whole-set kNN benchmark for SePP's refresh: N synthetic clustered embeddings searched against themselves.

    python -m mining.bench --n 1280000 --dim 128 --k 5 --backends torch,torch-plain   # GPU host
    python -m mining.bench --n 100000 --backends torch,faiss,faiss-ivf                # CPU

torch = chunked matmul + block top-k (exact; bf16 scores on GPU); torch-plain = the same with one plain
topk over each full row (the baseline); faiss = exact flat index; faiss-ivf = IVF, with its recall@k
against exact search on the first 2000 queries.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from mining import index as mi


def embeddings(n, d, device, seed=0, clusters=1000):
    g = torch.Generator(device="cpu").manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(clusters, d, generator=g), dim=1)
    x = centers[torch.randint(0, clusters, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g) / d ** 0.5
    return torch.nn.functional.normalize(x, dim=1).to(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--backends", default="torch,torch-plain,faiss,faiss-ivf")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = embeddings(a.n, a.dim, dev)
    keys = x.to(torch.bfloat16) if dev.type == "cuda" else x
    res = {"n": a.n, "dim": a.dim, "k": a.k, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "results": {}}
    exact = None
    for name in [b.strip() for b in a.backends.split(",") if b.strip()]:
        if name.startswith("faiss") and mi._faiss() is None:
            print(f"{name}: faiss not installed, skipped")
            continue
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        if name == "torch-plain":
            out = []
            for s in range(0, a.n, a.chunk):
                out.append((x[s:s + a.chunk].to(keys.dtype) @ keys.T).topk(a.k + 1, dim=1).indices)
            ids = torch.cat(out)[:, 1:]
        elif name == "torch":
            ids = mi.search_torch(x, keys, a.k + 1, a.chunk)[1][:, 1:]
        else:
            ids = mi.search(x, k=a.k, backend=name, exclude_self=True, nprobe=a.nprobe)[1]
        sync()
        dt = time.perf_counter() - t
        r = {"seconds": dt}
        if name in ("torch", "faiss") and exact is None:
            exact = ids[:2000].cpu()
        if name == "faiss-ivf" and exact is not None:
            r["recall_at_k"] = mi.recall(ids[:2000].cpu(), exact)
        res["results"][name] = r
        print(f"{name:<12} {dt:8.2f} s" + (f"  recall@{a.k} {r['recall_at_k']:.3f}" if "recall_at_k" in r else ""),
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
