"""train.py's command line: flags with defaults that work, YAML presets that only set flags, and the checks
that turn bad input into one line (exit code 2). The resolved config is saved with the run and inside every
checkpoint. The top layer: it knows every loader, model and add-on; engine/ below it knows none of them."""
from __future__ import annotations

import argparse
import os
import re

import torch
import yaml

import extensions
from engine.errors import UsageError, parser_error_one_line
from loaders.datasets import DEFAULT_RES
from engine.precision import default_amp

# Per-method defaults (used where a flag is not given): the papers' ImageNet settings, lr per 256 images.
METHOD_DEFAULTS = {
    "simclr": dict(lr=0.3, wd=1e-6, optimizer="lars", temperature=0.2, proj_hidden=2048, proj_dim=128),
    "moco": dict(lr=0.03, wd=1e-4, optimizer="sgd", temperature=0.2, proj_hidden=2048, proj_dim=128,
                 ema=0.99, queue_size=65536),
    "byol": dict(lr=0.2, wd=1.5e-6, optimizer="lars", proj_hidden=4096, proj_dim=256, pred_hidden=4096,
                 ema=0.996),
    "simsiam": dict(lr=0.05, wd=1e-4, optimizer="sgd", proj_hidden=2048, proj_dim=2048, pred_hidden=512),
}


def _data_flags(a):
    """What a run trains: the method, the data, the loader."""
    a("--config", help="YAML preset: keys are flag names (dashes or underscores); flags given win")
    a("--loader", default="torch", help="torch | device (in-memory sets held on the training device) | "
      "synthetic | ffcv | dali")
    a("--device-max-fraction", type=float, default=0.5, help="--loader device: the training set may take at "
      "most this share of the free device memory")
    a("--method", default="simclr", help="simclr | moco | byol | simsiam")
    a("--dataset", default=None, help="fashion-mnist | imagefolder | images (unlabelled) | filelist | cifar10 | stl10 "
      "(default: what --data holds; without --data, fashion-mnist; with --loader ffcv, what the .beton holds)")
    a("--data", default=None, help="dataset root or file list (fashion-mnist: /usr/share/datasets/fashion-mnist; "
      "with --loader ffcv: not needed, the .beton's sidecar names it)")
    a("--subset", type=int, default=0, help="train on a fixed random subset of N images (0: all; with ffcv: "
      "the subset the .beton was written with, prepare --subset N --seed S)")
    a("--val-split", type=int, default=0, help="hold out N training samples (the same for every --seed) as the "
      "validation split: training uses the rest, the kNN monitor and the evaluations score on them instead of "
      "the test split (tune on this, never on the test split). A labelled set with no split of its own holds "
      "out 10%% (at most 10000) when this is 0")


def _loader_flags(a):
    """The back ends' own settings (ffcv, dali) and progressive resolution."""
    a("--beton", default=None, help="--loader ffcv: the .beton written by python -m loaders.prepare; it is the "
      "data set (its sidecar FILE.json names its kind, folder, classes, mean and std)")
    a("--val-beton", default=None, help="--loader ffcv: a .beton of the val split to score on (prepare --split "
      "val; default: the val split of the .beton's data set where it is here, else 10%% of the .beton held out)")
    a("--ffcv-order", default="auto", help="auto (ours; on one process with --no-os-cache: quasi_random) | "
      "quasi_random | random | ours (the rank split of one global permutation, as the other loaders: a resume goes "
      "on mid-epoch; FFCV's own orders restart the epoch)")
    a("--os-cache", action=argparse.BooleanOptionalAction, default=True,
      help="ffcv: use the OS page cache (off: a private cache per process, RAM grows with the number of GPUs)")
    a("--batches-ahead", type=int, default=3, help="ffcv: batches prepared ahead")
    a("--dali-roi", action="store_true", help="dali: decode only each view's crop window (two partial decodes)")
    a("--dali-hw-load", type=float, default=None, help="dali: fraction of the JPEGs sent to the GPU's hardware "
      "decoder (A100/H100; DALI's default 0.65), the rest to nvJPEG's hybrid CPU+GPU decoder")
    a("--dali-branchless", action="store_true", help="dali: jitter/grayscale/blur/solarize as per-sample "
      "identity factors instead of DALI conditionals (fewer operators; every sample pays the jitter and blur)")
    a("--dali-augment", default="pipeline", help="dali: pipeline (every augmentation in DALI) | device (DALI "
      "decodes and crops; the shared device augmentation, --compile-augment, does the rest)")
    a("--dali-pipes", type=int, default=1, help="dali: pipelines per GPU, each batch/N with its own executor")
    a("--dali-concurrent", action="store_true", help="dali: independent operators (the views) run at once, "
      "each on its own CUDA stream (DALI's default: one GPU operator at a time)")
    a("--skip-files", default=None, help="dali: skip the images listed in this report (loaders.prepare --check)")
    a("--min-res", type=int, default=0, help="progressive resolution (ffcv): start at this crop size ...")
    a("--start-ramp", type=int, default=0, help="... until this epoch, then grow linearly ...")
    a("--end-ramp", type=int, default=0, help="... to --res at this epoch (default: the last epoch)")


def _model_flags(a):
    """The network, its heads, the schedule and the optimizer."""
    a("--arch", default="resnet18", help="resnet10 | resnet18 | resnet34 | resnet50")
    a("--small-stem", action=argparse.BooleanOptionalAction, default=None,
      help="3x3 first conv, no max-pool (default: on when --res <= 96)")
    a("--stem-stride", type=int, default=1)
    a("--width", type=int, default=64, help="channels of the ResNet's first stage, doubling per stage (torchvision: "
      "64); 32 halves every stage, about 4x fewer FLOPs")
    a("--res", type=int, default=None, help="crop size (default: 224, 28 for fashion-mnist, 32/96 CIFAR/STL)")
    a("--epochs", type=int, default=100)
    a("--time-limit", default=None, help="train for this wall-clock time (90s, 15m, 1h30m; a bare number: minutes), "
      "from the first step, the set-up and the final kNN apart: the schedules are planned for the steps that fit "
      "(measured as it goes), the run ends there with a checkpoint and the final kNN; --epochs is then the most")
    a("--batch-size", type=int, default=256, help="global batch size, split over ranks")
    a("--lr", type=float, default=None, help="base learning rate per 256 images (scaled linearly)")
    a("--wd", type=float, default=None)
    a("--optimizer", default=None, help="sgd | lars")
    a("--warmup-epochs", type=float, default=10)
    a("--ema", type=float, default=None, help="momentum-encoder momentum (MoCo: constant; BYOL: base of cosine)")
    a("--temperature", type=float, default=None)
    a("--proj-hidden", type=int, default=None)
    a("--proj-dim", type=int, default=None)
    a("--pred-hidden", type=int, default=None)
    a("--queue-size", type=int, default=None)
    a("--recipe", default=None, help="augmentation recipe: simclr | byol (default: the method's)")


def _run_flags(a):
    """Where, how precisely, how often: output, resume, precision, devices, monitor, faults, logs."""
    a("--out", default="runs/default")
    a("--resume", default=None, help="checkpoint to resume from ('auto': OUT/last.pt if it exists)")
    a("--amp", default=None, help="bf16 | fp16 | off (default: bf16 on GPUs and on CPUs with native bf16, "
      "AVX512-BF16 or AMX; off elsewhere)")
    a("--compile", action="store_true", help="torch.compile the step: the forward with its loss (and their "
      "backward), and the optimizer's update (a fused SGD stays as it is)")
    a("--sync-bn", action=argparse.BooleanOptionalAction, default=None, help="SyncBatchNorm under multi-GPU DDP "
      "(global-batch statistics; default: the method's choice, on for SimCLR and BYOL); not with --compile")
    a("--compile-augment", action="store_true", help="torch.compile the device augmentation (GPU)")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="NHWC memory format (default: "
      "on)")
    a("--device", default="auto", help="auto | cpu | cuda")
    a("--seed", type=int, default=0)
    a("--workers", type=int, default=None, help="loader workers per rank (default: cores / ranks, <= 8)")
    a("--knn-every", type=int, default=10, help="kNN monitor every N epochs (and at the end); 0: only at end")
    a("--knn-k", type=int, default=200)
    a("--knn-train", type=int, default=0, help="kNN monitor: training images used (0: all)")
    a("--knn-test", type=int, default=0, help="kNN monitor: test images used (0: all)")
    a("--knn-random-init", action="store_true", help="also report kNN of the encoder at random init")
    a("--ckpt-every-min", type=float, default=0, help="also write a checkpoint inside an epoch every N minutes "
      "(0: at epoch ends only); a run resumes from it at the next batch (torch, device, ffcv loaders)")
    a("--nonfinite-limit", type=int, default=20, help="a step with a non-finite loss is skipped (weights, "
      "statistics and optimizer state restored, no host-device sync); this many in a row stop the run (0: no "
      "guard, a non-finite loss at a log step stops the run)")
    a("--fault-signal-step", type=int, default=-1, help=argparse.SUPPRESS)   # tests: rank 0 SIGTERMs itself there
    a("--fault-exit-step", type=int, default=-1, help=argparse.SUPPRESS)   # tests: the last rank dies there, once
    a("--log-every", type=int, default=10)
    a("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Self-supervised pre-training (SimCLR, MoCo v2, BYOL, SimSiam).")
    parser_error_one_line(p)
    a = p.add_argument
    for group in (_data_flags, _loader_flags, _model_flags, _run_flags):
        group(a)
    extensions.add_flags(p)
    return p


def parse(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.config:
        if not os.path.isfile(args.config):
            raise UsageError(f"--config {args.config}: no such file")
        with open(args.config) as f:
            preset = yaml.safe_load(f) or {}
        dests = {a.dest for a in p._actions}
        # per_method: {method: {flag: value}}, applied over the rest for the run's method (flags still win)
        per_method = preset.pop("per_method", None) or {}
        if not isinstance(per_method, dict) or not all(isinstance(v, dict) for v in per_method.values()):
            raise UsageError(f"--config {args.config}: per_method must map a method to its flags")

        def layer(flags: dict):
            flags = {k.replace("-", "_"): v for k, v in flags.items()}
            unknown = sorted(set(flags) - dests)
            if unknown:
                raise UsageError(f"--config {args.config}: unknown keys {unknown}")
            p.set_defaults(**flags)
            return p.parse_args(argv)
        args = layer(preset)
        args = layer(per_method.get(args.method) or {})   # the resolved method: a --method flag wins over the preset
    return resolve(args)


def resolve(args):
    from loaders import LOADERS
    from models.backbones import ARCHS
    from models.methods import METHODS
    for flag, val, choices in (("--loader", args.loader, LOADERS), ("--method", args.method, METHODS),
                               ("--arch", args.arch, ARCHS), ("--amp", args.amp, (None, "bf16", "fp16", "off")),
                               ("--device", args.device, ("auto", "cpu", "cuda")),
                               ("--optimizer", args.optimizer, (None, "sgd", "lars")),
                               ("--recipe", args.recipe, (None, "simclr", "byol"))):
        if val not in choices:
            raise UsageError(f"{flag} {val}: unknown (choose from {', '.join(c for c in choices if c)})")
    for k, v in METHOD_DEFAULTS[args.method].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    resolve_data(args)
    if args.res is None:
        args.res = DEFAULT_RES.get(args.dataset, 224)
    if args.small_stem is None:
        args.small_stem = args.res <= 96
    if args.min_res:
        args.end_ramp = args.end_ramp or max(0, args.epochs - 1)
        if not 0 < args.min_res <= args.res or not 0 <= args.start_ramp <= args.end_ramp:
            raise UsageError(f"--min-res {args.min_res} --start-ramp {args.start_ramp} --end-ramp {args.end_ramp}: "
                             f"need 0 < min-res <= --res ({args.res}) and start-ramp <= end-ramp")
    from loaders.dali import check_options
    check_options(args.dali_hw_load, args.dali_pipes, args.dali_augment)
    args.time_limit_s = duration(args.time_limit)
    if args.epochs < 1 or args.batch_size < 2:
        raise UsageError("--epochs must be >= 1 and --batch-size >= 2")
    extensions.check(args)   # each add-on its own flags (extensions.py), once the core flags are checked
    return args


def duration(text) -> float | None:
    """--time-limit's value in seconds: 90s, 15m, 1h30m, 1.5h, or a bare number of minutes (None: none)."""
    if text is None or text == "":
        return None
    t = str(text).strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", t)
    if re.fullmatch(r"\d+(?:\.\d+)?", t):
        seconds = 60 * float(t)
    elif parts and any(parts.groups()):
        h, m, s = (float(g or 0) for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    else:
        raise UsageError(f"--time-limit {text}: not a duration (such as 90s, 15m, 1h30m, or minutes)")
    if seconds <= 0:
        raise UsageError(f"--time-limit {text}: must be more than 0")
    return seconds


def resolve_data(args):
    """The data set: what --data holds, or with --loader ffcv what the .beton's sidecar says (--dataset, --data and
    --subset may be left out; given, they must agree with it: loaders/beton.py)."""
    from loaders.splits import DataSpec, recognised
    if args.val_split < 0:
        raise UsageError(f"--val-split {args.val_split}: must be >= 0")
    if args.val_beton and args.loader != "ffcv":
        raise UsageError(f"--val-beton {args.val_beton} scores a .beton run: add --loader ffcv --beton FILE")
    if args.loader == "ffcv" and not args.beton:
        raise UsageError("--loader ffcv needs --beton FILE (make one with: python -m loaders.prepare --out FILE)")
    spec, args.data_found = recognised(DataSpec.from_args(args))
    args.dataset, args.data = spec.dataset, spec.data
    if args.loader == "ffcv":   # recorded whole: the run's evaluations read the same files from anywhere
        args.beton = os.path.abspath(args.beton)
        args.val_beton = args.val_beton and os.path.abspath(args.val_beton)


def loader_options(args, batch_size: int, **override):
    """The LoaderOptions of the flags `args`; override wins."""
    from loaders import LoaderOptions
    return LoaderOptions.from_args(args, batch_size, **override)


def resolve_device(args) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible (use --device cpu)")
    dev = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    dev = "cpu" if dev == "auto" else dev
    args.amp_why = "--amp"
    if args.amp is None:
        args.amp, args.amp_why = default_amp(dev)
    if args.amp == "fp16" and dev == "cpu":
        raise UsageError("--amp fp16 needs a GPU (fp16 + GradScaler); on CPU use --amp bf16 or off")
    if args.channels_last is None:   # faster or the same everywhere we measured (docs/BENCHMARKS.md)
        args.channels_last = True
    return torch.device(dev)


def uses_sync_bn(args, world: int, device_type: str, method_default: bool) -> bool:
    """Whether the run converts its BatchNorm to SyncBatchNorm (several GPUs, and the method or --sync-bn asks).
    Not with --compile: dynamo breaks the graph at every SyncBatchNorm (pytorch#161302: ResNet-50 would run as 54
    small graphs) and compile + DDP + SyncBatchNorm has open failure reports (pytorch#107372)."""
    on = method_default if args.sync_bn is None else args.sync_bn
    use = bool(on) and world > 1 and device_type == "cuda"
    if use and args.compile:
        raise UsageError(f"--compile with SyncBatchNorm ({args.method} on {world} GPUs): torch.compile breaks its "
                         "graph at every SyncBatchNorm (pytorch#161302); drop --compile, or add --no-sync-bn "
                         "(per-GPU BatchNorm statistics)")
    return use


def check_world(args, world: int):
    if args.batch_size % world:
        raise UsageError(f"--batch-size {args.batch_size} is not divisible by the {world} processes")
    if args.workers is None:
        args.workers = max(1, min(8, (os.cpu_count() or 2) // world))
