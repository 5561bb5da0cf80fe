"""Semi-supervised evaluation: fine-tune the whole backbone + a linear head on a labelled fraction of the
training set, top-1 / top-5 on the full test set (the 1% / 10% tables of SimCLR, BYOL, and the seeds).

    python -m eval.semisup --checkpoint RUN/last.pt --fraction 0.01
    torchrun --nproc_per_node=8 -m eval.semisup --checkpoint RUN/last.pt --data /data/imagenet --fraction 0.1 \\
        [--subset-file 10percent.txt]

The labelled subset is class-balanced (the same number of images from every class) and fixed by --seed;
--subset-file takes a published split instead (one image file name per line, as SimCLR's 1percent.txt).
Protocol as SimCLR's appendix: SGD with Nesterov momentum, no weight decay, cosine schedule, random-resized
crop + flip only; 60 epochs for 1%, 30 for 10%; BatchNorm trains with the backbone.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from engine import dist
from engine.errors import UsageError, cli_main
from eval.classify import Classifier, Sgd, evaluate, fit
from loaders.embed import feature_dim
from eval.features import labelled_loader, load_run, scoring_loader
from eval.linear import build_parser, save, setup


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced labelled subset: round(fraction * N / C) images (at least 1) from
    every class (all of a class that has fewer), picked by a seeded permutation within each class."""
    labels = np.asarray(labels)
    if not 0 < fraction <= 1:
        raise UsageError(f"--fraction {fraction}: must be in (0, 1], e.g. 0.01 or 0.1")
    classes = np.unique(labels)
    per = max(1, int(round(fraction * len(labels) / len(classes))))
    rng = np.random.default_rng([seed, 7919])
    pick = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes]
    return np.sort(np.concatenate(pick))


def subset_from_file(source, path: str) -> np.ndarray:
    """Indices of the images named in `path` (file names, one per line; matched by base name)."""
    if not os.path.isfile(path):
        raise UsageError(f"--subset-file {path}: no such file")
    files = getattr(source, "files", None)
    if files is None:
        raise UsageError("--subset-file needs an image-file dataset (imagefolder or filelist)")
    with open(path) as f:
        want = {os.path.basename(x.split()[0]) for x in f if x.strip()}
    idx = np.asarray([i for i, p in enumerate(files) if os.path.basename(p) in want], dtype=np.int64)
    if len(idx) == 0:
        raise UsageError(f"--subset-file {path}: none of its {len(want)} names is in the training set")
    if len(idx) < len(want) and dist.rank() == 0:
        print(f"note: {len(want) - len(idx)} of the {len(want)} names in {path} are not in the training set")
    return idx


@cli_main
def main(argv=None):
    p = build_parser(__doc__)
    p.add_argument("--fraction", type=float, default=0.01, help="labelled fraction, e.g. 0.01 or 0.1")
    p.add_argument("--subset-file", default=None, help="a published split instead of the seeded subset")
    p.add_argument("--epochs", type=int, default=None, help="(default: 60 for <= 1%%, 30 above)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate per 256 images")
    p.add_argument("--wd", type=float, default=0.0)
    a = p.parse_args(argv)
    device, rank, world, cfg, train_src, test_src, norm, amp = setup(a)
    idx = (subset_from_file(train_src, a.subset_file) if a.subset_file
           else balanced_subset(train_src.labels, a.fraction, a.seed))
    epochs = a.epochs or (60 if a.fraction <= 0.01 else 30)
    per_rank = a.batch_size // world
    if len(idx) < a.batch_size:
        raise UsageError(f"the labelled subset has {len(idx)} images, fewer than --batch-size {a.batch_size}: "
                         "lower --batch-size")
    counts = np.bincount(np.asarray(train_src.labels)[idx], minlength=train_src.num_classes)
    out = {"checkpoint": os.path.abspath(a.checkpoint), "fraction": a.fraction, "subset_file": a.subset_file,
           "labelled": int(len(idx)), "per_class": [int(counts.min()), int(counts.max())], "seed": a.seed,
           "epochs": epochs, "lr": a.lr, "batch_size": a.batch_size, "aug": a.aug, "world": world,
           "method": cfg["method"], "arch": cfg["arch"]}
    if rank == 0:
        print(f"semi-supervised: {len(idx)} labelled images ({counts.min()}-{counts.max()} per class), "
              f"{epochs} epochs", flush=True)
    for name in ["trained"] + (["random-init"] if a.random_init else []):
        _, model = load_run(a.checkpoint, random_init=name == "random-init", stem_stride=a.stem_stride)
        backbone = model.backbone.to(device)
        torch.manual_seed(a.seed)
        clf = Classifier(backbone, feature_dim(backbone, a.res),
                         train_src.num_classes, frozen=False, norm=torch.nn.Identity()).to(device)
        if world > 1 and device.type == "cuda":
            clf = torch.nn.SyncBatchNorm.convert_sync_batchnorm(clf)
        train = labelled_loader(train_src, a.res, per_rank, indices=idx, aug=a.aug, workers=a.workers, seed=a.seed)
        sgd = Sgd(epochs, lr=a.lr * a.batch_size / 256, wd=a.wd, nesterov=True, amp=amp, name="fine-tune")
        losses = fit(clf, train, sgd, device=device, prep=norm, progress=rank == 0 and not a.no_progress)
        test = scoring_loader(test_src, a.res, per_rank, indices=a.test_idx, workers=a.workers)
        r = evaluate(clf, test, device, prep=norm, amp=amp) | {"losses": losses}
        out[name] = r
        if rank == 0:
            print(f"semi-supervised {name} ({a.fraction:g} labelled, {epochs} epochs): top-1 {r['top1']:.2f}%, "
                  f"top-5 {r['top5']:.2f}% on {r['n']} test images", flush=True)
    save(a, f"eval_semisup_{a.fraction:g}.json", out)
    dist.cleanup()
    return out


if __name__ == "__main__":
    main()
