"""Where the DALI loader's time goes, and which settings make it faster: loader-alone two-view pairs/s over an
image folder for a grid of pipelines and settings, in one process (one run, comparable figures).

Stages, each adding work to the previous one:
  read     the file reader alone (+ the JPEG header's shape): the storage/page-cache ceiling
  decode   + the decoder ('mixed' on a GPU: nvJPEG + the hardware decoder): the decode ceiling
  crops    + two random-resized crops, flip, normalize (loaders.dali with no colour ops)
  simclr   + SimCLR's colour jitter, grayscale, blur per view (the loader as trained)
  device   crops, then the shared device augmentation (--dali-augment device; compiled on a GPU)
Settings on simclr: --dali-branchless, --dali-hw-load, --dali-concurrent, --dali-pipes, threads, prefetch depth,
batch size, and all together.

    python scripts/sweep_dali.py --data /tmp/inet --res 224 --batch-size 256 --threads 16 --json sweep.json
    python scripts/sweep_dali.py --best sweep.json    # eval.bench's flags for the fastest simclr row
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from eval.bench import timed  # noqa: E402
from loaders import LoaderOptions  # noqa: E402
from loaders.augment import RECIPES, DeviceAugment, ViewAug  # noqa: E402
from loaders.dali import DALILoader  # noqa: E402
from loaders.datasets import open_source  # noqa: E402

CROPS = (ViewAug(jitter=0, gray=0, blur=0),) * 2


def raw_rate(files, batch, threads, device, decode, hw_load, steps, warmup):
    """Images/s of the reader alone or reader + decoder (no crops)."""
    from nvidia.dali import fn, pipeline_def, types
    cpu = device.type != "cuda"

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None if cpu else (device.index or 0),
                  prefetch_queue_depth=2)
    def pipe():
        jpegs, _ = fn.readers.file(files=files, random_shuffle=True, seed=1, name="Reader")
        if not decode:
            return fn.peek_image_shape(jpegs)
        kw = {} if cpu or hw_load is None else {"hw_decoder_load": hw_load}
        return fn.decoders.image(jpegs, device="cpu" if cpu else "mixed", output_type=types.RGB, **kw).shape()

    p = pipe()
    p.build()
    for _ in range(warmup):
        p.run()
    t = time.perf_counter()
    for _ in range(steps):
        p.run()
    return steps * batch / (time.perf_counter() - t)


def grid(a):
    """(name, stage, loader keyword arguments); simclr's baseline first, one setting changed per row."""
    base = dict(hw_load=None, branchless=False, pipes=1, concurrent=False, workers=a.threads, prefetch=2,
                batch_size=a.batch_size)
    rows = [("read", "read", base), ("decode", "decode", base), ("crops", "crops", base), ("simclr", "simclr", base)]
    for load in a.hw_loads:
        rows += [(f"decode hw-load {load}", "decode", {**base, "hw_load": load}),
                 (f"simclr hw-load {load}", "simclr", {**base, "hw_load": load})]
    rows += [("device augment", "device", base),
             ("simclr branchless", "simclr", {**base, "branchless": True}),
             ("simclr concurrent", "simclr", {**base, "concurrent": True}),
             ("simclr pipes 2", "simclr", {**base, "pipes": 2, "workers": a.threads * 2}),
             ("simclr threads /2", "simclr", {**base, "workers": max(1, a.threads // 2)}),
             ("simclr prefetch 4", "simclr", {**base, "prefetch": 4}),
             (f"simclr batch {2 * a.batch_size}", "simclr", {**base, "batch_size": 2 * a.batch_size}),
             ("simclr all", "simclr", {**base, "branchless": True, "concurrent": True,
                                      "hw_load": max(a.hw_loads, default=None)}),
             ("simclr all + pipes 2", "simclr", {**base, "branchless": True, "concurrent": True, "pipes": 2,
                                                "workers": a.threads * 2, "hw_load": max(a.hw_loads, default=None)}),
             ("device augment all", "device", {**base, "concurrent": True, "pipes": 2, "workers": a.threads * 2,
                                               "hw_load": max(a.hw_loads, default=None)})]
    return rows


def save(a, device, results):
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                       "res": a.res, "batch_size": a.batch_size, "steps": a.steps, "results": results}, f, indent=1)


def best_flags(results):
    """eval.bench's flags for the fastest simclr row that those flags can express (prefetch depth and batch
    size are not loader flags: rows that change them are left out), so the end-to-end benchmark can follow
    the sweep without anyone reading it."""
    base = next((r for r in results if r.get("name") == "simclr" and "error" not in r), None)
    if base is None:
        return ""
    rows = [r for r in results if r.get("stage") == "simclr" and r["prefetch"] == base["prefetch"]
            and r["batch_size"] == base["batch_size"]]
    r = max(rows, key=lambda r: r["pairs_per_s"])
    flags = ([f"--dali-hw-load {r['hw_load']}"] if r["hw_load"] is not None else []) + \
        (["--dali-branchless"] if r["branchless"] else []) + (["--dali-concurrent"] if r["concurrent"] else []) + \
        ([f"--dali-pipes {r['pipes']}"] if r["pipes"] != 1 else []) + \
        ([f"--workers {r['threads']}"] if r["threads"] != base["threads"] else [])
    return " ".join(flags)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--best", default=None, metavar="JSON",
                   help="print eval.bench's flags for the fastest simclr row of a sweep's JSON, and stop")
    p.add_argument("--data", default=None, help="an ImageFolder directory of JPEGs")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--hw-loads", default="0.9,1.0", help="hardware decoder fractions to try (GPU)")
    p.add_argument("--only", default=None, help="comma-separated names of rows to run (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.best:
        with open(a.best) as f:
            print(best_flags(json.load(f)["results"]))
        return
    if not a.data:
        p.error("--data is required")
    a.hw_loads = [float(x) for x in a.hw_loads.split(",") if x] if a.device.startswith("cuda") else []
    device = torch.device(a.device)
    src = open_source("imagefolder", a.data, True)
    results = []
    for name, stage, kw in grid(a):
        if a.only and name not in a.only.split(","):
            continue
        t0, kw = time.perf_counter(), dict(kw)
        batch = kw.pop("batch_size")
        try:
            if stage in ("read", "decode"):
                rate = raw_rate(src.files, batch, threads=kw["workers"], device=device, decode=stage == "decode",
                                hw_load=kw["hw_load"], steps=a.steps, warmup=a.warmup)
            else:
                aug = (DeviceAugment(RECIPES["simclr"], src.mean, src.std, compile=device.type == "cuda")
                       if stage == "device" else None)
                opts = LoaderOptions("dali", a.res, batch, workers=kw["workers"], dali_hw_load=kw["hw_load"],
                                     dali_branchless=kw["branchless"], dali_pipes=kw["pipes"],
                                     dali_concurrent=kw["concurrent"], dali_augment="device" if aug else "pipeline",
                                     dali_prefetch=kw["prefetch"])
                ld = DALILoader(src, CROPS if stage == "crops" else RECIPES["simclr"], opts, device, augment=aug)
                rate = timed(ld, a.steps, a.warmup, device)[0]
                del ld
        except Exception as e:  # one setting the GPU or DALI refuses does not stop the sweep
            print(f"{name:28s} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            results.append({"name": name, "error": str(e)[:400]})
            save(a, device, results)
            continue
        print(f"{name:28s} {rate:9.0f} pairs/s   ({time.perf_counter() - t0:.0f} s)", flush=True)
        results.append({"name": name, "stage": stage, "pairs_per_s": rate, "batch_size": batch,
                        "hw_load": kw["hw_load"], "branchless": kw["branchless"], "pipes": kw["pipes"],
                        "concurrent": kw["concurrent"], "prefetch": kw["prefetch"], "threads": kw["workers"]})
        save(a, device, results)   # after every row: a sweep cut short by a time limit keeps what it measured


if __name__ == "__main__":
    main()
