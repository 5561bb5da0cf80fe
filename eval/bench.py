"""Throughput benchmark: each loader alone, the step alone (synthetic loader: the compute ceiling), and
end to end, measured in one run so that the ratios are comparable.

    python -m eval.bench --loader torch,synthetic,tvpil --arch resnet18 --res 28 --json bench.json

`tvpil` is the baseline users run today: torchvision DataLoader + PIL SimCLR augmentation in the workers.
Images/s counts source images; each one is V (=2) augmented views.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from engine.config import DEFAULT_RES, METHOD_DEFAULTS, model_kwargs, parser_error_one_line
from engine.errors import UsageError, cli_main
from engine.optim import build_optimizer
from loaders import build_loader
from loaders.augment import RECIPES
from loaders.datasets import open_source
from models.methods import build_method


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(iterable, steps, warmup, device, work=None):
    """Images/s over `steps` batches after `warmup` batches, and the fraction of time spent in next()."""
    it = iter(iterable)

    def nxt():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(iterable)
            return next(it)

    for _ in range(warmup):
        b = nxt()
        if work:
            work(b)
    sync(device)
    n, wait, t0 = 0, 0.0, time.perf_counter()
    for _ in range(steps):
        tw = time.perf_counter()
        b = nxt()
        wait += time.perf_counter() - tw
        n += b.size
        if work:
            work(b)
    sync(device)
    dt = time.perf_counter() - t0
    return n / dt, wait / dt


class TVPIL:
    """torchvision DataLoader + PIL two-view SimCLR augmentation (the common baseline)."""

    def __init__(self, source, res, batch, workers, device, mean, std):
        import torchvision.transforms as T
        from PIL import Image
        from torch.utils.data import DataLoader, Dataset
        tf = T.Compose([T.RandomResizedCrop(res, antialias=True), T.RandomHorizontalFlip(),
                        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2),
                        T.RandomApply([T.GaussianBlur(max(3, int(0.1 * res)) | 1, (0.1, 2.0))], p=0.5),
                        T.ToTensor(), T.Normalize(mean, std)])

        class DS(Dataset):
            def __len__(self):
                return len(source)

            def __getitem__(self, i):
                img, y = source.load(i)
                a = img.permute(1, 2, 0).numpy()
                pil = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
                return torch.stack([tf(pil), tf(pil)]), i, y

        self.dl = DataLoader(DS(), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                             pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        self.device = device

    def __iter__(self):
        from loaders.batch import Batch
        for v, i, y in self.dl:
            yield Batch(v.to(self.device, non_blocking=True).transpose(0, 1), i.to(self.device), y.to(self.device))


class Replay:
    """The step with no loader and no augmentation: a few batches of `inner`, made once and replayed."""

    def __init__(self, inner, k=4):
        self.pool = []
        while len(self.pool) < k:   # across epochs if one epoch has fewer than k batches
            self.pool += [b for _, b in zip(range(k - len(self.pool)), inner)]

    def __iter__(self):
        for i in range(10 ** 9):
            yield self.pool[i % len(self.pool)]


def build(a, name, source, device, model_recipe):
    if name == "synthetic-noaug":
        return Replay(build(a, "synthetic", source, device, model_recipe))
    if name == "synthetic+bsim":
        from loaders.mix import MixSpec
        return build_loader("synthetic", source, RECIPES[model_recipe], a.res, a.batch_size, device,
                            channels_last=a.channels_last, mix=MixSpec("mixup"), compile_augment=a.compile_augment)
    if name == "dali-roi":
        return build_loader("dali", source, RECIPES[model_recipe], a.res, a.batch_size, device, seed=0,
                            workers=a.workers, channels_last=a.channels_last, dali_roi=True)
    if name == "tvpil":
        return TVPIL(source, a.res, a.batch_size, a.workers, device, source.mean, source.std)
    return build_loader(name, source, RECIPES[model_recipe], a.res, a.batch_size, device, seed=0,
                        workers=a.workers, channels_last=a.channels_last, beton=a.beton,
                        compile_augment=a.compile_augment)


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_error_one_line(p)
    p.add_argument("--loader", default="torch,synthetic", help="comma-separated: torch,synthetic,tvpil,...")
    p.add_argument("--method", default="simclr")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--res", type=int, default=None)
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--stem-stride", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data", default=None)
    p.add_argument("--beton", default=None, help="--loader ffcv: the .beton of the same data (loaders.prepare)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--amp", default=None, help="bf16 | fp16 | off (default: bf16 on GPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-augment", action="store_true", help="torch.compile the device augmentation")
    p.add_argument("--bsim", action="store_true", help="also measure the step with BSIM mixtures (synthetic)")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    a.res = a.res or DEFAULT_RES.get(a.dataset, 224)
    a.small_stem = a.res <= 96 if a.small_stem is None else a.small_stem
    a.amp = a.amp or ("bf16" if device.type == "cuda" else "off")
    a.channels_last = device.type == "cuda" if a.channels_last is None else a.channels_last
    if a.method not in METHOD_DEFAULTS:
        raise UsageError(f"--method {a.method}: unknown (choose from {', '.join(METHOD_DEFAULTS)})")
    source = open_source(a.dataset, a.data, True)
    model = build_method(a.method, **model_kwargs(vars(a) | METHOD_DEFAULTS[a.method])).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if a.compile:
        for m in model.children():
            m.compile()
    opt = build_optimizer("sgd", model, 0.01, 0.0)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)

    def step(batch):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if model.momentum_encoder:
            model.momentum_update(0.99)

    names = [n.strip() for n in a.loader.split(",") if n.strip()]
    if "synthetic" not in names:
        names.append("synthetic")  # the ceiling is always measured in the same run
    names.append("synthetic-noaug")  # the step alone, without the device augmentation
    if a.bsim:
        names.append("synthetic+bsim")
    res = {"config": vars(a), "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
           or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__, "loaders": {}}
    for name in names:
        ld = build(a, name, source, device, model.recipe)
        if hasattr(ld, "set_epoch"):
            ld.set_epoch(0)
        steps, warmup = (max(2, a.steps // 8), 1) if name == "tvpil" else (a.steps, a.warmup)  # tvpil is slow
        if name in ("torch", "tvpil"):  # DataLoader workers deliver their first batches together: skip that round
            warmup = max(warmup, a.workers + 1)
        alone, _ = timed(ld, steps, warmup, device)
        e2e, wait = timed(ld, steps, warmup, device, work=step)
        res["loaders"][name] = {"loader_img_s": alone, "end_to_end_img_s": e2e, "data_wait": wait}
        print(f"  {name}: loader {alone:.0f} img/s, end to end {e2e:.0f} img/s", flush=True)
    ceiling = res["loaders"]["synthetic"]["end_to_end_img_s"]
    res["step_alone_img_s"] = ceiling
    print(f"\n{a.method} {a.arch} {a.res}px batch {a.batch_size} amp={a.amp} on {res['device']} "
          f"({res['cpus']} CPUs); images/s, each as 2 views")
    bare = res["loaders"]["synthetic-noaug"]["end_to_end_img_s"]
    res["step_no_augmentation_img_s"] = bare
    print("/ceiling: end to end over the synthetic loader's (step + our device augmentation); /step: over the "
          "step alone (no loader, no augmentation)")
    print(f"{'loader':<16} {'loader alone':>13} {'end to end':>11} {'/ceiling':>9} {'/step':>6} {'data wait':>10}")
    for name, r in res["loaders"].items():
        r["ratio_to_ceiling"] = r["end_to_end_img_s"] / ceiling
        r["ratio_to_step"] = r["end_to_end_img_s"] / bare
        print(f"{name:<16} {r['loader_img_s']:>13.0f} {r['end_to_end_img_s']:>11.0f} {r['ratio_to_ceiling']:>9.2f} "
              f"{r['ratio_to_step']:>6.2f} {r['data_wait']:>10.0%}")
    for name in ("torch", "ffcv", "dali"):
        if "tvpil" in res["loaders"] and name in res["loaders"]:
            x = res[f"{name}_vs_tvpil_loader"] = res["loaders"][name]["loader_img_s"] / res["loaders"]["tvpil"]["loader_img_s"]
            print(f"{name} loader vs torchvision+PIL baseline (loader alone): {x:.2f}x")
    if a.bsim:
        r = res["loaders"]["synthetic+bsim"]
        res["bsim_step_overhead"] = ceiling / r["end_to_end_img_s"] - 1
        print(f"BSIM mixture forward: step time +{res['bsim_step_overhead']:.0%} (one extra pass of B images)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
