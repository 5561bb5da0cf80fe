"""Weighted kNN classification on frozen features (Wu et al. 2018: k=200, weights exp(cos/0.07)).

    python -m eval.knn --checkpoint RUN/last.pt [--data DIR] [--k 200] [--random-init]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.errors import UsageError, cli_main


@torch.no_grad()
def extract(encoder, loader, normalize, device, progress=False, desc="features"):
    """-> (L2-normalized float32 features [N, D], labels [N]) of a plain (no augmentation) loader."""
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        f = encoder(normalize(x.to(device, non_blocking=True)))
        feats.append(F.normalize(f.float(), dim=1))
        labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(train_f, train_y, test_f, num_classes, k=200, temperature=0.07, chunk=1024):
    """Class scores [N_test, C]: sum over the k most similar training features of exp(sim / T)."""
    k = min(k, train_f.shape[0])
    out = []
    for q in test_f.split(chunk):
        sim, idx = (q @ train_f.T).topk(k, dim=1)
        w = (sim / temperature).exp()
        scores = torch.zeros(q.shape[0], num_classes, device=q.device)
        scores.scatter_add_(1, train_y[idx], w)
        out.append(scores)
    return torch.cat(out)


def knn_accuracy(encoder, train_src, test_src, res, normalize, device, k=200, temperature=0.07,
                 n_train=0, n_test=0, seed=0, workers=2, progress=False):
    """Top-1 kNN accuracy (%) of `encoder`, on fixed seeded subsets when n_train / n_test > 0."""
    from loaders import plain_loader
    rng = np.random.default_rng(seed)
    pick = lambda n, N: np.sort(rng.permutation(N)[:n]) if 0 < n < N else None  # noqa: E731
    was = encoder.training
    encoder.eval()
    tr = extract(encoder, plain_loader(train_src, res, workers=workers, indices=pick(n_train, len(train_src))),
                 normalize, device, progress, "kNN train features")
    te = extract(encoder, plain_loader(test_src, res, workers=workers, indices=pick(n_test, len(test_src))),
                 normalize, device, progress, "kNN test features")
    encoder.train(was)
    pred = knn_predict(tr[0], tr[1], te[0], train_src.num_classes, k, temperature).argmax(1)
    return 100.0 * (pred == te[1]).float().mean().item()


@cli_main
def main(argv=None):
    from engine import ckpt as ck
    from engine.config import build_model_from_config, parser_error_one_line
    from loaders.augment import DeviceAugment
    from loaders.datasets import open_source
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_error_one_line(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, help="dataset root (default: the one the run trained on)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--n-train", type=int, default=0, help="subset of training images (0: all)")
    p.add_argument("--n-test", type=int, default=0)
    p.add_argument("--random-init", action="store_true", help="also score the same arch at random init")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=4)
    a = p.parse_args(argv)
    state = ck.load(a.checkpoint)
    cfg = state.get("config")
    if cfg is None:
        raise UsageError(f"{a.checkpoint}: no config inside; is it a checkpoint of this project's train.py?")
    dataset, data = a.dataset or cfg["dataset"], a.data or cfg["data"]
    train_src, test_src = open_source(dataset, data, True), open_source(dataset, data, False)
    norm = DeviceAugment([], train_src.mean, train_src.std).plain
    device = torch.device(a.device)
    rows = []
    for name in (["trained"] + (["random-init"] if a.random_init else [])):
        model = build_model_from_config(cfg).to(device)
        if name == "trained":
            model.load_state_dict(state["model"])
        acc = knn_accuracy(model.backbone, train_src, test_src, cfg["res"], norm, device, a.k, a.temperature,
                           a.n_train, a.n_test, cfg["seed"], a.workers, progress=True)
        rows.append((name, acc))
        print(f"kNN (k={a.k}, T={a.temperature}) {name}: {acc:.2f}%", flush=True)
    return rows


if __name__ == "__main__":
    main()
