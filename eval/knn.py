"""Weighted kNN classification on frozen features (Wu et al. 2018): each test image votes with its k most
similar training images, weight exp(cos / T), T = 0.07; k = 20 and 200 as the SSL papers report.

    python -m eval.knn --checkpoint RUN/last.pt [--data DIR] [--k 20,200] [--index auto]
    torchrun --nproc_per_node=8 -m eval.knn --checkpoint RUN/last.pt     # extraction sharded over ranks

The neighbour search is mining/index.py's (FAISS flat/IVF, GPU when faiss-gpu is present, or the exact
chunked torch search), so it scales to ImageNet (1.28M training features).
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from loaders.datasets import DEFAULT_RES
from loaders.embed import Images, extract_sharded
from engine.errors import UsageError, cli_main
from eval.features import STEM_STRIDE_HELP, eval_sources, load_run
from eval.subset import digest, pick
from mining.index import BACKENDS, search


@torch.no_grad()
def knn_predict(train_f, train_y, test_f, num_classes, *, k=(200,), temperature=0.07, backend="torch") -> dict:
    """{k: class scores [N_test, C]}: for each k, the sum over the k most similar training features of
    exp(sim / T). One search for the largest k serves every k."""
    ks = [k] if isinstance(k, int) else list(k)
    kmax = min(max(ks), train_f.shape[0])
    sims, ids = search(test_f, train_f, k=kmax, threshold=float("-inf"), backend=backend)
    w = (sims / temperature).exp().masked_fill(ids < 0, 0.0)
    votes = train_y[ids.clamp(min=0)]
    out = {}
    for kk in ks:
        kk = min(kk, kmax)
        scores = torch.zeros(test_f.shape[0], num_classes, device=test_f.device)
        out[kk] = scores.scatter_add_(1, votes[:, :kk], w[:, :kk])
    return out


def knn_scores(train, test, num_classes, ks=(20, 200), temperature=0.07, backend="auto") -> dict:
    """{k: top-1 accuracy (%)} from (features, labels) pairs."""
    res = knn_predict(train[0], train[1], test[0], num_classes, k=ks, temperature=temperature, backend=backend)
    return {k: 100.0 * (s.argmax(1) == test[1]).float().mean().item() for k, s in res.items()}


def knn_accuracy(encoder, train: Images, test: Images, device, *, k=200, temperature=0.07, progress=False):
    """Top-1 kNN accuracy (%) of `encoder` (the exact torch search). Under torchrun every rank must call it:
    extraction is sharded, every rank gets the answer."""
    tr = extract_sharded(encoder, train, device, progress=progress, desc="kNN train features")
    te = extract_sharded(encoder, test, device, progress=progress, desc="kNN test features")
    acc = knn_scores(tr, te, train.source.num_classes, ks=(k,), temperature=temperature, backend="torch")
    return acc[min(k, len(tr[0]))]


@cli_main
def main(argv=None):
    from engine import dist
    from engine.errors import parser_error_one_line
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_error_one_line(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--stem-stride", type=int, default=1, help=STEM_STRIDE_HELP)
    p.add_argument("--data", default=None, help="dataset root (default: the one the run trained on)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--k", default="20,200", help="comma-separated neighbour counts")
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--index", default="auto", help=" | ".join(BACKENDS))
    p.add_argument("--n-train", type=int, default=0, help="subset of training images (0: all)")
    p.add_argument("--n-test", type=int, default=0)
    p.add_argument("--res", type=int, default=None, help="image size (default: the run's)")
    p.add_argument("--random-init", action="store_true", help="also score the same arch at random init")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 2))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", default=None, help="write results here (default: next to the checkpoint, "
                   "eval_knn.json)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        ks = sorted({int(x) for x in a.k.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--k {a.k}: expected comma-separated integers, e.g. 20,200")
    if not ks or min(ks) < 1:
        raise UsageError(f"--k {a.k}: neighbour counts must be >= 1")
    if a.index not in BACKENDS:
        raise UsageError(f"--index {a.index}: choose from {', '.join(BACKENDS)}")
    device, rank, world = dist.init_device(a.device)
    cfg, _ = load_run(a.checkpoint, stem_stride=a.stem_stride)
    train_src, test_src, norm = eval_sources(cfg, a.dataset, a.data)
    res = a.res or cfg["res"] or DEFAULT_RES.get(train_src.name, 224)
    i_tr, i_te = pick(a.n_train, len(train_src)), pick(a.n_test, len(test_src))
    out = {"checkpoint": os.path.abspath(a.checkpoint), "temperature": a.temperature, "index": a.index,
           "n_train": len(train_src) if i_tr is None else len(i_tr),
           "n_test": len(test_src) if i_te is None else len(i_te), "test_subset": digest(i_te, len(test_src)),
           "world": world}
    train = Images(train_src, res, norm, indices=i_tr, batch=a.batch_size, workers=a.workers)
    test = Images(test_src, res, norm, indices=i_te, batch=a.batch_size, workers=a.workers)
    for name in ["trained"] + (["random-init"] if a.random_init else []):
        _, model = load_run(a.checkpoint, random_init=name == "random-init", stem_stride=a.stem_stride)
        enc = model.backbone.to(device)
        show = rank == 0 and not a.no_progress
        tr = extract_sharded(enc, train, device, progress=show, desc="train features")
        te = extract_sharded(enc, test, device, progress=show, desc="test features")
        acc = knn_scores(tr, te, train_src.num_classes, ks=ks, temperature=a.temperature, backend=a.index)
        out[name] = {f"k{k}": v for k, v in acc.items()}
        if rank == 0:
            print(f"kNN {name} (T={a.temperature}): " + ", ".join(f"k={k} {v:.2f}%" for k, v in acc.items()),
                  flush=True)
    if rank == 0:
        path = a.json or os.path.join(os.path.dirname(os.path.abspath(a.checkpoint)), "eval_knn.json")
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
    dist.cleanup()
    return out


if __name__ == "__main__":
    main()
