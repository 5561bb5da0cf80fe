"""Self-supervised pre-training, one process or `torchrun --nproc_per_node=N train.py ...`.

    python train.py --method simclr --dataset fashion-mnist --epochs 10 --out runs/simclr
    torchrun --nproc_per_node=8 train.py --config configs/imagenet_moco_r50.yaml --data /data/imagenet

Reads top to bottom: set-up, data, model, optimizer, schedules, resume, then for epoch / for batch:
forward under autocast, loss, backward, step, momentum update, log; a checkpoint every epoch (and every
--ckpt-every-min inside one). SIGTERM or SIGUSR1 (a cluster's preemption notice): the ranks agree at the next
log step, rank 0 writes a checkpoint, and the run exits with code 3 (EXIT_STOPPED); --resume auto goes on at
the next batch.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from engine import ckpt, config, dist
from engine.errors import UsageError, cli_main
from engine.guard import NonFiniteGuard, all_finite
from engine.log import RunLog, Throughput
from engine.optim import build_optimizer
from engine.sched import momentum_schedule, warmup_cosine
from eval.knn import knn_accuracy
from loaders import LoaderOptions, build_loader
from loaders.augment import RECIPES, DeviceAugment
from loaders.datasets import open_source
from mining.sepp import SePP
from models.methods import METHODS


def seed_everything(seed: int, epoch: int, rank: int):
    """Every epoch's random streams derive from (seed, epoch, rank): a resumed run replays them exactly."""
    s = (seed * 1_000_003 + epoch * 10_007 + rank) % 2**31
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


EXIT_STOPPED = 3   # stopped by SIGTERM / SIGUSR1 after writing a checkpoint: run again with --resume auto


class StopSignals:
    """SIGTERM / SIGUSR1 set a flag that the loop reads at its log steps; a second one ends the process."""

    def __init__(self):
        self.got = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.got is not None:   # asked twice: stop now, without a checkpoint
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.got = signal.Signals(signum).name


def save_checkpoint(path, model, opt, scaler, args, cfg, epoch, batch=0, ranks=None):
    """Atomic, keeping the previous one. epoch: epochs done; batch > 0: that many batches of the next epoch
    done too, with every rank's RNG state and partial loss (`ranks`) to go on exactly there."""
    if not all_finite(model):   # only without the guard (--nonfinite-limit 0)
        raise UsageError(f"the weights are not finite at epoch {epoch + 1}: no checkpoint written "
                         f"({path} keeps the previous one); lower --lr, or try --amp off")
    ckpt.save_keeping_previous({"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                                "epoch": epoch, "batch": batch, "ranks": ranks, "method": args.method,
                                "rng": ckpt.rng_state(), "config": cfg}, path)


def stop_run(why, epoch, batch, path, main_rank, log):
    """After the checkpoint of a stop signal: one line, and the exit code a batch script can test."""
    if main_rank:
        at = f"epoch {epoch + 1} batch {batch}" if batch else f"the end of epoch {epoch}"
        print(f"stopped by {why} at {at}: checkpoint {path} written; run the same command with --resume auto "
              f"to go on (exit code {EXIT_STOPPED})", file=sys.stderr, flush=True)
    log.close()
    dist.barrier()
    dist.cleanup()
    sys.exit(EXIT_STOPPED)


def knn_monitor(model, args, device, train_src, test_src, norm):
    return knn_accuracy(model.backbone, train_src, test_src, args.res, norm, device, args.knn_k, 0.07,
                        args.knn_train, args.knn_test, args.seed, workers=min(2, args.workers))


@cli_main
def main(argv=None):
    # ---- set-up
    args = config.parse(argv)
    device = config.resolve_device(args)
    rank, world, local = dist.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.backends.cudnn.benchmark = True
    config.check_world(args, world)
    main_rank = rank == 0
    if main_rank:
        os.makedirs(args.out, exist_ok=True)
    if args.resume == "auto":
        args.resume = os.path.join(args.out, "last.pt") if ckpt.exists(os.path.join(args.out, "last.pt")) else None
    seed_everything(args.seed, 0, rank)

    # ---- data
    train_src = open_source(args.dataset, args.data, True, args.subset, args.seed, args.val_split)
    recipe = RECIPES[args.recipe or METHODS[args.method].recipe]
    per_rank = args.batch_size // world
    loader = build_loader(LoaderOptions.from_args(args, per_rank), train_src, recipe, device, rank, world)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise UsageError(f"{len(train_src)} training images make no batch of {args.batch_size}: lower --batch-size")

    # ---- model
    model = config.build_model_from_config(vars(args)).to(device)
    random_init_state = {k: v.clone() for k, v in model.state_dict().items()} if args.knn_random_init else None
    if world > 1 and device.type == "cuda" and model.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    # ---- optimizer, precision, schedules (per iteration)
    opt = build_optimizer(args.optimizer, model, args.lr, args.wd)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    total = args.epochs * steps_per_epoch
    lr_s = warmup_cosine(args.lr * args.batch_size / 256, 0.0, total, int(args.warmup_epochs * steps_per_epoch))
    ema_s = momentum_schedule(args.ema, total) if args.method == "byol" else np.full(total, args.ema or 0.0)

    # ---- resume
    start_epoch, start_batch, resume_ranks = 0, 0, None
    if args.resume:
        state, read = ckpt.load_resume(args.resume)
        if state.get("method") != args.method:
            raise UsageError(f"--resume {args.resume}: a {state.get('method')} checkpoint, not {args.method}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        start_epoch, start_batch, resume_ranks = state["epoch"], state.get("batch", 0), state.get("ranks")
        if start_batch and not getattr(loader, "resumes_mid_epoch", False):
            if main_rank:
                print(f"note: --loader {args.loader} cannot start an epoch at a batch: epoch {start_epoch + 1} "
                      f"restarts at its first batch (its first {start_batch} batches are trained on twice)", flush=True)
            start_batch = 0
        if main_rank:
            at = f" batch {start_batch}" if start_batch else ""
            print(f"resumed from {read} at epoch {start_epoch}{at}", flush=True)

    cfg = {k: v for k, v in vars(args).items()} | {"world": world, "git_sha": ckpt.git_sha()}
    if main_rank:
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
    if args.compile:
        for m in model.children():
            m.compile()
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    log = RunLog(args.out, main_rank)
    test_src = open_source(args.dataset, args.data, False, val_split=args.val_split) if args.knn_every >= 0 else None
    norm = (getattr(loader, "augment", None) or  # None: DALI normalizes in its pipeline
            DeviceAugment(recipe, train_src.mean, train_src.std, args.channels_last)).plain
    acc0 = None   # the kNN monitor runs on every rank: feature extraction is sharded
    if random_init_state is not None and start_epoch == 0 and test_src is not None:
        cur = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(random_init_state)
        acc0 = knn_monitor(model, args, device, train_src, test_src, norm)
        model.load_state_dict(cur)
        if main_rank:
            print(f"kNN random init: {acc0:.2f}%", flush=True)
        log.write("knn", {"epoch": 0, "knn_top1": acc0, "what": "random-init"}, 0)

    sepp = SePP(args, loader, train_src, norm, device, rank, world, model) if args.sepp else None

    # ---- train
    stops, ckpt_path, last_ckpt = StopSignals(), os.path.join(args.out, "last.pt"), time.monotonic()
    stopping = None
    guard = NonFiniteGuard(model, opt, args.nonfinite_limit, device)
    faults = {int(x) for x in args.fault_nonfinite.split(",") if x.strip()}
    meter = Throughput()
    run_images, run_time, run_wait = 0, 0.0, 0.0
    last_epoch_s = 0.0
    for epoch in range(start_epoch, args.epochs):
        seed_everything(args.seed, epoch, rank)
        if sepp is not None and sepp.due(epoch):
            info = sepp.refresh(epoch, model, progress=main_rank and not args.no_progress)
            # what the refresh costs against the training it serves (a fixed CSV header: empty before epoch 1)
            info["of_epoch"] = info["refresh_s"] / last_epoch_s if last_epoch_s else ""
            info["of_epoch_amortized"] = info["of_epoch"] / args.sepp_every if last_epoch_s else ""
            if main_rank:
                log.write("sepp", info, epoch)
                cost = (f" = {info['of_epoch']:.1%} of an epoch ({info['of_epoch_amortized']:.1%} per epoch at "
                        f"--sepp-every {args.sepp_every})") if last_epoch_s else ""
                print(f"SePP refresh: {info['paired']:.0%} of samples paired, {info['label_agreement']:.1%} of "
                      f"pairs share a label, {info['refresh_s']:.1f} s (search {info['search_s']:.1f} s){cost}",
                      flush=True)
        if sepp is not None:
            sepp.start_epoch(epoch)
        skip = start_batch if epoch == start_epoch else 0
        loader.set_epoch(epoch, skip)
        model.train()
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not main_rank
                   or args.no_progress, dynamic_ncols=True, file=sys.stdout)
        epoch_loss, epoch_good, it, t_wait = 0.0, 0, skip, time.perf_counter()
        if skip and resume_ranks and len(resume_ranks) == world:   # go on with the streams where they were
            ckpt.set_rng_state(resume_ranks[rank]["rng"])
            epoch_loss, epoch_good = resume_ranks[rank]["loss_sum"], resume_ranks[rank]["good"]
        t_epoch, due = t_wait, False
        for it, batch in enumerate(loader, start=skip):
            if sepp is not None:
                sepp.tag(batch)
            meter.waited(time.perf_counter() - t_wait, batch.size * world)
            run_wait += time.perf_counter() - t_wait
            run_images += batch.size * world
            step = epoch * steps_per_epoch + it
            if step == args.fault_signal_step and main_rank:   # tests: a preemption notice at a known step
                os.kill(os.getpid(), signal.SIGTERM)
            if step == args.fault_exit_step and rank == world - 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT",
                                                                                      "0") == "0":
                os._exit(17)   # tests: a worker lost mid-epoch, in the first attempt only
            for g in opt.param_groups:
                g["lr"] = lr_s[step]
            if sepp is not None:
                sepp.arm()
            guard.before()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = net(batch)
            if sepp is not None:
                sepp.collect(batch)
            loss = out["loss"] * float("nan") if step in faults else out["loss"]
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if model.momentum_encoder:
                model.momentum_update(float(ema_s[step]))
            guard.after(loss)
            if it % args.log_every == 0 or it == steps_per_epoch - 1:
                lv = dist.all_reduce_mean(loss.detach()).item()
                skipped, longest = guard.read()
                if not math.isfinite(lv) and not args.nonfinite_limit:
                    raise UsageError(f"loss is {lv} at epoch {epoch + 1} step {it}: lower --lr, or try --amp off")
                if args.nonfinite_limit and longest >= args.nonfinite_limit:
                    raise UsageError(f"{longest} steps in a row had a non-finite loss (by epoch {epoch + 1} step "
                                     f"{it}; their updates were skipped, {skipped} in all): lower --lr, or try "
                                     f"--amp off; {args.out}/last.pt holds the last finite weights")
                img_s, wait = meter.read()
                row = {"step": step, "epoch": epoch, "loss": lv, "lr": lr_s[step], "img_s": img_s, "data_wait": wait,
                       "skipped": skipped}
                due = args.ckpt_every_min > 0 and time.monotonic() - last_ckpt >= 60 * args.ckpt_every_min
                stop, due = dist.any_rank([stops.got is not None, due], device)   # every rank agrees
                if stop:
                    stopping = stops.got or "a signal to another rank"
                for extra, on in (("loss_mix", args.bsim), ("loss_sepp", args.sepp)):
                    if on:  # a fixed CSV header: empty until the term exists (SePP warm-up)
                        row[extra] = dist.all_reduce_mean(out[extra]).item() if extra in out else ""
                log.write("train", row, step)
                bar.set_postfix(loss=f"{lv:.4f}", img_s=f"{img_s:.0f}", wait=f"{wait:.0%}")
            good = torch.isfinite(loss.detach())
            epoch_loss, epoch_good = epoch_loss + torch.where(good, loss.detach(), 0.0), epoch_good + good
            bar.update(1)
            if (stopping or due) and it + 1 < steps_per_epoch:   # mid-epoch (the epoch's end writes its own)
                ranks = dist.gather_objects({"rng": ckpt.rng_state(), "loss_sum": float(epoch_loss),
                                             "good": int(epoch_good)})
                if main_rank:
                    save_checkpoint(ckpt_path, model, opt, scaler, args, cfg, epoch, it + 1, ranks)
                last_ckpt, due = time.monotonic(), False
                if stopping:
                    break
            t_wait = time.perf_counter()
        bar.close()
        if stopping and it + 1 < steps_per_epoch:
            stop_run(stopping, epoch, it + 1, ckpt_path, main_rank, log)
        last_epoch_s = time.perf_counter() - t_epoch
        run_time += last_epoch_s
        mean_loss = dist.all_reduce_mean(epoch_loss / max(1, epoch_good)).item()

        # ---- checkpoint (atomic), then the kNN monitor
        if main_rank:
            save_checkpoint(ckpt_path, model, opt, scaler, args, cfg, epoch + 1)
        last_ckpt = time.monotonic()
        row = {"epoch": epoch + 1, "loss": mean_loss, "knn_top1": ""}
        last = epoch + 1 == args.epochs
        if test_src is not None and (last or (args.knn_every and (epoch + 1) % args.knn_every == 0)):
            row["knn_top1"] = knn_monitor(model, args, device, train_src, test_src, norm)
            log.write("knn", {"epoch": epoch + 1, "knn_top1": row["knn_top1"], "what": "trained"}, epoch + 1)
        if main_rank:
            log.write("epoch", row, epoch + 1)
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if v != ""),
                  flush=True)
        dist.barrier()
        if stopping and epoch + 1 < args.epochs:
            stop_run(stopping, epoch + 1, 0, ckpt_path, main_rank, log)
    if main_rank and run_time > 0:
        knn = f"kNN top-1 {row['knn_top1']:.2f}%" if row.get("knn_top1") != "" else "no kNN"
        knn += f" (random init {acc0:.2f}%)" if acc0 is not None else ""
        print(f"done: {knn}; {run_images / run_time:.0f} img/s, each as {len(recipe)} views, "
              f"{run_wait / run_time:.0%} of the time waiting for data; checkpoint {args.out}/last.pt", flush=True)
        with open(os.path.join(args.out, "summary.json"), "w") as f:   # read by eval.report
            json.dump({"epochs": args.epochs, "loss": row["loss"], "knn_top1": row.get("knn_top1"),
                       "knn_random_init": acc0, "img_s": run_images / run_time, "data_wait": run_wait / run_time,
                       "world": world, "device": str(device)}, f, indent=1)
    log.close()
    dist.cleanup()
    return row if start_epoch < args.epochs else None


if __name__ == "__main__":
    main()
