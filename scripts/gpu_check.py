"""The GPU host's measurements in one process (scripts/gpu_check.sh runs it after the gpu tests): every figure to
JSON, a short table printed last. Needs only what such a host has (torch, torchvision, triton): no FFCV, DALI or
FAISS. Parts, each timed with synchronisation after a warm-up, medians of repeated windows:

  device_epoch  the device loader's 60k-image Fashion-MNIST epoch against the synthetic ceiling (the study
                preset: ResNet-18, 28 px, compiled augmentation); seconds per epoch and their ratio
  bare_step     the step alone (one replayed batch, no loader, no augmentation), eager and compiled, at
                ResNet-50/224 and ResNet-18/28: pairs/s
  addons        what BSIM, SePP and the non-finite guard add to a step (study preset, synthetic batches with the
                device augmentation): ms per step against plain
  knn           the fused exact kNN (mining/fused.py) of 1.28M x 128 embeddings against themselves, k = 5
  sync          a few training steps of each method (BSIM and SePP on, bf16 and fp16) under
                torch.cuda.set_sync_debug_mode("error"): any host-device sync fails them

    python scripts/gpu_check.py --data .fm --out $OUT                   # on the GPU host
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/dry      # the dry run (tests/test_gpu_check.py)
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import flags  # noqa: E402
from engine.step import build_step  # noqa: E402
from loaders import build_loader  # noqa: E402
from loaders.augment import RECIPES  # noqa: E402
from loaders.batch import Batch  # noqa: E402
from models.methods import build_model_from_config  # noqa: E402
from loaders.datasets import open_source  # noqa: E402
from models.methods import METHODS  # noqa: E402

STUDY = "configs/fashion_study.yaml"


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, n: int, dev, repeats: int = 3) -> float:
    """Median seconds per call of fn over `repeats` windows of n calls (the device synchronised around each)."""
    if not n:
        return float("nan")
    out = []
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync(dev)
        out.append((time.perf_counter() - t) / n)
    return float(np.median(out))


def train_args(a, argv):
    """train.py's flags, resolved for this device (as train.py resolves them)."""
    t = flags.parse(argv + ["--device", a.device])
    flags.resolve_device(t)
    flags.check_world(t, 1)
    if a.tiny:   # the dry run: compiled code is traced, not generated (inductor's C++ build takes minutes)
        t.compile_augment = "aot_eager" if t.compile_augment else False
    return t


def model_and_step(t, dev, steps_per_epoch=100, tiny=False):
    model = build_model_from_config(vars(t)).to(dev).to(memory_format=torch.channels_last)
    return model, build_step(t, model, steps_per_epoch, compile_backend="aot_eager" if tiny else "inductor")


def study_argv(a, extra=()):
    tiny = ["--arch", "resnet10", "--width", "8", "--res", "16", "--subset", "256", "--batch-size", "32",
            "--proj-hidden", "64", "--proj-dim", "32", "--pred-hidden", "32", "--queue-size", "256"] if a.tiny else []
    return ["--config", STUDY, "--data", a.data, *tiny, *extra]


def device_epoch(a, dev):
    """One training epoch of the device loader and of the synthetic loader, same step, same number of batches."""
    out = {}
    for loader in ("device", "synthetic"):
        t = train_args(a, study_argv(a, ["--loader", loader]))
        src = open_source(t.dataset, t.data, train=True, subset=t.subset, seed=t.seed)
        ld = build_loader(flags.loader_options(t, t.batch_size), src, RECIPES[METHODS[t.method].recipe], dev)
        model, step = model_and_step(t, dev, len(ld), a.tiny)
        ld.set_epoch(0)
        for it, b in zip(range(5), ld):   # warm-up: compiled augmentation, cuDNN's choices, allocator
            step(b, it)
        ld.set_epoch(1)
        sync(dev)
        t0 = time.perf_counter()
        n = 0
        for it, b in enumerate(ld):
            step(b, it)
            n += b.size
        sync(dev)
        out[loader] = {"epoch_s": time.perf_counter() - t0, "images": n, "img_s": n / (time.perf_counter() - t0)}
    out["ratio_to_synthetic"] = out["synthetic"]["epoch_s"] / out["device"]["epoch_s"]
    out["epoch_60k_s"] = out["device"]["epoch_s"] * 60000 / out["device"]["images"]
    return out


def bare_step(a, dev):
    """pairs/s of the step on one replayed batch (no loader, no augmentation), eager and compiled."""
    sizes = [("resnet50", 224, 256), ("resnet18", 28, 256)] if not a.tiny else [("resnet50", 32, 4),
                                                                                ("resnet18", 16, 8)]
    out = {}
    for arch, res, bs in sizes:
        for compiled in (False, True):
            t = train_args(a, ["--arch", arch, "--res", str(res), "--batch-size", str(bs)]
                           + (["--width", "8"] if a.tiny else []) + (["--compile"] if compiled else []))
            model, step = model_and_step(t, dev, tiny=a.tiny)
            views = torch.stack([torch.randn(bs, 3, res, res, device=dev).contiguous(
                memory_format=torch.channels_last) for _ in range(2)])
            b = Batch(views, torch.arange(bs, device=dev), torch.zeros(bs, dtype=torch.long, device=dev))
            warm = 3 if a.tiny else 15   # compiled: the first calls compile (minutes for ResNet-50)
            for it in range(warm):
                step(b, it)
            s = timed(functools.partial(step, b, warm), 2 if a.tiny else 20, dev)
            out[f"{arch}_{res}_{'compiled' if compiled else 'eager'}"] = {"pairs_s": bs / s, "ms": 1000 * s}
            del model, step
    return out


def addons(a, dev):
    """ms per step of the study preset's step on synthetic batches (device augmentation included): plain,
    --bsim, --sepp (positives in the batch), and plain without the non-finite guard."""
    out = {}
    for name, extra in (("plain", []), ("bsim", ["--bsim"]), ("sepp", ["--sepp", "--loader", "device"]),
                        ("no_guard", ["--nonfinite-limit", "0"])):
        t = train_args(a, study_argv(a, ["--loader", "synthetic", *extra]))
        t.sepp = False   # the positives are tagged here (no mining): what the step pays for them
        src = open_source(t.dataset, t.data, train=True, subset=t.subset, seed=t.seed)
        opts = flags.loader_options(t, t.batch_size, name="synthetic")
        ld = build_loader(opts, src, RECIPES[METHODS[t.method].recipe], dev)
        model, step = model_and_step(t, dev, tiny=a.tiny)
        batches = list(zip(range(4), ld))
        for _, b in batches:
            if name == "sepp":   # each sample's positive is its neighbour row: in the batch, as SePP's plan makes it
                b.pos = b.index[torch.arange(b.size, device=dev) ^ 1]
        k = iter(range(10 ** 9))
        for _ in range(5):
            step(batches[next(k) % 4][1], 0)
        out[name] = {"ms": 1000 * timed(lambda: step(batches[next(k) % 4][1], 0), 4 if a.tiny else 30, dev)}
    for name in ("bsim", "sepp"):
        out[name]["overhead"] = out[name]["ms"] / out["plain"]["ms"] - 1
    out["guard_cost"] = out["plain"]["ms"] / out["no_guard"]["ms"] - 1
    return out


def knn(a, dev):
    from mining import index as mi
    from mining.bench import embeddings
    n = 4096 if a.tiny else 1_280_000
    x = embeddings(n, 128, dev)
    keys = x.to(torch.bfloat16) if dev.type == "cuda" else x
    mi.search_torch(x[:4096], keys, 6)   # compiles the kernel
    sync(dev)
    t = time.perf_counter()
    mi.search_torch(x, keys, 6)
    sync(dev)
    return {"n": n, "dim": 128, "k": 5, "seconds": time.perf_counter() - t,
            "fused": dev.type == "cuda" and __import__("mining.fused", fromlist=["available"]).available(keys)}


def sync_free_steps(a, dev):
    """Each method with BSIM and SePP, bf16 and fp16 (GPU), a few steps with sync debugging set to error."""
    out = {}
    amps = ("bf16", "fp16") if dev.type == "cuda" else ("bf16",)
    for method in METHODS:
        for amp in amps:
            t = train_args(a, study_argv(a, ["--method", method, "--loader", "device", "--bsim", "--amp", amp]))
            src = open_source(t.dataset, t.data, train=True, subset=2048 if not a.tiny else 256, seed=t.seed)
            ld = build_loader(flags.loader_options(t, t.batch_size), src, RECIPES[METHODS[method].recipe], dev)
            model, step = model_and_step(t, dev, tiny=a.tiny)
            partner = torch.arange(len(src), device=dev).roll(1)
            ld.set_epoch(0)
            it = iter(ld)
            for k in range(2):   # warm-up, unchecked: lazy initialisation, the epoch's tables
                b = next(it)
                b.pos = partner[b.index]
                step(b, k)
            key = f"{method}_{amp}"
            try:
                if dev.type == "cuda":
                    torch.cuda.set_sync_debug_mode("error")
                for k in range(3):
                    b = next(it)
                    b.pos = partner[b.index]
                    step(b, 2 + k)
                out[key] = "ok"
            except RuntimeError as e:
                out[key] = f"sync: {str(e).splitlines()[0][:200]}"
            finally:
                if dev.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
    return out


PARTS = {"device_epoch": device_epoch, "bare_step": bare_step, "addons": addons, "knn": knn,
         "sync": sync_free_steps}


def table(res: dict) -> str:
    rows = [f"GPU check on {res['device']} (torch {res['torch']}, git {res['git_sha'][:8]}, {res['date']})"]
    d = res.get("device_epoch", {})
    if "device" in d:
        rows.append(f"device loader epoch (60k, R18/28): {d['epoch_60k_s']:.1f} s; synthetic/device "
                    f"{d['ratio_to_synthetic']:.2f}")
    for k, v in res.get("bare_step", {}).items():
        if isinstance(v, dict):
            rows.append(f"bare step {k}: {v['pairs_s']:.0f} pairs/s")
    ad = res.get("addons", {})
    if "plain" in ad:
        rows.append(f"step {ad['plain']['ms']:.2f} ms; bsim {ad['bsim']['overhead']:+.0%}, sepp "
                    f"{ad['sepp']['overhead']:+.0%}, guard {ad['guard_cost']:+.0%}")
    if "seconds" in res.get("knn", {}):
        rows.append(f"kNN {res['knn']['n']} x 128 (fused {res['knn']['fused']}): {res['knn']['seconds']:.2f} s")
    bad = {k: v for k, v in res.get("sync", {}).items() if v != "ok"}
    if res.get("sync"):
        rows.append(f"sync-free steps: {len(res['sync']) - len(bad)}/{len(res['sync'])} ok"
                    + "".join(f"\n  {k}: {v}" for k, v in bad.items()))
    rows += [f"{k}: FAILED {v}" for k, v in res.get("errors", {}).items()]
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=".fm", help="a folder of Fashion-MNIST's idx files")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the dry run on a CPU)")
    p.add_argument("--parts", default=",".join(PARTS))
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device(a.device, 0) if a.device == "cuda" else torch.device(a.device)
    from engine.ckpt import git_sha
    res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "git_sha": git_sha(), "date": time.strftime("%Y-%m-%d"), "tiny": a.tiny, "errors": {}}
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for name in a.parts.split(","):
        t = time.perf_counter()
        try:
            res[name] = PARTS[name](a, dev)
        except Exception as e:   # one part's failure is a finding: the others still run
            res["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            traceback.print_exc()
        print(f"[gpu_check] {name}: {time.perf_counter() - t:.0f} s", flush=True)
        with open(os.path.join(a.out, "gpu_check.json"), "w") as f:
            json.dump(res, f, indent=1)
    text = table(res)
    with open(os.path.join(a.out, "gpu_check.txt"), "w") as f:
        f.write(text + "\n")
    print(text, flush=True)
    return res


if __name__ == "__main__":
    main()
