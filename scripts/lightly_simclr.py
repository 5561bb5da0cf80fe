"""The peer run beside our presets: SimCLR trained the way lightly's benchmarks build it (docs/RESULTS.md).

    .venv/bin/pip install lightly==1.6.0        # not in requirements.txt: only this comparison needs it
    .venv/bin/python scripts/lightly_simclr.py --data /data/imagenette --res 64 --epochs 4 --out runs/lightly_inette
    .venv/bin/python scripts/lightly_simclr.py --data /data/cifar10 --cifar --res 32 --epochs 8 --out runs/lightly_c10

Its pieces are lightly's (SimCLRTransform, SimCLRProjectionHead(512, 512, 128), NTXentLoss at its default
temperature 0.5, knn_predict) around torchvision's ImageFolder and DataLoader, with the optimizer of lightly's
Imagenette and CIFAR-10 benchmarks (SGD, lr 0.06 x batch / 256, momentum 0.9, weight decay 5e-4, cosine per
epoch). The backbone: torchvision's resnet18, or with --cifar lightly's ResNetGenerator (a 3x3 stride-1 stem,
no max-pool; --arch resnet-9 and --width 0.5 for a smaller one). Precision fp32 (lightly's default; a CPU run
has no autocast in its loop). A plain loop rather than PyTorch Lightning's Trainer: the same steps, and the
wall clock of the steps alone is what the comparison needs.

Every epoch: the loss, images/s of the training steps alone, and kNN top-1 (lightly's knn_predict, --knn-k,
t = 0.1) on the val (or test) split from the train split's features, both seen at --res (resize, centre
crop). Rows go to OUT/log.csv as they come; OUT/summary.json at the end; OUT/backbone.pt holds the backbone
with torchvision's key names, so that our evaluations score it too (python -m eval.knn --checkpoint
OUT/backbone.pt --res R). Not a --cifar one: lightly's benchmark builds that backbone from the ResNet's children,
which leaves out the ReLU its forward applies after the stem, so our ResNet (ReLU in place) would score another
network; its own kNN above is the figure to quote.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a folder with train/ and val/ (or test/) class folders")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--cifar", action="store_true", help="lightly's CIFAR ResNet (ResNetGenerator) and CIFAR's "
                   "normalisation, SimCLRTransform without blur (lightly's CIFAR-10 benchmark)")
    p.add_argument("--arch", default="resnet-18", help="with --cifar: ResNetGenerator's name")
    p.add_argument("--width", type=float, default=1.0, help="with --cifar: ResNetGenerator's width")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


CIFAR_NORM = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


def splits(args):
    """(train folder, scored folder): val/ where it is, else test/."""
    train = os.path.join(args.data, "train")
    scored = next((os.path.join(args.data, s) for s in ("val", "test") if os.path.isdir(os.path.join(args.data, s))),
                  None)
    if not os.path.isdir(train) or scored is None:
        sys.exit(f"error: --data {args.data}: needs train/ and val/ (or test/) class folders")
    return train, scored


def backbone(args) -> tuple[nn.Module, nn.Module]:
    """(the module to save with torchvision's names, the feature extractor built on it)."""
    if args.cifar:
        from lightly.models import ResNetGenerator
        resnet = ResNetGenerator(args.arch, width=args.width)
        return resnet, nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    resnet = torchvision.models.resnet18()
    return resnet, nn.Sequential(*list(resnet.children())[:-1], nn.Flatten(1))


def loaders(args):
    from lightly.transforms import SimCLRTransform
    from lightly.transforms.utils import IMAGENET_NORMALIZE
    norm = CIFAR_NORM if args.cifar else IMAGENET_NORMALIZE
    extra = {"gaussian_blur": 0.0} if args.cifar else {}
    train_dir, scored_dir = splits(args)
    ssl = torchvision.datasets.ImageFolder(train_dir, SimCLRTransform(input_size=args.res, normalize=norm, **extra))
    plain = torchvision.transforms.Compose([
        torchvision.transforms.Resize(args.res), torchvision.transforms.CenterCrop(args.res),
        torchvision.transforms.ToTensor(), torchvision.transforms.Normalize(norm["mean"], norm["std"])])
    kw = dict(batch_size=args.batch_size, num_workers=args.workers, persistent_workers=args.workers > 0)
    return (torch.utils.data.DataLoader(ssl, shuffle=True, drop_last=True, **kw),
            torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(train_dir, plain), **kw),
            torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(scored_dir, plain), **kw))


@torch.no_grad()
def knn(encoder, bank_loader, scored_loader, k: int) -> float:
    """lightly's kNN monitor (BenchmarkModule): L2-normalised features, knn_predict with t = 0.1."""
    from lightly.utils.benchmarking import knn_predict
    encoder.eval()
    feats = {}
    for name, loader in (("bank", bank_loader), ("scored", scored_loader)):
        f, y = zip(*[(F.normalize(encoder(x), dim=1), t) for x, t in loader])
        feats[name] = torch.cat(f), torch.cat(y)
    encoder.train()
    bank, bank_y = feats["bank"]
    x, y = feats["scored"]
    classes = int(bank_y.max()) + 1
    pred = torch.cat([knn_predict(x[i:i + 1024], bank.T.contiguous(), bank_y, classes, knn_k=k, knn_t=0.1)[:, 0]
                      for i in range(0, len(x), 1024)])
    return 100.0 * (pred == y).float().mean().item()


def train(args):
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    torch.manual_seed(args.seed)
    resnet, encoder = backbone(args)
    dim = encoder(torch.zeros(2, 3, args.res, args.res)).shape[1]
    head = SimCLRProjectionHead(dim, dim, 128)
    crit = NTXentLoss()
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.06 * args.batch_size / 256, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    ssl, bank, scored = loaders(args)
    os.makedirs(args.out, exist_ok=True)
    log = csv.writer(open(os.path.join(args.out, "log.csv"), "w", newline="", buffering=1))
    log.writerow(["epoch", "loss", "img_s", "train_s", "knn_top1", "knn_s"])
    train_s = knn_s = 0.0
    start = time.perf_counter()
    for epoch in range(args.epochs):
        t0, n, total = time.perf_counter(), 0, 0.0
        for (x0, x1), _ in ssl:
            loss = crit(head(encoder(x0)), head(encoder(x1)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n, total = n + len(x0), total + loss.item()
        sched.step()
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        acc = knn(encoder, bank, scored, args.knn_k)
        dk = time.perf_counter() - t1
        train_s, knn_s = train_s + dt, knn_s + dk
        log.writerow([epoch + 1, f"{total / max(1, len(ssl)):.4f}", f"{n / dt:.2f}", f"{dt:.1f}", f"{acc:.2f}",
                      f"{dk:.1f}"])
        print(f"epoch={epoch + 1} loss={total / max(1, len(ssl)):.4f} img_s={n / dt:.1f} knn_top1={acc:.2f}",
              flush=True)
    state = {k.replace(".shortcut.", ".downsample."): v for k, v in resnet.state_dict().items()
             if not k.startswith(("fc.", "linear."))}   # torchvision's names (ResNetGenerator: shortcut)
    torch.save(state, os.path.join(args.out, "backbone.pt"))
    summary = {"peer": "lightly", "version": __import__("lightly").__version__, "epochs": args.epochs,
               "res": args.res, "batch_size": args.batch_size, "knn_top1": acc, "knn_k": args.knn_k,
               "img_s": len(ssl) * args.batch_size * args.epochs / train_s, "train_s": train_s, "knn_s": knn_s,
               "wall_s": time.perf_counter() - start, "precision": "fp32", "threads": torch.get_num_threads()}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"done: kNN top-1 {acc:.2f}% (k={args.knn_k}); {summary['img_s']:.1f} img/s in the steps; "
          f"{summary['wall_s'] / 60:.1f} min in all", flush=True)


if __name__ == "__main__":
    train(parse())
