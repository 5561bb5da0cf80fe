"""Linear probe: a linear classifier on the frozen backbone's pooled features, top-1 / top-5 on the test set.

    python -m eval.linear --checkpoint RUN/last.pt                    # the run's dataset; results in RUN/
    torchrun --nproc_per_node=8 -m eval.linear --checkpoint RUN/last.pt --data /data/imagenet --mode images

Two modes, same classifier (fixed-statistics normalization + linear, SGD momentum 0.9, cosine schedule):
- features (default up to 200k training images): the features of the whole images are extracted once
  (sharded over ranks) and the classifier trains on them: seconds for Fashion-MNIST or CIFAR.
- images (the ImageNet protocol): every step forwards augmented crops (random-resized crop + flip) through
  the frozen backbone (eval mode), the classifier normalizes with BatchNorm without affine (as MAE).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import torch

from engine import dist
from engine.errors import parser_error_one_line
from loaders.datasets import DEFAULT_RES
from engine.errors import UsageError, cli_main
from engine.precision import AMP_DTYPES, amp_dtype, default_amp
from eval.classify import Classifier, Sgd, Standardize, TensorBatches, evaluate, fit
from loaders.embed import Images, extract_sharded, feature_dim
from eval.features import STEM_STRIDE_HELP, eval_sources, labelled_loader, load_run, scoring_loader
from eval.subset import digest, pick

FEATURES_UP_TO = 200_000


@dataclass(frozen=True)
class Probe:
    """The linear probe's training: epochs, the global batch, the peak lr per 256 images, weight decay, the
    training crops of the image mode (rrc | crop | none) and the seed of its initialisation and batch order."""
    epochs: int = 100
    batch: int = 256
    lr: float = 0.1
    wd: float = 0.0
    aug: str = "rrc"
    seed: int = 0


def probe_features(train, test, num_classes, probe: Probe = Probe(), *, device=None, progress=False):
    """Linear probe on precomputed (features [N, D], labels [N]) pairs; every rank holds all rows and
    trains on its share. -> dict(top1, top5, n, losses)."""
    x, y = train
    device = device or x.device
    epochs, batch, lr, wd, seed = probe.epochs, probe.batch, probe.lr, probe.wd, probe.seed
    torch.manual_seed(seed)
    clf = Classifier(None, x.shape[1], num_classes, frozen=True,
                     norm=Standardize(x.mean(0), x.std(0))).to(device)
    lr = lr * batch / 256
    losses = fit(clf, TensorBatches(x, y, batch // dist.world(), seed), Sgd(epochs, lr=lr, wd=wd, name="linear"),
                 device=device, progress=progress)
    res = evaluate(clf, TensorBatches(test[0], test[1], 1024, shuffle=False), device, sharded=False)
    return res | {"losses": losses}


def probe_images(backbone, train: Images, test: Images, probe: Probe = Probe(), *, device=None, amp=None,
                 progress=False):
    """Linear probe on augmented images through the frozen backbone (the batch is probe.batch, split over the
    ranks; train.batch is not used). -> dict(top1, top5, n, losses)."""
    torch.manual_seed(probe.seed)
    res, normalize = train.res, train.normalize
    clf = Classifier(backbone, feature_dim(backbone, res), train.source.num_classes, frozen=True).to(device)
    per_rank = probe.batch // dist.world()
    batches = labelled_loader(train.source, res, per_rank, indices=train.indices, aug=probe.aug,
                              workers=train.workers, seed=probe.seed)
    sgd = Sgd(probe.epochs, lr=probe.lr * probe.batch / 256, wd=probe.wd, amp=amp, name="linear")
    losses = fit(clf, batches, sgd, device=device, prep=normalize, progress=progress)
    batches = scoring_loader(test.source, test.res, per_rank, indices=test.indices, workers=test.workers)
    return evaluate(clf, batches, device, prep=test.normalize, amp=amp) | {"losses": losses}


def build_parser(description=__doc__):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_error_one_line(p)
    p.add_argument("--checkpoint", required=True, help="a train.py checkpoint (RUN/last.pt)")
    p.add_argument("--stem-stride", type=int, default=1, help=STEM_STRIDE_HELP)
    p.add_argument("--data", default=None, help="dataset root (default: the one the run trained on)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--res", type=int, default=None, help="image size (default: the run's)")
    p.add_argument("--batch-size", type=int, default=256, help="global batch, split over ranks")
    p.add_argument("--aug", default="auto", help="training crops: rrc (random-resized) | crop (pad + crop, "
                   "small images) | none (default: rrc from 96 px, crop below)")
    p.add_argument("--random-init", action="store_true", help="also evaluate the same arch at random init")
    p.add_argument("--amp", default=None, help="bf16 | fp16 | off (default: as train.py, bf16 on GPUs and on CPUs "
                   "with native bf16, off elsewhere)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 2))
    p.add_argument("--n-test", type=int, default=0, help="score a fixed random subset of test images (0: all)")
    p.add_argument("--seed", type=int, default=0, help="the probe's initialisation and batch order (the "
                   "images scored are eval/subset.py's, whatever the seed)")
    p.add_argument("--json", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def setup(a):
    """Shared set-up of the evaluation CLIs: device, process group, the run's config and data."""
    device, rank, world = dist.init_device(a.device)
    if a.batch_size % world:
        raise UsageError(f"--batch-size {a.batch_size} is not divisible by the {world} processes")
    if a.aug not in ("auto", "rrc", "crop", "none"):
        raise UsageError(f"--aug {a.aug}: choose from auto, rrc, crop, none")
    cfg, _ = load_run(a.checkpoint, stem_stride=a.stem_stride)
    train_src, test_src, norm = eval_sources(cfg, a.dataset, a.data)
    a.res = a.res or cfg["res"] or DEFAULT_RES.get(train_src.name, 224)
    a.aug = a.aug if a.aug != "auto" else ("rrc" if a.res >= 96 else "crop")
    a.amp = a.amp or default_amp(device.type)[0]   # train.py's rule: bf16 on GPUs and on CPUs with native bf16
    if a.amp not in AMP_DTYPES:
        raise UsageError(f"--amp {a.amp}: choose from {', '.join(AMP_DTYPES)}")
    if a.amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a GPU (fp16 + GradScaler); on CPU use --amp bf16 or off")
    amp = amp_dtype(a.amp)
    a.test_idx = pick(a.n_test, len(test_src))   # the images eval.knn --n-test scores too
    return device, rank, world, cfg, train_src, test_src, norm, amp


def save(a, name, out):
    if dist.rank() == 0:
        path = a.json or os.path.join(os.path.dirname(os.path.abspath(a.checkpoint)), name)
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        print(f"results: {path}", flush=True)


@cli_main
def main(argv=None):
    p = build_parser()
    p.add_argument("--mode", default="auto", help=f"features | images (default: features up to "
                   f"{FEATURES_UP_TO} training images)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate per 256 images")
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--n-train", type=int, default=0, help="train on a fixed random subset (0: all)")
    a = p.parse_args(argv)
    device, rank, world, cfg, train_src, test_src, norm, amp = setup(a)
    train_idx = pick(a.n_train, len(train_src))
    mode = a.mode if a.mode != "auto" else ("features" if len(train_src) <= FEATURES_UP_TO else "images")
    if mode not in ("features", "images"):
        raise UsageError(f"--mode {a.mode}: choose from auto, features, images")
    show = rank == 0 and not a.no_progress
    probe = Probe(epochs=a.epochs, batch=a.batch_size, lr=a.lr, wd=a.wd, aug=a.aug, seed=a.seed)
    out = {"checkpoint": os.path.abspath(a.checkpoint), "mode": mode, "epochs": a.epochs, "lr": a.lr,
           "batch_size": a.batch_size, "aug": a.aug if mode == "images" else "none", "world": world,
           "method": cfg["method"], "arch": cfg["arch"], "test_subset": digest(a.test_idx, len(test_src))}
    train = Images(train_src, a.res, norm, indices=train_idx, batch=a.batch_size, workers=a.workers)
    test = Images(test_src, a.res, norm, indices=a.test_idx, batch=a.batch_size, workers=a.workers)
    for name in ["trained"] + (["random-init"] if a.random_init else []):
        _, model = load_run(a.checkpoint, random_init=name == "random-init", stem_stride=a.stem_stride)
        backbone = model.backbone.to(device)
        if mode == "features":
            tr = extract_sharded(backbone, train, device, progress=show, desc="train features", l2=False)
            te = extract_sharded(backbone, test, device, progress=show, desc="test features", l2=False)
            r = probe_features(tr, te, train_src.num_classes, probe, device=device, progress=show)
        else:
            r = probe_images(backbone, train, test, probe, device=device, amp=amp, progress=show)
        out[name] = r
        if rank == 0:
            print(f"linear probe {name} ({mode}, {a.epochs} epochs): top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}% "
                  f"on {r['n']} test images", flush=True)
    save(a, "eval_linear.json", out)
    dist.cleanup()
    return out


if __name__ == "__main__":
    main()
