"""Throughput benchmark suite: every loader x arch x resolution x variant (plain, --bsim, --sepp, both):
each loader alone, the step alone (synthetic loader: the compute ceiling), and end to end, with the
data-wait fraction and peak GPU / host memory, measured in one run so that the ratios are comparable.

    python -m eval.bench --loader torch,synthetic,tvpil --arch resnet18 --res 28 --json bench.json
    python -m eval.bench --loader torch,ffcv,dali --beton F.beton --arch resnet18,resnet50 --res 128,224 \
        --variants plain,bsim,sepp,bsim+sepp --json suite.json --png suite.png

`tvpil` is the baseline users run today: torchvision DataLoader + PIL SimCLR augmentation in the workers
(measured in the plain variant only). Images/s counts source images; each one is V (=2) augmented views.
Variant sepp: the loader follows a SePP pair plan (random pairs: the cost does not depend on who is paired)
and the step computes the semantic-positive term; bsim: the loader mixes, the step adds the mixture term.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np
import torch

from engine.config import DEFAULT_RES, METHOD_DEFAULTS, model_kwargs, parser_error_one_line
from engine.errors import UsageError, cli_main
from engine.optim import build_optimizer
from loaders import LoaderOptions, build_loader
from loaders.augment import RECIPES
from loaders.dali import AUGMENT_MODES
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


VARIANTS = ("plain", "bsim", "sepp", "bsim+sepp")


class PeakHost:
    """Peak resident memory (MB) of this process and its children (loader workers), sampled every 100 ms
    while the block runs (not more often: the sampler takes the GIL from the loop it measures); shared
    pages of forked workers count once per process (an upper bound)."""

    def __enter__(self):
        import psutil
        self.peak, self.done = 0.0, threading.Event()
        me = psutil.Process()

        def sample():
            while not self.done.is_set():
                try:
                    rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
                    self.peak = max(self.peak, rss / 2**20)
                except psutil.Error:
                    pass
                self.done.wait(0.1)
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


class SeppTagged:
    """Batches with semantic positives (Batch.pos): the plan's partners for the real loaders, or each row's
    neighbour row (i xor 1) for the synthetic ones, so every anchor's positive is in its batch."""

    def __init__(self, inner, partner=None):
        self.inner, self.partner = inner, partner

    def __len__(self):
        return len(self.inner)

    def set_epoch(self, epoch):
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self):
        for b in self.inner:
            if self.partner is not None:
                b.pos = self.partner[b.index]
            else:
                b.pos = b.index[torch.arange(b.size, device=b.index.device) ^ 1]
            yield b


def build(a, name, source, device, recipe, res, variant):
    mix, sepp = "bsim" in variant, "sepp" in variant
    if name == "synthetic-noaug":
        return Replay(build(a, "synthetic", source, device, recipe, res, variant))
    if name == "tvpil":
        return TVPIL(source, res, a.batch_size, a.workers, device, source.mean, source.std)
    from loaders.mix import MixSpec
    loader = "dali" if name in ("dali-roi", "dali-device") else name
    opts = LoaderOptions.from_args(a, a.batch_size, name=loader, res=res, seed=0, mix=MixSpec("mixup") if mix else None,
                                   ffcv_order="ours" if sepp and name == "ffcv" else "auto",
                                   dali_roi=name == "dali-roi",   # dali-device: DALI crops only
                                   dali_augment="device" if name == "dali-device" else a.dali_augment)
    ld = build_loader(opts, source, RECIPES[recipe], device)
    if not sepp:
        return ld
    if name == "synthetic":
        return SeppTagged(ld)
    from mining.sampler import PairPlan
    from mining.sepp import attach
    n = getattr(ld, "n", len(source))
    plan = PairPlan(np.random.default_rng(0).integers(0, n, (n, 5)), seed=0)
    attach(ld, plan)
    return SeppTagged(ld, torch.as_tensor(plan.plan(0)[1], device=device))


def measure(a, ld, name, device, step):
    """Loader alone and end to end (images/s), data wait, peak GPU and host memory of one loader."""
    if hasattr(ld, "set_epoch"):
        ld.set_epoch(0)
    steps, warmup = (max(2, a.steps // 8), 1) if name == "tvpil" else (a.steps, a.warmup)  # tvpil is slow
    if name in ("torch", "tvpil"):  # DataLoader workers deliver their first batches together: skip that round
        warmup = max(warmup, a.workers + 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakHost() as host:
        alone, _ = timed(ld, steps, warmup, device)
        e2e, wait = timed(ld, steps, warmup, device, work=step)
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"loader_img_s": alone, "end_to_end_img_s": e2e, "data_wait": wait, "peak_gpu_mb": gpu,
            "peak_host_mb": host.peak}


def make_step(a, model, device):
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
    return step


def bench_config(a, source, device, arch, res, variant, names):
    """One arch x resolution x variant: every loader, the ceilings, ratios. -> result dict."""
    small_stem = res <= 96 if a.small_stem is None else a.small_stem
    cfg = vars(a) | METHOD_DEFAULTS[a.method] | {"arch": arch, "small_stem": small_stem}
    model = build_method(a.method, **model_kwargs(cfg)).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if a.compile:
        for m in model.children():
            m.compile()
    step = make_step(a, model, device)
    out = {"arch": arch, "res": res, "variant": variant, "loaders": {}}
    for name in names + ["synthetic-noaug"]:
        if name == "tvpil" and variant != "plain":
            continue
        r = out["loaders"][name] = measure(a, build(a, name, source, device, model.recipe, res, variant), name,
                                           device, step)
        if name == "synthetic-noaug":   # replays ready batches: there is no loader to time
            r["loader_img_s"] = None
        print(f"  {arch} {res}px {variant} {name}: loader {r['loader_img_s'] or 0:.0f} img/s, end to end "
              f"{r['end_to_end_img_s']:.0f} img/s", flush=True)
    ceiling = out["step_alone_img_s"] = out["loaders"]["synthetic"]["end_to_end_img_s"]
    bare = out["step_no_augmentation_img_s"] = out["loaders"]["synthetic-noaug"]["end_to_end_img_s"]
    for name, r in out["loaders"].items():
        r["ratio_to_ceiling"] = r["end_to_end_img_s"] / ceiling
        r["ratio_to_step"] = r["end_to_end_img_s"] / bare
    for name in ("torch", "ffcv", "dali"):
        if "tvpil" in out["loaders"] and name in out["loaders"]:
            out[f"{name}_vs_tvpil_loader"] = (out["loaders"][name]["loader_img_s"]
                                              / out["loaders"]["tvpil"]["loader_img_s"])
    del model, step
    return out


def print_table(r, a, device_name, cpus):
    print(f"\n{a.method} {r['arch']} {r['res']}px {r['variant']} batch {a.batch_size} amp={a.amp} on {device_name} "
          f"({cpus} CPUs); images/s, each as 2 views")
    print(f"{'loader':<16} {'loader alone':>13} {'end to end':>11} {'/ceiling':>9} {'/step':>6} {'data wait':>10} "
          f"{'GPU MB':>8} {'host MB':>8}")
    for name, x in r["loaders"].items():
        gpu = f"{x['peak_gpu_mb']:.0f}" if x["peak_gpu_mb"] is not None else "-"
        alone = f"{x['loader_img_s']:.0f}" if x["loader_img_s"] is not None else "-"
        print(f"{name:<16} {alone:>13} {x['end_to_end_img_s']:>11.0f} {x['ratio_to_ceiling']:>9.2f} "
              f"{x['ratio_to_step']:>6.2f} {x['data_wait']:>10.0%} {gpu:>8} {x['peak_host_mb']:>8.0f}")
    for name in ("torch", "ffcv", "dali"):
        if f"{name}_vs_tvpil_loader" in r:
            print(f"{name} loader vs torchvision+PIL baseline (loader alone): {r[f'{name}_vs_tvpil_loader']:.2f}x")


def plot(results: list, path: str, title: str):
    """One panel per arch x res x variant: loader-alone and end-to-end bars per loader (log scale), the
    step-alone ceiling as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 2.8 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        names = list(r["loaders"])
        x = np.arange(len(names))
        alone = [r["loaders"][n]["loader_img_s"] or np.nan for n in names]
        e2e = [r["loaders"][n]["end_to_end_img_s"] for n in names]
        ax.bar(x - 0.2, alone, 0.4, label="loader alone")
        ax.bar(x + 0.2, e2e, 0.4, label="end to end")
        ax.axhline(r["step_no_augmentation_img_s"], color="k", ls="--", lw=1, label="step alone")
        ax.set_yscale("log")
        ax.set_xticks(x, names, fontsize=8)
        ax.set_ylabel("images/s")
        ax.set_title(f"{r['arch']} {r['res']}px {r['variant']}", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def int_list(s: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} {s}: expected comma-separated integers")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_error_one_line(p)
    p.add_argument("--loader", default="torch,synthetic", help="comma-separated: torch,device,ffcv,dali,dali-roi,"
                   "dali-device,synthetic,tvpil")
    p.add_argument("--method", default="simclr")
    p.add_argument("--arch", default="resnet18", help="comma-separated, e.g. resnet18,resnet50")
    p.add_argument("--res", default=None, help="comma-separated crop sizes (default: the dataset's)")
    p.add_argument("--variants", default="plain", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--bsim", action="store_true", help="add the bsim variant")
    p.add_argument("--sepp", action="store_true", help="add the sepp variant")
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
    p.add_argument("--dali-hw-load", type=float, default=None, help="dali: fraction for the hardware JPEG decoder")
    p.add_argument("--dali-branchless", action="store_true", help="dali: colour ops and blur without conditionals")
    p.add_argument("--dali-pipes", type=int, default=1, help="dali: pipelines per GPU (batch/N each)")
    p.add_argument("--dali-concurrent", action="store_true", help="dali: independent operators run at once")
    p.add_argument("--dali-augment", default="pipeline", choices=AUGMENT_MODES,
                   help="dali: pipeline | device (DALI crops only)")
    p.add_argument("--device-max-fraction", type=float, default=0.5,
                   help="device: the dataset's share of free device memory at most")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--png", default=None, help="bar chart (default: the --json path with .png)")
    return p


@cli_main
def main(argv=None):
    a = build_parser().parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    archs = [x.strip() for x in a.arch.split(",") if x.strip()]
    resolutions = int_list(a.res, "--res") if a.res else [DEFAULT_RES.get(a.dataset, 224)]
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    variants += [v for v, on in (("bsim", a.bsim), ("sepp", a.sepp)) if on and v not in variants]
    for v in variants:
        if v not in VARIANTS:
            raise UsageError(f"--variants {v}: unknown (choose from {', '.join(VARIANTS)})")
    a.amp = a.amp or ("bf16" if device.type == "cuda" else "off")
    a.channels_last = device.type == "cuda" if a.channels_last is None else a.channels_last
    if a.method not in METHOD_DEFAULTS:
        raise UsageError(f"--method {a.method}: unknown (choose from {', '.join(METHOD_DEFAULTS)})")
    if any("sepp" in v for v in variants) and a.batch_size % 2:
        raise UsageError(f"--variants sepp pairs samples in a batch: --batch-size {a.batch_size} must be even")
    source = open_source(a.dataset, a.data, True)
    names = [n.strip() for n in a.loader.split(",") if n.strip()]
    if "synthetic" not in names:
        names.append("synthetic")  # the ceiling is always measured in the same run
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    res = {"config": vars(a), "device": dev_name, "cpus": os.cpu_count(), "torch": torch.__version__, "results": []}
    for arch in archs:
        for r in resolutions:
            for v in variants:
                out = bench_config(a, source, device, arch, r, v, names)
                res["results"].append(out)
                print_table(out, a, dev_name, res["cpus"])
    plain = {(x["arch"], x["res"]): x for x in res["results"] if x["variant"] == "plain"}
    for x in res["results"]:   # what each variant costs over plain, step alone (same arch and res, same run)
        base = plain.get((x["arch"], x["res"]))
        if base and x["variant"] != "plain":
            x["step_overhead_vs_plain"] = base["step_alone_img_s"] / x["step_alone_img_s"] - 1
            print(f"{x['arch']} {x['res']}px {x['variant']}: step (with augmentation) "
                  f"+{x['step_overhead_vs_plain']:.0%} time over plain")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    png = a.png or (os.path.splitext(a.json)[0] + ".png" if a.json else None)
    if png:
        plot(res["results"], png, f"{a.method}, batch {a.batch_size}, amp={a.amp}, {dev_name}")
        print(f"chart: {png}")
    return res


if __name__ == "__main__":
    main()
