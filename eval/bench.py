"""Throughput benchmark suite: every loader x arch x resolution x variant (plain, --bsim, --sepp, both):
each loader alone, the step alone (synthetic loader: the compute ceiling), and end to end, with the
data-wait fraction and peak GPU / host memory, measured in one run so that the ratios are comparable.

    python -m eval.bench --loader torch,synthetic,tvpil --arch resnet18 --res 28 --json bench.json
    python -m eval.bench --loader torch,ffcv,dali --beton F.beton --arch resnet18,resnet50 --res 128,224 \
        --variants plain,bsim,sepp,bsim+sepp --json suite.json --png suite.png

`tvpil` is the baseline users run today: lightly's SimCLRTransform (torchvision + PIL) in DataLoader workers
(measured in the plain variant only); on image files the run also measures the decode ceiling, the same files
decoded whole by as many processes as the loaders have workers (eval/baselines.py). --loader-only times each
loader alone and skips the end-to-end windows. Images/s counts source images; each one is V (=2) augmented views.
Variant sepp: the loader follows a SePP pair plan (random pairs: the cost does not depend on who is paired)
and the step computes the semantic-positive term; bsim: the step mixes and adds the mixture term
(BSIM's extension).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import threading
import time

import numpy as np
import torch

import flags
from engine.errors import parser_error_one_line
from engine.errors import UsageError, cli_main
from engine.step import build_step
from extensions import step_extensions
from eval.baselines import TVPIL, decode_ceiling
from loaders import build_loader
from loaders.augment import RECIPES
from loaders.dali import AUGMENT_MODES
from loaders.datasets import open_source
from models.methods import METHODS, build_model_from_config


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stream:
    """A loader's batches without end: the next epoch starts when one ends."""

    def __init__(self, iterable):
        self.iterable, self.it = iterable, iter(iterable)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.iterable)
            return next(self.it)


def window(stream: Stream, steps: int, device, work=None, budget_s: float = math.inf) -> dict:
    """One timed window: `steps` batches, or as many as start within `budget_s` seconds (a slow baseline;
    the count is reported, never hidden). -> images/s, the fraction of time spent in next(), batches, seconds."""
    sync(device)
    n, batches, wait, t0 = 0, 0, 0.0, time.perf_counter()
    while batches < steps and (batches == 0 or time.perf_counter() - t0 < budget_s):
        tw = time.perf_counter()
        b = stream.next()
        wait += time.perf_counter() - tw
        n += b.size
        batches += 1
        if work:
            work(b)
    sync(device)
    dt = time.perf_counter() - t0
    return {"img_s": n / dt, "wait": wait / dt, "batches": batches, "s": dt}


def timed(iterable, steps, warmup, device, work=None):
    """Images/s over `steps` batches after `warmup` batches, and the fraction of time spent in next()."""
    stream = Stream(iterable)
    for _ in range(warmup):
        b = stream.next()
        if work:
            work(b)
    w = window(stream, steps, device, work)
    return w["img_s"], w["wait"]


def summary(windows: list[dict]) -> dict:
    """Median and range over repeated windows (the spread is what tells noise from a difference)."""
    rates = sorted(w["img_s"] for w in windows)
    return {"img_s": float(np.median(rates)), "range": [rates[0], rates[-1]],
            "wait": float(np.median([w["wait"] for w in windows])), "batches": [w["batches"] for w in windows]}


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


def build(a, t, name, source, *, device, recipe, res, variant):
    """The loader `name` as train.py (flags `t`) builds it, at `res`, for `variant`."""
    sepp = "sepp" in variant
    if name == "synthetic-noaug":
        return Replay(build(a, t, "synthetic", source, device=device, recipe=recipe, res=res, variant=variant))
    if name == "tvpil":
        return TVPIL(source, res, batch=t.batch_size, workers=t.workers, device=device)
    loader = "dali" if name in ("dali-roi", "dali-device") else name
    opts = flags.loader_options(t, t.batch_size, name=loader, res=res, seed=0,
                                ffcv_order="ours" if sepp and name == "ffcv" else t.ffcv_order,
                                dali_roi=name == "dali-roi" or t.dali_roi,   # dali-device: DALI crops only
                                dali_augment="device" if name == "dali-device" else t.dali_augment)
    ld = build_loader(opts, source, RECIPES[recipe], device)
    if not sepp:
        return ld
    if name == "synthetic":
        return SeppTagged(ld)
    from mining.sampler import PairPlan
    from mining.sepp import attach
    n = ld.order.n if ld.order is not None else len(source)   # DALI's files: those it reads
    plan = PairPlan(np.random.default_rng(0).integers(0, n, (n, 5)), seed=0)
    attach(ld, plan)
    return SeppTagged(ld, torch.as_tensor(plan.plan(0)[1], device=device))


def measure(a, ld, device, step):
    """Loader alone, then end to end: the same warm-up and the same timed windows (--steps batches or
    --budget-s seconds each, --repeats of them) for every loader; median and range over the windows."""
    if hasattr(ld, "set_epoch"):
        ld.set_epoch(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stream = Stream(ld)
    with PeakHost() as host:
        for _ in range(a.warmup):   # DataLoader workers deliver their first batches together: not timed
            stream.next()
        alone = summary([window(stream, a.steps, device, budget_s=a.budget_s) for _ in range(a.repeats)])
        if a.loader_only:
            e2e = {"img_s": None, "range": None, "batches": [], "wait": None}
        else:
            for _ in range(a.warmup):   # the step's own warm-up (allocator, cuDNN autotuning, compilation)
                step(stream.next())
            e2e = summary([window(stream, a.steps, device, work=step, budget_s=a.budget_s)
                           for _ in range(a.repeats)])
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"loader_img_s": alone["img_s"], "loader_range": alone["range"], "loader_batches": alone["batches"],
            "end_to_end_img_s": e2e["img_s"], "end_to_end_range": e2e["range"], "end_to_end_batches": e2e["batches"],
            "data_wait": e2e["wait"], "peak_gpu_mb": gpu, "peak_host_mb": host.peak}


def make_step(t, model, steps_per_epoch: int):
    """train.py's step (engine/step.py) for the flags `t`: its optimizer, precision, schedules from the first
    iteration, momentum update and non-finite guard (--nonfinite-limit 0: none), --compile, and BSIM's mixtures
    and term where the variant has them."""
    step = build_step(t, model, steps_per_epoch, hooks=step_extensions(t, model))   # --bsim: BSIM's extension
    it = iter(range(10 ** 9))
    return lambda batch: step(batch, next(it) % len(step.lr))


# bench flags that are train.py's too: given here, they win over --config (as they would on train.py's line)
TRAIN_FLAGS = ("method", "dataset", "data", "subset", "beton", "batch_size", "small_stem", "stem_stride", "amp",
               "channels_last", "compile", "compile_augment", "workers", "device_max_fraction", "dali_hw_load",
               "dali_branchless", "dali_pipes", "dali_concurrent", "dali_augment", "nonfinite_limit")


def train_args(a, arch=None, res=None):
    """The namespace train.py would run with: --config, then the bench's own flags given, then arch/res. With
    --beton, as train.py --loader ffcv: the .beton is the data set (--dataset/--data/--subset agree with it)."""
    argv = (["--config", a.config] if a.config else []) + (["--loader", "ffcv"] if a.beton else [])
    for k in TRAIN_FLAGS:
        v, flag = getattr(a, k), "--" + k.replace("_", "-")
        if isinstance(v, bool):
            argv += [flag] if v else ([f"--no-{flag[2:]}"] if k in ("small_stem", "channels_last") else [])
        elif v is not None:
            argv += [flag, str(v)]
    argv += (["--arch", arch] if arch else []) + (["--res", str(res)] if res else [])
    t = flags.parse(argv)
    flags.resolve_device(t)
    flags.check_world(t, 1)
    return t


def bench_sources(t, names) -> dict:
    """{loader: the images it reads}. With a .beton, ffcv reads the .beton's own images (and the synthetic loaders
    take their count and classes from it); every other loader, the data set it was written from (its subset,
    seed and split; the unreadable files it skipped are read, and skipped or reported by each loader)."""
    names = {n.split("-")[0] if n.startswith("dali") else n for n in names} | {"synthetic"}
    if t.loader != "ffcv":
        src = open_source(t.dataset, t.data, train=True, subset=t.subset, seed=t.seed, val_split=t.val_split)
        return dict.fromkeys(names, src)
    from loaders.beton import BetonSource, beton_meta, data_of
    meta = beton_meta(t.beton)
    out = dict.fromkeys({"ffcv", "synthetic"} & names, BetonSource(t.beton, meta))
    rest = names - set(out)
    if rest and not os.path.exists(data_of(meta) or ""):
        raise UsageError(f"--beton {t.beton}: its data set ({data_of(meta)}) is not on this machine for "
                         f"{', '.join(sorted(rest))}: bench ffcv alone")
    if rest:
        src = open_source(meta["dataset"], meta.get("data"), meta.get("split", "train") == "train",
                          subset=meta.get("subset") or 0, seed=meta.get("seed", 0))
        out |= dict.fromkeys(rest, src)
    return out


def bench_model(a, arch, res, device):
    """(train.py's flags, the model train.py builds from them, its augmentation recipe) for arch x res."""
    t = train_args(a, arch, res)
    model = build_model_from_config(vars(t)).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return t, model, t.recipe or METHODS[t.method].recipe


def bench_config(a, sources, device, arch, res, variant, names, decode=None):
    """One arch x resolution x variant: every loader (sources: its images, bench_sources), the ceilings (`decode`:
    the decode ceiling's measurement), ratios. -> result dict."""
    t, model, recipe = bench_model(a, arch, res, device)
    t.bsim, t.sepp = "bsim" in variant, "sepp" in variant
    step = make_step(t, model, max(1, len(sources["synthetic"]) // t.batch_size))
    out = {"arch": arch, "res": res, "variant": variant, "loaders": {},
           "train": {k: getattr(t, k) for k in ("method", "batch_size", "amp", "channels_last", "compile",
                                                "compile_augment", "small_stem", "stem_stride", "proj_hidden",
                                                "proj_dim", "pred_hidden", "optimizer", "workers", "nonfinite_limit")}
           | {"recipe": recipe}}
    for name in names + ([] if a.loader_only else ["synthetic-noaug"]):
        if name == "tvpil" and variant != "plain":
            continue
        src = sources[name.split("-")[0] if name.startswith("dali") else name.replace("-noaug", "")]
        r = out["loaders"][name] = measure(a, build(a, t, name, src, device=device, recipe=recipe, res=res,
                                                    variant=variant), device, step)
        if name == "synthetic-noaug":   # replays ready batches: there is no loader to time
            r["loader_img_s"] = r["loader_range"] = None
        print(f"  {arch} {res}px {variant} {name}: loader {r['loader_img_s'] or 0:.0f} img/s, end to end "
              f"{r['end_to_end_img_s'] or 0:.0f} img/s (median of {a.repeats})", flush=True)
    if not a.loader_only:
        ceiling = out["step_alone_img_s"] = out["loaders"]["synthetic"]["end_to_end_img_s"]
        bare = out["step_no_augmentation_img_s"] = out["loaders"]["synthetic-noaug"]["end_to_end_img_s"]
        for name, r in out["loaders"].items():
            r["ratio_to_ceiling"] = r["end_to_end_img_s"] / ceiling
            r["ratio_to_step"] = r["end_to_end_img_s"] / bare
    if decode:
        out["decode_ceiling_img_s"] = decode["img_s"]
        for r in out["loaders"].values():
            r["loader_vs_decode_ceiling"] = (r["loader_img_s"] or 0) / decode["img_s"]
    for name in ("torch", "device", "ffcv", "dali"):
        if "tvpil" in out["loaders"] and name in out["loaders"]:
            out[f"{name}_vs_tvpil_loader"] = (out["loaders"][name]["loader_img_s"]
                                              / out["loaders"]["tvpil"]["loader_img_s"])
    del model, step
    return out


def print_table(r, a, device_name, cpus):
    t = r["train"]
    print(f"\n{t['method']} {r['arch']} {r['res']}px {r['variant']} batch {t['batch_size']} amp={t['amp']} heads "
          f"{t['proj_hidden']}-{t['proj_dim']} on {device_name} ({cpus} CPUs); images/s (each as 2 views), median "
          f"[min-max] of {a.repeats} windows of {a.steps} batches (or {a.budget_s:g} s) after {a.warmup} warm-up")
    print(f"{'loader':<16} {'loader alone':>19} {'/decode':>8} {'end to end':>17} {'/ceiling':>9} {'/step':>6} "
          f"{'data wait':>10} {'GPU MB':>8} {'host MB':>8}")
    rng = lambda v, lo_hi: f"{v:.0f} [{lo_hi[0]:.0f}-{lo_hi[1]:.0f}]" if v is not None else "-"   # noqa: E731
    num = lambda x, k, fmt: format(x[k], fmt) if x.get(k) is not None else "-"   # noqa: E731
    for name, x in r["loaders"].items():
        print(f"{name:<16} {rng(x['loader_img_s'], x['loader_range']):>19} {num(x, 'loader_vs_decode_ceiling', '.2f'):>8} "
              f"{rng(x['end_to_end_img_s'], x['end_to_end_range']):>17} {num(x, 'ratio_to_ceiling', '.2f'):>9} "
              f"{num(x, 'ratio_to_step', '.2f'):>6} {num(x, 'data_wait', '.0%'):>10} {num(x, 'peak_gpu_mb', '.0f'):>8} "
              f"{x['peak_host_mb']:>8.0f}")
        cut = [b for b in x["loader_batches"] + x["end_to_end_batches"] if b < a.steps]
        if cut:
            print(f"{'':<16} (time budget: windows of {x['loader_batches']} / {x['end_to_end_batches']} batches)")
    for name in ("torch", "device", "ffcv", "dali"):
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
        e2e = [r["loaders"][n]["end_to_end_img_s"] or np.nan for n in names]
        ax.bar(x - 0.2, alone, 0.4, label="loader alone")
        ax.bar(x + 0.2, e2e, 0.4, label="end to end")
        if "step_no_augmentation_img_s" in r:
            ax.axhline(r["step_no_augmentation_img_s"], color="k", ls="--", lw=1, label="step alone")
        if r.get("decode_ceiling_img_s"):
            ax.axhline(r["decode_ceiling_img_s"], color="r", ls=":", lw=1, label="decode ceiling")
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
    p.add_argument("--config", default=None, help="train.py's YAML preset: benchmark the model, heads, batch, "
                   "precision, augmentation and loader that train.py --config FILE trains (flags given here win)")
    p.add_argument("--loader", default=None, help="comma-separated: torch,device,ffcv,dali,dali-roi,dali-device,"
                   "synthetic,tvpil (default: torch, or the config's loader; synthetic is always added)")
    p.add_argument("--method", default=None, help="(default: simclr, or the config's)")
    p.add_argument("--arch", default=None, help="comma-separated, e.g. resnet18,resnet50 (default: the config's)")
    p.add_argument("--res", default=None, help="comma-separated crop sizes (default: the config's or dataset's)")
    p.add_argument("--variants", default="plain", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--bsim", action="store_true", help="add the bsim variant")
    p.add_argument("--sepp", action="store_true", help="add the sepp variant")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--stem-stride", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="(default: 256, or the config's)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--beton", default=None, help="--loader ffcv: the .beton of the same data (loaders.prepare)")
    p.add_argument("--steps", type=int, default=20, help="timed batches per window, the same for every loader")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per measurement (median and range)")
    p.add_argument("--budget-s", type=float, default=60.0, help="a window stops early after this many seconds "
                   "(a slow baseline): the batches it timed are reported")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first, the same for every loader "
                   "(default: workers + 1: DataLoader workers deliver their first batches together)")
    p.add_argument("--workers", type=int, default=None, help="(default: as train.py: cores, at most 8)")
    p.add_argument("--amp", default=None, help="bf16 | fp16 | off (default: bf16 on GPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--compile-augment", action="store_true", default=None,
                   help="torch.compile the device augmentation")
    p.add_argument("--dali-hw-load", type=float, default=None, help="dali: fraction for the hardware JPEG decoder")
    p.add_argument("--dali-branchless", action="store_true", default=None,
                   help="dali: colour ops and blur without conditionals")
    p.add_argument("--dali-pipes", type=int, default=None, help="dali: pipelines per GPU (batch/N each)")
    p.add_argument("--dali-concurrent", action="store_true", default=None,
                   help="dali: independent operators run at once")
    p.add_argument("--dali-augment", default=None, choices=AUGMENT_MODES,
                   help="dali: pipeline | device (DALI crops only)")
    p.add_argument("--device-max-fraction", type=float, default=None,
                   help="device: the dataset's share of free device memory at most")
    p.add_argument("--nonfinite-limit", type=int, default=None, help="as train.py (0: the step without the "
                   "non-finite guard, to measure what the guard costs)")
    p.add_argument("--loader-only", action="store_true", help="time each loader alone (no end-to-end windows)")
    p.add_argument("--decode-ceiling", action=argparse.BooleanOptionalAction, default=True,
                   help="on image files, also time whole-file decodes by as many processes as --workers")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--png", default=None, help="bar chart (default: the --json path with .png)")
    return p


@cli_main
def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.steps < 1 or a.repeats < 1 or a.budget_s <= 0 or (a.warmup is not None and a.warmup < 0):
        raise UsageError("--steps and --repeats must be >= 1, --budget-s > 0, --warmup >= 0")
    t = train_args(a)   # the config and the flags given, resolved as train.py resolves them (errors: one line)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    archs = [x.strip() for x in a.arch.split(",") if x.strip()] if a.arch else [t.arch]
    resolutions = int_list(a.res, "--res") if a.res else [t.res]
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    variants += [v for v, on in (("bsim", a.bsim), ("sepp", a.sepp)) if on and v not in variants]
    variants += [v for v, on in (("bsim", t.bsim and not t.sepp), ("sepp", t.sepp and not t.bsim),
                                 ("bsim+sepp", t.bsim and t.sepp)) if on and v not in variants]   # the config's
    for v in variants:
        if v not in VARIANTS:
            raise UsageError(f"--variants {v}: unknown (choose from {', '.join(VARIANTS)})")
    if any("sepp" in v for v in variants) and t.batch_size % 2:
        raise UsageError(f"--variants sepp pairs samples in a batch: --batch-size {t.batch_size} must be even")
    a.warmup = t.workers + 1 if a.warmup is None else a.warmup
    names = [n.strip() for n in (a.loader or t.loader).split(",") if n.strip()]
    if "synthetic" not in names:
        names.append("synthetic")  # the ceiling is always measured in the same run
    sources = bench_sources(t, names)
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    files = next((s for n, s in sources.items() if n not in ("ffcv", "synthetic")), sources["synthetic"])
    decode = decode_ceiling(files, t.workers, repeats=a.repeats) if a.decode_ceiling else None
    if decode:
        print(f"decode ceiling: {decode['img_s']:.0f} img/s ({decode['workers']} processes decoding whole files)",
              flush=True)
    res = {"config": vars(a), "device": dev_name, "cpus": os.cpu_count(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "decode_ceiling": decode, "results": []}
    for arch in archs:
        for r in resolutions:
            for v in variants:
                out = bench_config(a, sources, device, arch=arch, res=r, variant=v, names=names, decode=decode)
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
        t0 = res["results"][0]["train"]
        plot(res["results"], png, f"{t0['method']}, batch {t0['batch_size']}, amp={t0['amp']}, {dev_name}")
        print(f"chart: {png}")
    return res


if __name__ == "__main__":
    main()
