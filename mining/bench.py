"""Whole-set kNN benchmark for SePP's refresh: N synthetic clustered embeddings searched against themselves.

    python -m mining.bench --n 1280000 --dim 128 --k 5 --backends torch,torch-block,torch-plain   # GPU host
    python -m mining.bench --n 100000 --backends torch,faiss,faiss-ivf                            # CPU
    python -m mining.bench --n 1280000 --refresh-arch resnet50 --refresh-res 224     # + the refresh's cost

torch = the index's exact torch back end (on CUDA the fused Triton product + top-k of mining/fused.py, bf16
inputs); torch-block = chunked bf16 matmul + block top-k (the unfused exact search); torch-plain = one plain
topk over each full row of scores (the baseline); faiss = exact flat index; faiss-ivf = IVF, with its
recall@k against exact search on the first 2000 queries. Each back end runs --repeat times (the first
includes Triton's compilation); `seconds` is the last run's.

--refresh-arch: in the same run, the training step (two views, bf16, channels_last; synthetic data: the
compute ceiling) and the bank's embedding pass (forward only, one unaugmented view) of that arch, so that a
refresh (embedding pass + search) is set against an epoch of N images: its share of an epoch, and per epoch
at --sepp-every 1, 2, 5, 10; and with --sepp-bank train (no pass: the step keeps its embeddings), the
step's overhead plus the search. Decoding is left out on both sides.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from mining import index as mi


def embeddings(n, d, device, seed=0, clusters=1000):
    g = torch.Generator(device="cpu").manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(clusters, d, generator=g), dim=1)
    x = centers[torch.randint(0, clusters, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g) / d ** 0.5
    return torch.nn.functional.normalize(x, dim=1).to(device)


def _rate(fn, steps, per_call, dev):
    """Items per second of `fn` (each call `per_call` items) over `steps` calls after 3 warm-up calls."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return steps * per_call / (time.perf_counter() - t)


def refresh_cost(a, dev, search_s):
    """Step pairs/s and embedding img/s of --refresh-arch on synthetic data; a refresh against an epoch."""
    import flags
    from models.methods import build_model_from_config
    from engine.step import build_step
    from loaders.batch import Batch
    from mining.sepp import TrainBank
    B, R = a.batch_size, a.refresh_res
    args = flags.parse(["--method", "simclr", "--arch", a.refresh_arch, "--res", str(R), "--batch-size", str(B),
                         "--device", dev.type] + (["--compile"] if a.compile else []))
    flags.resolve_device(args)
    model = build_model_from_config(vars(args)).to(dev).to(memory_format=torch.channels_last)
    views = torch.randn(2, B, 3, R, R, device=dev)
    batch = Batch(views, torch.arange(B, device=dev), torch.zeros(B, dtype=torch.long, device=dev))
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    train_step = build_step(args, model, max(1, a.n // B))     # train.py's step (engine/step.py)
    tb = TrainBank(a.n, model.backbone, dev)                   # --sepp-bank train: the step keeps its embeddings

    def step():
        train_step(batch, 0)

    def step_tb():
        train_step.hooks = [tb]
        train_step(batch, 0)
        train_step.hooks = []

    @torch.no_grad()
    def embed():
        with torch.autocast(**amp):
            torch.nn.functional.normalize(model.backbone(views[0]).float(), dim=1).half()

    steps = 40 if dev.type == "cuda" else 2
    model.train()
    pairs_s = _rate(step, steps, B, dev)
    tb_pairs_s = _rate(step_tb, steps, B, dev)
    tb.handle.remove()
    model.eval()
    embed_s = _rate(embed, steps * 2, B, dev)
    epoch_s, pass_s = a.n / pairs_s, a.n / embed_s
    out = {"arch": a.refresh_arch, "res": R, "batch": B, "compile": a.compile, "step_pairs_s": pairs_s,
           "embed_img_s": embed_s, "epoch_s": epoch_s, "embed_pass_s": pass_s, "search_s": search_s,
           "of_epoch": {str(e): (pass_s + search_s) / epoch_s / e for e in (1, 2, 5, 10)},
           "search_of_epoch": search_s / epoch_s, "step_train_bank_pairs_s": tb_pairs_s,
           "train_bank_step_overhead": pairs_s / tb_pairs_s - 1}
    out["train_bank_of_epoch"] = search_s / epoch_s + max(0.0, out["train_bank_step_overhead"])
    print(f"refresh vs epoch ({a.refresh_arch} {R}px, N={a.n}): step {pairs_s:.0f} pairs/s -> epoch {epoch_s:.0f} s;"
          f" embedding pass {embed_s:.0f} img/s -> {pass_s:.1f} s; search {search_s:.2f} s "
          f"({out['search_of_epoch']:.2%} of an epoch); refresh = "
          + ", ".join(f"{v:.1%} per epoch at --sepp-every {e}" for e, v in out["of_epoch"].items())
          + f"; --sepp-bank train: step {tb_pairs_s:.0f} pairs/s ({out['train_bank_step_overhead']:+.1%}), refresh "
          f"{out['train_bank_of_epoch']:.2%} of an epoch at --sepp-every 1", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--backends", default="torch,torch-plain,faiss,faiss-ivf")
    p.add_argument("--chunk", type=int, default=mi.CHUNK)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--repeat", type=int, default=1, help="runs of each back end (the last is reported)")
    p.add_argument("--refresh-arch", default=None, help="also time this arch's step and embedding pass")
    p.add_argument("--refresh-res", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--compile", action="store_true", help="torch.compile the step's model (as train.py --compile)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = embeddings(a.n, a.dim, dev)
    keys = x.to(torch.bfloat16) if dev.type == "cuda" else x
    res = {"n": a.n, "dim": a.dim, "k": a.k, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "results": {}}
    exact = None
    for name in [b.strip() for b in a.backends.split(",") if b.strip()] * a.repeat:
        if name.startswith("faiss") and mi._faiss() is None:
            print(f"{name}: faiss not installed, skipped")
            continue
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        if name == "torch-plain":
            out = []
            for s in range(0, a.n, a.chunk):
                out.append((x[s:s + a.chunk].to(keys.dtype) @ keys.T).topk(a.k + 1, dim=1).indices)
            ids = torch.cat(out)[:, 1:]
        elif name in ("torch", "torch-block"):
            ids = mi.search_torch(x, keys, a.k + 1, a.chunk, fused=False if name == "torch-block" else None)[1][:, 1:]
        else:
            ids = mi.search(x, k=a.k, backend=mi.Backend(name, nprobe=a.nprobe), exclude_self=True)[1]
        sync()
        dt = time.perf_counter() - t
        r = {"seconds": dt, "first_seconds": res["results"].get(name, {}).get("first_seconds", dt)}
        if name in ("torch", "torch-block", "faiss") and exact is None:
            exact = ids[:2000].cpu()
        if name == "faiss-ivf" and exact is not None:
            r["recall_at_k"] = mi.recall(ids[:2000].cpu(), exact)
        res["results"][name] = r
        print(f"{name:<12} {dt:8.2f} s" + (f"  recall@{a.k} {r['recall_at_k']:.3f}" if "recall_at_k" in r else ""),
              flush=True)
    if a.refresh_arch:
        res["refresh"] = refresh_cost(a, dev, min(r["seconds"] for r in res["results"].values()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
