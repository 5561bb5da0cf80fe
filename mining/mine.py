"""Mine semantic positives once, offline, as the SePP paper does: a pre-trained encoder embeds the
unaugmented training set, the whole set is searched against itself, and each sample's top-k neighbours are
written to a pairs file that serves a whole training run (train.py --sepp-pairs FILE).

    python -m mining.mine --encoder runs/base/last.pt --dataset fashion-mnist --out pairs.pt --k 20
    python -m mining.mine --encoder moco_v2_800ep.pth.tar --arch resnet50 --dataset imagefolder \
        --data /data/imagenet --out imagenet_pairs.pt          # ResNet weights of MoCo, solo-learn, lightly, ...
    python -m mining.mine --encoder runs/base/last.pt --beton data/inet.beton --out pairs.pt   # a .beton run's
    torchrun --nproc_per_node=8 -m mining.mine ...                # embedding and search sharded over ranks

The file holds ids [N, k] (int32, -1 for none), their cosine similarities, and metadata: dataset, number of
samples and a fingerprint of the sample list (train.py refuses a file of other samples), the encoder, space,
k, resolution and git SHA; where labels exist also the mining quality: precision@1 and @k (same-label
neighbours) against chance, and a PNG histogram of the similarities of same- and different-label pairs.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from engine import ckpt, dist
from engine.errors import parser_error_one_line
from loaders.datasets import DEFAULT_RES
from loaders.embed import Images, extract_sharded
from engine.errors import UsageError, cli_main
from loaders.augment import DeviceAugment
from loaders.datasets import fingerprint
from loaders.splits import DataSpec, open_splits, recognised
from mining.encoders import load_encoder
from mining.index import BACKENDS, center, search_whole_set


def quality(labels: np.ndarray, ids: np.ndarray) -> dict:
    """Share of same-label neighbours at rank 1 and over all k, and what chance gives (sum of p_c^2)."""
    valid = ids >= 0
    same = (labels[np.clip(ids, 0, None)] == labels[:, None]) & valid
    freq = np.bincount(labels[labels >= 0]) / max(1, (labels >= 0).sum())
    return {"precision_at_1": float(same[:, 0].sum() / max(1, valid[:, 0].sum())),
            "precision_at_k": float(same.sum() / max(1, valid.sum())), "chance": float((freq ** 2).sum())}


def by_threshold(labels: np.ndarray, ids: np.ndarray, sims: np.ndarray, k: int = 5) -> list[dict]:
    """What --sepp-threshold T keeps of the first k neighbours (train.py's --sepp-k), for T at the deciles of
    the rank-1 similarities: the share of samples left with a positive candidate, and the share of kept
    candidates with the anchor's label."""
    ids, sims = ids[:, :k], sims[:, :k]
    valid = ids >= 0
    same = (labels[np.clip(ids, 0, None)] == labels[:, None]) & valid
    top = sims[valid[:, 0], 0]
    rows = []
    for q in range(0, 100, 10):
        t = float(np.percentile(top, q)) if top.size else 0.0
        keep = valid & (sims >= t)
        rows.append({"threshold": round(t, 4), "paired": float(keep.any(1).mean()),
                     "precision": float(same[keep].sum() / max(1, keep.sum()))})
    return rows


def histogram(labels, ids, sims, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    valid = ids >= 0
    same = (labels[np.clip(ids, 0, None)] == labels[:, None]) & valid
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(float(sims[valid].min()), float(sims[valid].max()), 60)
    ax.hist(sims[same], bins, alpha=0.6, label=f"same label ({same.sum()})")
    ax.hist(sims[valid & ~same], bins, alpha=0.6, label=f"different label ({(valid & ~same).sum()})")
    ax.set_xlabel("cosine similarity of a mined neighbour")
    ax.set_ylabel("pairs")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_error_one_line(p)
    p.add_argument("--encoder", required=True, help="RUN/last.pt[:momentum] or a ResNet state dict file")
    p.add_argument("--dataset", default=None, help="as train.py (default: what --data holds, or the .beton)")
    p.add_argument("--data", default=None)
    p.add_argument("--beton", default=None, help="the .beton a train.py --loader ffcv run trains on: its data set "
                   "(as train.py, --dataset and --data may be left out)")
    p.add_argument("--subset", type=int, default=0, help="as train.py: the same --subset and --seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-split", type=int, default=0, help="as train.py: mine the training part only")
    p.add_argument("--out", required=True, help="the pairs file (.pt)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--space", default="backbone", help="backbone | projector (our checkpoints)")
    p.add_argument("--center", action="store_true", help="centred cosines: subtract the set's mean embedding "
                   "before normalising (spreads post-ReLU similarities over [-1, 1]; train.py --sepp-center)")
    p.add_argument("--arch", default=None, help="only to check: the network is read from the weights")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None, help="only to check (as --arch)")
    p.add_argument("--stem-stride", type=int, default=1, help="foreign weights with a small stem: its stride (not "
                   "in the weights)")
    p.add_argument("--res", type=int, default=None, help="image size (default: the dataset's)")
    p.add_argument("--index", default="auto", help=" | ".join(BACKENDS))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 2))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


@cli_main
def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.k < 1 or a.space not in ("backbone", "projector") or a.index not in BACKENDS:
        raise UsageError(f"--k {a.k} --space {a.space} --index {a.index}: need k >= 1, a space of backbone | "
                         f"projector, an index of {' | '.join(BACKENDS)}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(a.out))):
        raise UsageError(f"--out {a.out}: no such directory")
    spec, found = recognised(DataSpec(a.dataset, a.data, a.subset, a.seed, a.val_split, beton=a.beton))
    device, rank, world = dist.init_device(a.device)
    if rank == 0:
        print(f"data: {found}", flush=True)
    a.dataset = spec.dataset
    splits = open_splits(spec)   # the samples train.py trains on: what it holds out to score is not mined
    source, a.val_split = splits.train, splits.val_split
    res = a.res or DEFAULT_RES.get(a.dataset, 224)
    encoder, desc = load_encoder(a.encoder, arch=a.arch, small_stem=a.small_stem, stem_stride=a.stem_stride,
                                 space=a.space)
    norm = DeviceAugment([], source.mean, source.std).plain
    feats, _ = extract_sharded(encoder.to(device), Images(source, res, norm, batch=a.batch_size, workers=a.workers),
                               device, progress=rank == 0 and not a.no_progress, desc="embedding")
    k = min(a.k, len(source) - 1)
    if a.center:
        feats = center(feats)
    sims, ids = search_whole_set(feats.half() if feats.is_cuda else feats, k=k, backend=a.index)
    ids, sims = ids.cpu().numpy().astype(np.int32), sims.cpu().numpy().astype(np.float32)
    labels = np.asarray(source.labels)
    meta = {"dataset": a.dataset, "beton": a.beton and os.path.abspath(a.beton), "n": len(source),
            "fingerprint": fingerprint(source), "subset": a.subset, "seed": a.seed, "val_split": a.val_split,
            "encoder": os.path.abspath(a.encoder), "encoder_desc": desc,
            "space": a.space, "centered": a.center, "k": k, "res": res, "dim": int(feats.shape[1]),
            "git_sha": ckpt.git_sha()}
    if (labels >= 0).any():
        meta["quality"] = dict(quality(labels, ids), by_threshold=by_threshold(labels, ids, sims))
    if rank == 0:
        ckpt.save_atomic({"ids": torch.from_numpy(ids), "sims": torch.from_numpy(sims), "meta": meta}, a.out)
        q = meta.get("quality")
        if q:
            png = os.path.splitext(a.out)[0] + "_sims.png"
            title = f"{a.dataset}: {desc.get('kind')} encoder, {a.space}{', centred' if a.center else ''}, k={k}"
            histogram(labels, ids, sims, path=png, title=title)
            print(f"mining quality: precision@1 {q['precision_at_1']:.1%}, precision@{k} {q['precision_at_k']:.1%} "
                  f"(chance {q['chance']:.1%}); similarities: {png}", flush=True)
            print("with --sepp-k 5, --sepp-threshold T keeps: "
                  + ", ".join(f"T={r['threshold']:.3f}: {r['paired']:.0%} paired at {r['precision']:.1%}"
                              for r in q["by_threshold"][::3]), flush=True)
        print(f"pairs: {a.out} ({len(source)} samples x {k} neighbours)", flush=True)
    dist.cleanup()
    return meta


if __name__ == "__main__":
    main()
