"""Self-supervised pre-training, one process or `torchrun --nproc_per_node=N train.py ...`.

    python train.py --method simclr --dataset fashion-mnist --epochs 10 --out runs/simclr
    torchrun --nproc_per_node=8 train.py --config configs/imagenet_moco_r50.yaml --data /data/imagenet

main() reads in named parts, each one screen: setup (devices, data, model, optimizer, schedules, resume,
logs), then per epoch run_epoch (begin_epoch: seeds, the extensions' epoch start, loader position; per batch train_step:
forward under autocast, loss, backward, step, momentum update; log_step; mid_epoch_checkpoint) and end_epoch
(checkpoint, kNN monitor), then finish. A checkpoint every epoch (and every --ckpt-every-min inside one).
SIGTERM or SIGUSR1 (a cluster's preemption notice): the ranks agree at the next log step, rank 0 writes a
checkpoint, and the run exits with code 3 (EXIT_STOPPED); --resume auto goes on at the next batch. Under
torchrun --max-restarts a lost worker's group restarts and resumes from the last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import flags
from extensions import build_extensions
from engine import ckpt, dist
from engine.errors import UsageError, cli_main
from engine.guard import all_finite
from engine.log import RunLog, Throughput
from engine.progress import progress
from engine.sched import TimePlan, stretch
from engine.step import Step, build_step
from eval.knn import knn_accuracy
from eval.subset import pick
from loaders import build_loader
from loaders.augment import RECIPES, DeviceAugment
from loaders.batch import Loader
from loaders.embed import Images
from loaders.splits import DataSpec, Splits, open_splits
from models.methods import METHODS, build_model_from_config


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


def save_checkpoint(r: "Run", epoch: int, *, batch: int = 0, ranks=None):
    """Atomic, keeping the previous one. epoch: epochs done; batch > 0: that many batches of the next epoch
    done too, with every rank's RNG state and partial loss (`ranks`) to go on exactly there. A --time-limit
    run's TimePlan goes in with the schedules it planned, and each add-on's state under its class's name."""
    step, args = r.step, r.args
    if not all_finite(step.model):   # only without the guard (--nonfinite-limit 0)
        raise UsageError(f"the weights are not finite at epoch {epoch + 1}: no checkpoint written "
                         f"({r.ckpt_path} keeps the previous one); lower --lr, or try --amp off")
    state = step.state_dict() | {"epoch": epoch, "batch": batch, "ranks": ranks, "method": args.method,
                                 "rng": ckpt.rng_state(), "config": r.cfg,
                                 "extensions": {type(e).__name__: e.state_dict() for e in r.extensions}}
    if r.plan is not None:
        state["plan"] = r.plan.state_dict() | {"lr": step.lr, "momentum": step.momentum}
    ckpt.save_keeping_previous(state, r.ckpt_path)


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
    """Top-1 kNN on --knn-train / --knn-test images: eval/subset.py's, the same for every run and seed."""
    w = min(2, args.workers)
    train = Images(train_src, args.res, norm, indices=pick(args.knn_train, len(train_src)), workers=w)
    test = Images(test_src, args.res, norm, indices=pick(args.knn_test, len(test_src)), workers=w)
    return knn_accuracy(model.backbone, train, test, device, k=args.knn_k, temperature=0.07)


@dataclass
class Run:
    """What the parts of a run share, every field declared: set up once by setup() and resume(), then read and
    updated by run_epoch(), the log steps and end_epoch()."""
    # set-up: the resolved flags, the process group, the device
    args: argparse.Namespace | None = None
    rank: int = 0
    world: int = 1
    main_rank: bool = True
    device: torch.device | None = None
    cfg: dict | None = None                    # the resolved config saved with every checkpoint
    ckpt_path: str = ""
    # data
    train_src: object = None
    test_src: object = None                    # the kNN monitor's split (None: no monitor)
    recipe: tuple = ()
    loader: Loader | None = None
    steps_per_epoch: int = 0
    norm: object = None                        # the plain normalisation (the monitor's and SePP's embedding)
    # model and step
    model: torch.nn.Module | None = None
    net: torch.nn.Module | None = None         # the model, inside DDP on several ranks
    step: Step | None = None
    lr_s: object = None                        # the per-iteration learning rates
    extensions: list = field(default_factory=list)   # engine/extension.py: the add-ons, from extensions.py
    plan: TimePlan | None = None               # --time-limit: the steps that fit, planned as the run goes
    epochs: int = 0                            # the epochs trained: --epochs, or those --time-limit plans
    random_init_state: dict | None = None      # --knn-random-init's weights
    acc0: float | None = None                  # the monitor at random init
    # resume
    start_epoch: int = 0
    start_batch: int = 0
    resume_ranks: list | None = None           # every rank's RNG state and partial loss, mid-epoch
    # the running epoch: logs, stops, throughput
    log: RunLog | None = None
    stops: StopSignals | None = None
    stopping: str | None = None                # the signal that is stopping the run
    last_ckpt: float = 0.0
    meter: Throughput | None = None
    images: int = 0
    time: float = 0.0
    wait: float = 0.0
    last_epoch_s: float = 0.0
    final_knn_s: float = 0.0                   # the last kNN monitor's time (outside a --time-limit)
    clock: float | None = None                 # perf_counter at this process's first step (knn.csv's minutes)
    epoch_loss: object = 0.0                   # a device tensor during an epoch (no sync)
    epoch_good: object = 0


def setup(args) -> Run:
    """Devices and ranks, data and loader, model, optimizer and schedules, then resume, config and logs."""
    r = Run()
    r.args, device = args, flags.resolve_device(args)
    r.rank, r.world, local = dist.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.backends.cudnn.benchmark = True
    r.device, r.main_rank = device, r.rank == 0
    flags.check_world(args, r.world)
    if r.main_rank:
        os.makedirs(args.out, exist_ok=True)
        print(f"data: {args.data_found}", flush=True)
        print(f"precision: {args.amp} ({args.amp_why}); channels_last {'on' if args.channels_last else 'off'}",
              flush=True)
    r.ckpt_path = os.path.join(args.out, "last.pt")
    if args.resume == "auto":
        args.resume = r.ckpt_path if ckpt.exists(r.ckpt_path) else None
    seed_everything(args.seed, 0, r.rank)

    # ---- data: what trains (and is the kNN bank), what the monitor scores (loaders/splits.py)
    splits = open_splits(DataSpec.from_args(args))
    args.val_split = splits.val_split   # recorded: the run's evaluations hold out the same samples
    r.train_src = splits.train
    r.recipe = RECIPES[args.recipe or METHODS[args.method].recipe]
    opts = flags.loader_options(args, args.batch_size // r.world)
    r.loader = build_loader(opts, r.train_src, r.recipe, device, rank=r.rank, world=r.world)
    r.steps_per_epoch = len(r.loader)
    if r.steps_per_epoch == 0:
        raise UsageError(f"{len(r.train_src)} training images make no batch of {args.batch_size}: lower --batch-size")

    # ---- model, then the step (optimizer, precision, per-iteration schedules, guard, --compile)
    model = build_model_from_config(vars(args)).to(device)
    if flags.uses_sync_bn(args, r.world, device.type, model.sync_bn):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    r.model = model
    r.net = torch.nn.parallel.DistributedDataParallel(model) if r.world > 1 else model
    # after DDP, which copies rank 0's weights to every rank: each rank's share of the kNN monitor is then
    # embedded by the same network (before it, each rank would keep its own random draw)
    r.random_init_state = {k: v.clone() for k, v in model.state_dict().items()} if args.knn_random_init else None
    r.test_src = monitor_split(args, splits, r.main_rank)
    r.norm = (r.loader.augment or  # None: DALI normalizes in its pipeline
              DeviceAugment(r.recipe, r.train_src.mean, r.train_src.std, args.channels_last)).plain
    r.extensions = build_extensions(args, r, model)   # the add-ons (extensions.py), bound to the loop's events
    r.step = build_step(args, model, r.steps_per_epoch, net=r.net, hooks=r.extensions)
    r.lr_s = r.step.lr
    r.epochs = args.epochs
    if args.time_limit_s is not None:
        most = args.epochs * r.steps_per_epoch
        r.plan = TimePlan(args.time_limit_s, most, most=most, calibrate=min(20, max(3, r.steps_per_epoch // 4)))

    resume(r)
    r.cfg = {k: v for k, v in vars(args).items()} | {"world": r.world, "git_sha": ckpt.git_sha()} | splits.record()
    if r.main_rank:
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(r.cfg, f, indent=1)
    r.log = RunLog(args.out, r.main_rank)
    r.stops, r.stopping, r.last_ckpt = StopSignals(), None, time.monotonic()
    r.meter, r.images, r.time, r.wait, r.last_epoch_s = Throughput(), 0, 0.0, 0.0, 0.0
    return r


def monitor_split(args, splits: Splits, main_rank: bool):
    """The kNN monitor's labelled split (None: off, or unlabelled images, said once); where it comes from, said
    once where it is not the data set's own split (held out of the training set, a val .beton, ...)."""
    if main_rank and splits.note:
        print(f"scored on: {splits.note}" + (" (--val-split N sets how many)" if splits.auto else ""), flush=True)
    if args.knn_every < 0:
        return None
    if splits.scored is None and main_rank:
        print("kNN monitor off: unlabelled images have no labels to score against (evaluate with eval.knn "
              "--data LABELLED_SET)", flush=True)
    return splits.scored


def resume(r: Run):
    """--resume: weights, optimizer, scaler, RNG, and where to go on (an epoch, and a batch inside it)."""
    args = r.args
    r.start_epoch, r.start_batch, r.resume_ranks = 0, 0, None
    if not args.resume:
        return
    state, read = ckpt.load_resume(args.resume)
    if state.get("method") != args.method:
        raise UsageError(f"--resume {args.resume}: a {state.get('method')} checkpoint, not {args.method}")
    for note in r.step.load_state_dict(state):
        if r.main_rank:
            print(f"note: {note}", flush=True)
    ckpt.set_rng_state(state["rng"])
    saved = state.get("extensions")   # None: a checkpoint from before the add-ons saved their state
    for e in r.extensions:
        note = e.load_state_dict(None if saved is None else saved.get(type(e).__name__, {}))
        if note and r.main_rank:
            print(f"note: {note}", flush=True)
    if r.plan is not None and state.get("plan"):   # the schedules as planned, the time already used
        r.plan.load_state_dict(state["plan"])
        r.step.lr, r.step.momentum = state["plan"]["lr"], state["plan"]["momentum"]
        r.lr_s, r.epochs = r.step.lr, -(-r.plan.total // r.steps_per_epoch)
    r.start_epoch, r.start_batch, r.resume_ranks = state["epoch"], state.get("batch", 0), state.get("ranks")
    if r.start_batch and not r.loader.resumes_mid_epoch:
        if r.main_rank:
            print(f"note: --loader {args.loader} cannot start an epoch at a batch: epoch {r.start_epoch + 1} "
                  f"restarts at its first batch (its first {r.start_batch} batches are trained on twice)", flush=True)
        r.start_batch = 0
    if r.main_rank:
        at = f" batch {r.start_batch}" if r.start_batch else ""
        print(f"resumed from {read} at epoch {r.start_epoch}{at}", flush=True)


def knn_at_random_init(r: Run):
    """--knn-random-init: the kNN monitor of the encoder before training (a fresh run only)."""
    r.acc0 = None   # the kNN monitor runs on every rank: feature extraction is sharded
    if r.random_init_state is None or r.start_epoch > 0 or r.test_src is None:
        return
    cur = {k: v.clone() for k, v in r.model.state_dict().items()}
    r.model.load_state_dict(r.random_init_state)
    r.acc0 = knn_monitor(r.model, r.args, r.device, train_src=r.train_src, test_src=r.test_src, norm=r.norm)
    r.model.load_state_dict(cur)
    if r.main_rank:
        print(f"kNN random init: {r.acc0:.2f}%", flush=True)
    r.log.write("knn", {"epoch": 0, "knn_top1": r.acc0, "what": "random-init", "minutes": 0.0}, 0)


def begin_epoch(r: Run, epoch: int) -> int:
    """Seeds, the extensions' epoch start (SePP: a refresh when due), the loader at the epoch's first batch to run.
    -> that batch."""
    args = r.args
    seed_everything(args.seed, epoch, r.rank)
    for e in r.extensions:
        e.epoch_start(r, epoch)
    skip = r.start_batch if epoch == r.start_epoch else 0
    r.loader.set_epoch(epoch, skip)
    r.model.train()
    r.epoch_loss, r.epoch_good = 0.0, 0
    if skip and r.resume_ranks and len(r.resume_ranks) == r.world:   # go on with the streams where they were
        mine = r.resume_ranks[r.rank]
        ckpt.set_rng_state(mine["rng"])
        r.epoch_loss, r.epoch_good = mine["loss_sum"], mine["good"]
    return skip


def train_step(r: Run, batch, step: int):
    """The step (engine/step.py), and the epoch's loss summed on the device (no sync)."""
    if step == r.args.fault_signal_step and r.main_rank:   # tests: a preemption notice at a known step
        os.kill(os.getpid(), signal.SIGTERM)
    if step == r.args.fault_exit_step and r.rank == r.world - 1:   # tests: a worker lost mid-epoch, once
        marker = os.path.join(r.args.out, "fault-exit-step.done")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(17)
    loss, out = r.step(batch, step)
    good = torch.isfinite(loss.detach())
    r.epoch_loss, r.epoch_good = r.epoch_loss + torch.where(good, loss.detach(), 0.0), r.epoch_good + good
    return loss, out


def log_step(r: Run, epoch: int, it: int, out: dict, bar) -> bool:
    """A log step (the one sync of the loop) after batch `it` of `epoch`, whose step output is `out`: the row, the
    non-finite limit, and the ranks' agreement to stop (a signal) or to checkpoint (--ckpt-every-min). -> whether
    a mid-epoch checkpoint is due."""
    args, loss, step = r.args, out["loss"], epoch * r.steps_per_epoch + it
    lv = dist.all_reduce_mean(loss.detach()).item()
    skipped, longest = r.step.guard.read()
    if not math.isfinite(lv) and not args.nonfinite_limit:
        raise UsageError(f"loss is {lv} at epoch {epoch + 1} step {it}: lower --lr, or try --amp off")
    if args.nonfinite_limit and longest >= args.nonfinite_limit:
        raise UsageError(f"{longest} steps in a row had a non-finite loss (by epoch {epoch + 1} step {it}; their "
                         f"updates were skipped, {skipped} in all): lower --lr, or try --amp off; {r.ckpt_path} "
                         "holds the last finite weights")
    img_s, wait = r.meter.read()
    row = {"step": step, "epoch": epoch, "loss": lv, "lr": r.lr_s[step], "img_s": img_s, "data_wait": wait,
           "skipped": skipped}
    for extra in (k for e in r.extensions for k in e.log_keys):   # a fixed CSV header: empty until the term
        row[extra] = dist.all_reduce_mean(out[extra]).item() if extra in out else ""   # exists (a warm-up)
    r.log.write("train", row, step)
    bar.set_postfix(loss=f"{lv:.4f}", img_s=f"{img_s:.0f}", wait=f"{wait:.0%}")
    due = args.ckpt_every_min > 0 and time.monotonic() - r.last_ckpt >= 60 * args.ckpt_every_min
    over = r.plan is not None and r.plan.over()
    stop, due, over = dist.any_rank([r.stops.got is not None, due, over], r.device)   # every rank agrees
    if stop:
        r.stopping = r.stops.got or "a signal to another rank"
    if over and step + 1 < r.plan.total:   # slower than planned: the run ends at this step
        if r.main_rank:
            print(f"--time-limit {args.time_limit} reached at step {step + 1}, before the {r.plan.total} planned: "
                  "the run ends here", flush=True)
        r.plan.total, r.epochs = step + 1, epoch + 1
        r.step.lr = r.lr_s = r.step.lr[:step + 1]   # the schedule saved is the one run
        if r.step.momentum is not None:
            r.step.momentum = r.step.momentum[:step + 1]
    return due


def replan(r: Run, done: int):
    """--time-limit: the steps that fit (rank 0's clock, the same plan on every rank), the schedules stretched or
    shrunk to end there, and the epochs that holds (the last one may end inside)."""
    total = dist.gather_objects(r.plan.fit(done))[0]
    if total == r.plan.total:
        return
    warm = int(r.args.warmup_epochs * r.steps_per_epoch)
    r.step.lr = r.lr_s = stretch(r.step.lr, done, total, warm)
    if r.step.momentum is not None:
        r.step.momentum = stretch(r.step.momentum, done, total)
    r.plan.total, r.epochs = total, -(-total // r.steps_per_epoch)
    if r.main_rank:
        print(f"--time-limit {r.args.time_limit}: {total} steps planned ({total / r.steps_per_epoch:.2f} "
              f"epochs), {r.plan.used() / 60:.1f} min used at step {done}", flush=True)


def mid_epoch_checkpoint(r: Run, epoch: int, done: int):
    """`done` batches of `epoch` trained: every rank's RNG state and partial loss go in with the weights."""
    ranks = dist.gather_objects({"rng": ckpt.rng_state(), "loss_sum": float(r.epoch_loss), "good": int(r.epoch_good)})
    if r.main_rank:
        save_checkpoint(r, epoch, batch=done, ranks=ranks)
    r.last_ckpt = time.monotonic()


def run_epoch(r: Run, epoch: int):
    """The epoch's batches from its first to run; stops early, after a checkpoint, on an agreed signal."""
    args, world = r.args, r.world
    skip = begin_epoch(r, epoch)
    bar = progress(total=r.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{r.epochs}",
                   enabled=r.main_rank and not args.no_progress, file=sys.stdout)
    t_epoch = t_wait = time.perf_counter()
    for it, batch in enumerate(r.loader, start=skip):
        for e in r.extensions:
            e.batch_loaded(batch)
        r.meter.waited(time.perf_counter() - t_wait, batch.size * world)
        r.wait += time.perf_counter() - t_wait
        r.images += batch.size * world
        step = epoch * r.steps_per_epoch + it
        r.clock = time.perf_counter() if r.clock is None else r.clock
        if r.plan is not None:
            r.plan.started(step)
        loss, out = train_step(r, batch, step)
        if r.plan is not None and r.plan.due(step):
            replan(r, step + 1)
        due = False
        end = r.plan is not None and step + 1 >= r.plan.total
        if it % args.log_every == 0 or it == r.steps_per_epoch - 1 or end:
            due = log_step(r, epoch, it, out, bar)
        bar.update(1)
        if r.plan is not None and step + 1 >= r.plan.total:   # the plan's last step (log_step may have moved it)
            break
        if (r.stopping or due) and it + 1 < r.steps_per_epoch:   # mid-epoch (the epoch's end writes its own)
            mid_epoch_checkpoint(r, epoch, it + 1)
            if r.stopping:
                bar.close()
                stop_run(r.stopping, epoch=epoch, batch=it + 1, path=r.ckpt_path, main_rank=r.main_rank, log=r.log)
        t_wait = time.perf_counter()
    bar.close()
    r.last_epoch_s = time.perf_counter() - t_epoch
    r.time += r.last_epoch_s


def end_epoch(r: Run, epoch: int) -> dict:
    """The epoch's checkpoint (atomic, keeping the previous one), the kNN monitor when due, the epoch's row."""
    args = r.args
    mean_loss = dist.all_reduce_mean(r.epoch_loss / max(1, r.epoch_good)).item()
    if r.main_rank:
        save_checkpoint(r, epoch + 1)
    r.last_ckpt = time.monotonic()
    row = {"epoch": epoch + 1, "loss": mean_loss, "knn_top1": ""}
    last = epoch + 1 >= r.epochs
    if r.test_src is not None and (last or (args.knn_every and (epoch + 1) % args.knn_every == 0)):
        t = time.perf_counter()
        row["knn_top1"] = knn_monitor(r.model, args, r.device, train_src=r.train_src, test_src=r.test_src, norm=r.norm)
        since = r.plan.used() if r.plan else time.perf_counter() - (r.clock or time.perf_counter())
        minutes = since / 60   # from this run's first step
        r.log.write("knn", {"epoch": epoch + 1, "knn_top1": row["knn_top1"], "what": "trained",
                            "minutes": round(minutes, 3)}, epoch + 1)
        r.final_knn_s = time.perf_counter() - t if last else 0.0
    if r.plan is not None and not last:   # the monitor's and the checkpoint's time measured: plan again
        replan(r, (epoch + 1) * r.steps_per_epoch)
    if r.main_rank:
        r.log.write("epoch", row, epoch + 1)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if v != ""),
              flush=True)
    dist.barrier()
    if r.stopping and not last:
        stop_run(r.stopping, epoch=epoch + 1, batch=0, path=r.ckpt_path, main_rank=r.main_rank, log=r.log)
    return row


def finish(r: Run, row: dict):
    """The summary line and summary.json (read by eval.report)."""
    args = r.args
    if r.main_rank and r.time > 0:
        knn = f"kNN top-1 {row['knn_top1']:.2f}%" if row.get("knn_top1") != "" else "no kNN"
        knn += f" (random init {r.acc0:.2f}%)" if r.acc0 is not None else ""
        limit = f" in {r.plan.used() / 60:.1f} min of --time-limit {args.time_limit}" if r.plan else ""
        print(f"done: {knn}; {r.images / r.time:.0f} img/s, each as {len(r.recipe)} views, "
              f"{r.wait / r.time:.0%} of the time waiting for data; trained {r.time / 60:.1f} min{limit}, final "
              f"kNN {r.final_knn_s:.0f} s; checkpoint {r.ckpt_path}", flush=True)
    skipped = report_skipped(r)
    if r.main_rank and r.time > 0:
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump({"epochs": r.epochs, "loss": row["loss"], "knn_top1": row.get("knn_top1"),
                       "knn_random_init": r.acc0, "img_s": r.images / r.time, "data_wait": r.wait / r.time,
                       "world": r.world, "device": str(r.device), "skipped": skipped, "train_s": r.time,
                       "final_knn_s": r.final_knn_s, "time_limit_s": args.time_limit_s,
                       "steps": r.plan.total if r.plan else r.epochs * r.steps_per_epoch}, f, indent=1)
    r.log.close()
    dist.cleanup()


def report_skipped(r: Run) -> int:
    """The unreadable files every rank's loader skipped: a count at the end, the list in OUT/skipped.txt."""
    skipped = {}
    for part in dist.gather_objects(dict(getattr(r.loader, "skipped", {}))):
        skipped.update(part)
    if r.main_rank and skipped:
        path = os.path.join(r.args.out, "skipped.txt")
        with open(path, "w") as f:
            f.writelines(f"{why}\n" for _, why in sorted(skipped.items()))
        print(f"skipped {len(skipped)} unreadable image(s), each replaced in its batch by another: listed in {path}",
              flush=True)
    return len(skipped)


@cli_main
def main(argv=None):
    r = setup(flags.parse(argv))
    knn_at_random_init(r)
    row = None
    epoch = r.start_epoch
    while epoch < r.epochs:   # --time-limit plans the epochs as it goes
        run_epoch(r, epoch)
        row = end_epoch(r, epoch)
        epoch += 1
    if row is not None:
        finish(r, row)
    else:
        r.log.close()
        dist.cleanup()
    return row


if __name__ == "__main__":
    main()
