"""The GPU host's measurements (scripts/gpu_check.sh runs each part in a process of its own, with its own time
limit): every figure to JSON, and each part's rows of the table appended to OUT/gpu_check.txt as the part ends, so
a run cut short keeps what finished. Needs only what such a host has (torch, torchvision, triton): no FFCV, DALI
or FAISS. Parts, each timed with synchronisation after a warm-up, medians of repeated windows:

  sync          a few training steps of each method (BSIM and SePP on, bf16 and fp16) under
                torch.cuda.set_sync_debug_mode("error"), each layer's convolution in the autocast dtype: any
                host-device sync or a layer left in fp32 fails them
  device_epoch  the device loader's 60k-image Fashion-MNIST epoch against the synthetic ceiling (the study
                preset: ResNet-18, 28 px, compiled augmentation); seconds per epoch and their ratio
  decode        the real JPEGs (scripts/gpu_prepare.sh carries ~2,000 Imagenette files): nvJPEG's batched decode
                (torchvision.io.decode_jpeg on the GPU) against the CPU's, and an epoch of the torch loader (its
                workers decode, the device augments) feeding ResNet-18 at 128 px, against the synthetic loader
  addons        what BSIM, SePP and the non-finite guard add to a step (study preset, synthetic batches with the
                device augmentation): ms per step against plain
  knn           the fused exact kNN (mining/fused.py) of 1.28M x 128 embeddings against themselves, k = 5
  bare_step     the step alone (one replayed batch, no loader, no augmentation): ResNet-50/224 eager,
                ResNet-18/28 eager and compiled: pairs/s

    python scripts/gpu_check.py --data .fm --jpegs .imagenette --out $OUT --parts sync   # on the GPU host
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/dry ...                   # the dry run (CPU)
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
from extensions import step_extensions  # noqa: E402
from loaders import build_loader  # noqa: E402
from loaders.augment import RECIPES  # noqa: E402
from loaders.batch import Batch  # noqa: E402
from loaders.datasets import open_source  # noqa: E402
from models.methods import METHODS, build_model_from_config  # noqa: E402

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


def train_args(a, argv, trace=False):
    """train.py's flags, resolved for this device (as train.py resolves them). The dry run (--tiny) traces the
    compiled augmentation where `trace` (inductor's C++ build takes minutes), else leaves it eager."""
    t = flags.parse(argv + ["--device", a.device])
    flags.resolve_device(t)
    flags.check_world(t, 1)
    if a.tiny:
        t.compile_augment = "aot_eager" if t.compile_augment and trace else False
    return t


def model_and_step(t, dev, steps_per_epoch=100, tiny=False):
    model = build_model_from_config(vars(t)).to(dev).to(memory_format=torch.channels_last)
    return model, build_step(t, model, steps_per_epoch, hooks=step_extensions(t, model),
                             compile_backend="aot_eager" if tiny else "inductor")


def study_argv(a, extra=()):
    tiny = ["--arch", "resnet10", "--width", "8", "--res", "16", "--subset", "256", "--batch-size", "32",
            "--proj-hidden", "64", "--proj-dim", "32", "--pred-hidden", "32", "--queue-size", "256"] if a.tiny else []
    return ["--config", STUDY, "--data", a.data, *tiny, *extra]


def epochs(a, dev, argv, loaders, trace=False) -> dict:
    """One training epoch of each loader for the flags argv (--loader set per loader), same step, same batches."""
    out = {}
    for loader in loaders:
        t = train_args(a, [*argv, "--loader", loader], trace)
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
        s = time.perf_counter() - t0
        out[loader] = {"epoch_s": s, "images": n, "img_s": n / s}
    return out


def device_epoch(a, dev):
    """One training epoch of the device loader and of the synthetic loader, same step, same number of batches."""
    out = epochs(a, dev, study_argv(a), ("device", "synthetic"), trace=True)   # the dry run's one traced part
    out["ratio_to_synthetic"] = out["synthetic"]["epoch_s"] / out["device"]["epoch_s"]
    out["epoch_60k_s"] = out["device"]["epoch_s"] * 60000 / out["device"]["images"]
    return out


def decode(a, dev):
    """nvJPEG's batched decode of the real JPEGs against the CPU's, then the torch loader's epoch of them."""
    from torchvision.io import read_file
    files = open_source("imagefolder", a.jpegs, train=True).files[:256 if a.tiny else None]
    data = [read_file(f) for f in files]
    out = {"files": len(files)}
    for where in ("cuda", "cpu") if dev.type == "cuda" else ("cpu",):
        out[f"bad_{where}"] = decode_all(data, where)   # also the warm-up (nvJPEG's handles, the allocator)
        out[f"{where}_img_s"] = len(data) / timed(functools.partial(decode_all, data, where), 1, dev,
                                                  repeats=2 if a.tiny else 3)
    argv = ["--dataset", "imagefolder", "--data", a.jpegs, "--method", "simclr", "--optimizer", "sgd"]
    argv += (["--arch", "resnet10", "--width", "8", "--res", "32", "--batch-size", "16", "--workers", "1",
              "--subset", "96"] if a.tiny
             else ["--arch", "resnet18", "--res", "128", "--batch-size", "128", "--workers", "16"])
    out.update(epochs(a, dev, argv, ("torch", "synthetic")))
    out["ratio_to_synthetic"] = out["synthetic"]["epoch_s"] / out["torch"]["epoch_s"]
    return out


def decode_all(data: list, where: str, chunk: int = 256) -> int:
    """torchvision.io.decode_jpeg of every file's bytes, `chunk` at a time (a batch on the GPU). -> files refused."""
    from torchvision.io import ImageReadMode, decode_jpeg
    bad = 0
    for i in range(0, len(data), chunk):
        try:
            decode_jpeg(data[i:i + chunk], mode=ImageReadMode.RGB, device=where)
        except RuntimeError:   # one bad file fails its batch: decoded one by one to count them
            for d in data[i:i + chunk]:
                try:
                    decode_jpeg(d, mode=ImageReadMode.RGB, device=where)
                except RuntimeError:
                    bad += 1
    return bad


def bare_step(a, dev):
    """pairs/s of the step on one replayed batch (no loader, no augmentation): ResNet-50/224 eager, ResNet-18/28
    eager and compiled (inductor builds ResNet-50's step in minutes: not in the first call's 8)."""
    sizes = ([("resnet18", 32, 4, (False,)), ("resnet10", 16, 8, (False, True))] if a.tiny
             else [("resnet50", 224, 256, (False,)), ("resnet18", 28, 256, (False, True))])
    out = {}
    for arch, res, bs, modes in sizes:
        for compiled in modes:
            t = train_args(a, ["--arch", arch, "--res", str(res), "--batch-size", str(bs)]
                           + (["--width", "8"] if a.tiny else []) + (["--compile"] if compiled else []))
            model, step = model_and_step(t, dev, tiny=a.tiny)
            views = torch.stack([torch.randn(bs, 3, res, res, device=dev).contiguous(
                memory_format=torch.channels_last) for _ in range(2)])
            b = Batch(views, torch.arange(bs, device=dev), torch.zeros(bs, dtype=torch.long, device=dev))
            warm = 3 if a.tiny else 15   # compiled: the first calls compile
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
    """Each method with BSIM and SePP, bf16 and fp16 (GPU), a few steps with sync debugging set to error, and
    the dtype of every convolution's output (the autocast dtype, else a layer ran in fp32)."""
    out = {}
    amps = ("bf16", "fp16") if dev.type == "cuda" else ("bf16",)
    for method in METHODS:
        for amp in amps:
            t = train_args(a, study_argv(a, ["--method", method, "--loader", "device", "--bsim", "--amp", amp]))
            t.compile_augment = False   # eager shows any sync as well, and 8 builds cannot wait for inductor
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
            out[f"{method}_{amp}"] = _checked_steps(step, it, partner, dev, {"bf16": torch.bfloat16,
                                                                           "fp16": torch.float16}[amp])
    return out


def _checked_steps(step, it, partner, dev, want) -> str:
    seen = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype)) for m in step.model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    try:
        if dev.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        for k in range(3):
            b = next(it)
            b.pos = partner[b.index]
            step(b, 2 + k)
    except RuntimeError as e:
        return f"sync: {str(e).splitlines()[0][:200]}"
    finally:
        if dev.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        for h in hooks:
            h.remove()
    return "ok" if seen == {want} else f"precision: convolutions gave {sorted(map(str, seen))}, not {want}"


PARTS = {"sync": sync_free_steps, "device_epoch": device_epoch, "decode": decode, "addons": addons, "knn": knn,
         "bare_step": bare_step}


def rows(name: str, r: dict) -> list[str]:
    """The table's rows of part `name`, whose result is r."""
    if name == "device_epoch":
        return [f"device loader epoch (60k, R18/28): {r['epoch_60k_s']:.1f} s; synthetic/device "
                f"{r['ratio_to_synthetic']:.2f}"]
    if name == "decode":
        gpu = f"nvJPEG {r['cuda_img_s']:.0f} img/s ({r['bad_cuda']} refused), " if "cuda_img_s" in r else ""
        return [f"real JPEGs ({r['files']}): {gpu}CPU {r['cpu_img_s']:.0f} img/s; torch loader epoch "
                f"{r['torch']['img_s']:.0f} img/s, synthetic/torch {r['ratio_to_synthetic']:.2f}"]
    if name == "bare_step":
        return [f"bare step {k}: {v['pairs_s']:.0f} pairs/s" for k, v in r.items()]
    if name == "addons":
        return [f"step {r['plain']['ms']:.2f} ms; bsim {r['bsim']['overhead']:+.0%}, sepp "
                f"{r['sepp']['overhead']:+.0%}, guard {r['guard_cost']:+.0%}"]
    if name == "knn":
        return [f"kNN {r['n']} x 128 (fused {r['fused']}): {r['seconds']:.2f} s"]
    bad = {k: v for k, v in r.items() if v != "ok"}
    return [f"sync-free steps in the autocast dtype: {len(r) - len(bad)}/{len(r)} ok"
            + "".join(f"\n  {k}: {v}" for k, v in bad.items())]


def record(out_dir: str, header: dict, name: str, result=None, error: str | None = None):
    """Merge a part's result into OUT/gpu_check.json and append its rows to OUT/gpu_check.txt (the header row
    first, once): what a run cut short leaves behind."""
    path = os.path.join(out_dir, "gpu_check.json")
    res = json.load(open(path)) if os.path.exists(path) else dict(header, errors={})
    if error is None:
        res[name] = result
    else:
        res["errors"][name] = error
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    txt = os.path.join(out_dir, "gpu_check.txt")
    lines = [] if os.path.exists(txt) else [f"GPU check on {header['device']} (torch {header['torch']}, git "
                                            f"{header['git_sha'][:8]}, {header['date']})"]
    lines += rows(name, result) if error is None else [f"{name}: FAILED {error}"]
    with open(txt, "a") as f:
        f.write("\n".join(lines) + "\n")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=".fm", help="a folder of Fashion-MNIST's idx files")
    p.add_argument("--jpegs", default=".imagenette", help="a folder of real JPEGs: train/<class>/*.JPEG")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the dry run on a CPU)")
    p.add_argument("--parts", default=",".join(PARTS))
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device(a.device, 0) if a.device == "cuda" else torch.device(a.device)
    from engine.ckpt import git_sha
    header = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "git_sha": git_sha(), "date": time.strftime("%Y-%m-%d"), "tiny": a.tiny}
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    res = {}
    for name in a.parts.split(","):
        t = time.perf_counter()
        try:
            res = record(a.out, header, name, PARTS[name](a, dev))
        except Exception as e:   # one part's failure is a finding: the others still run
            traceback.print_exc()
            res = record(a.out, header, name, error=f"{type(e).__name__}: "
                                                    f"{str(e).splitlines()[0][:300] if str(e) else ''}")
        print(f"[gpu_check] {name}: {time.perf_counter() - t:.0f} s", flush=True)
    return res


if __name__ == "__main__":
    main()
