"""The add-ons of train.py, the one place that names them, beside flags.py at the top layer. Each add-on owns
its flags (add_flags, a group of train.py's --help), their checks (check, once the flags are resolved) and the
extension it binds to the loop's events (build, engine/extension.py), whose state checkpoints keep. A new add-on is
one class here and its entry in ADDONS: flags.py, train.py, the loaders and the methods do not change."""
from __future__ import annotations

import argparse
import os

from engine.errors import UsageError
from engine.extension import Extension


class AddOn:
    """What flags.py and train.py know of an add-on: every method is a no-op unless the add-on says otherwise."""
    title = ""
    needs_run = False   # build reads the run (its loader, its data): False where the flags and the model suffice

    def add_flags(self, a):
        """a: add_argument of this add-on's group of train.py's parser."""

    def check(self, args):
        """args: the resolved flags; a bad value is a UsageError (one line); may set values the add-on implies."""

    def build(self, args, run, model) -> Extension | None:
        """The run's extension (None: the add-on is off)."""
        return None


def _choose(flag: str, val, choices):
    if val not in choices:
        raise UsageError(f"{flag} {val}: unknown (choose from {', '.join(choices)})")


class BSIMAddOn(AddOn):
    title = "BSIM mixture views (docs/ADDONS.md)"

    def add_flags(self, a):
        a("--bsim", action="store_true", help="BSIM mixture views: add the joint-similarity mixture term")
        a("--bsim-mode", default="mixup", help="mixup | cutmix | both")
        a("--bsim-alpha", type=float, default=1.0, help="lam ~ Beta(alpha, alpha) per sample")
        a("--bsim-weight", type=float, default=1.0, help="total = L_method + w * L_mix")

    def check(self, args):
        from loaders.mix import MODES
        _choose("--bsim-mode", args.bsim_mode, MODES)
        if args.bsim_alpha <= 0:
            raise UsageError(f"--bsim-alpha {args.bsim_alpha}: must be > 0")

    def build(self, args, run, model):
        if not args.bsim:
            return None
        from loaders.mix import BSIM, MixSpec
        return BSIM(MixSpec(args.bsim_mode, args.bsim_alpha), args.bsim_weight)


class SePPAddOn(AddOn):
    title = "semantic positive pairs, SePP (docs/ADDONS.md)"
    needs_run = True

    def add_flags(self, a):
        a("--sepp", action="store_true", help="semantic positive pairs: mined nearest neighbours become positives")
        a("--sepp-k", type=int, default=5, help="candidates per anchor (one is paired with it each epoch)")
        a("--sepp-threshold", type=float, default=-1.0, help="minimum cosine similarity of a mined positive "
          "(default -1: none; chosen on a validation split, docs/RESULTS.md: filtering did not help, and mined "
          "cosines sit in 0.7-1.0 in every space, so an absolute value is the encoder's scale, not a meaning; see "
          "--sepp-keep)")
        a("--sepp-keep", type=float, default=1.0, help="a threshold relative to the encoder's similarity scale: "
          "keep the positives of the most similar KEEP share of the samples (1: all; applied after --sepp-threshold)")
        a("--sepp-center", action="store_true", help="mine in centred cosines (the bank's mean embedding "
          "subtracted before normalising): post-ReLU backbone cosines are all >= 0, centred ones spread over [-1, 1]")
        a("--sepp-every", type=int, default=1, help="refresh the bank and the pairs every N epochs")
        a("--sepp-warmup", type=int, default=1, help="epochs without SePP before the first refresh")
        a("--sepp-weight", type=float, default=1.0, help="BYOL/SimSiam: total += w * L_sepp")
        a("--sepp-encoder", default=None, help="mine once, at the start of the run, with a fixed pre-trained "
          "encoder: RUN/last.pt[:momentum], or ResNet weights of torchvision, MoCo v2, solo-learn or lightly "
          "(--arch's)")
        a("--sepp-pairs", default=None, help="the whole run uses the positives of this pairs file (python -m "
          "mining.mine): no bank, no refresh; implies --sepp; --sepp-k and --sepp-threshold apply to its neighbours")
        a("--sepp-index", default="auto", help="auto | faiss | faiss-ivf | torch")
        a("--sepp-bank", default="pass", help="pass: embed the training set without augmentation at each "
          "refresh; train: keep the embeddings of the training forward passes (no extra pass; the first refresh "
          "still makes one)")
        a("--sepp-space", default="backbone", help="mine in the backbone's features or the projector's output "
          "(projector: e.g. 128-d instead of ResNet-50's 2048, a 16x smaller bank and search)")

    def check(self, args):
        for flag, val, choices in (("--sepp-index", args.sepp_index, ("auto", "faiss", "faiss-ivf", "torch")),
                                   ("--sepp-space", args.sepp_space, ("backbone", "projector")),
                                   ("--sepp-bank", args.sepp_bank, ("pass", "train"))):
            _choose(flag, val, choices)
        if args.sepp_pairs:
            args.sepp = True
            if not os.path.isfile(args.sepp_pairs):
                raise UsageError(f"--sepp-pairs {args.sepp_pairs}: no such file (make one with python -m mining.mine)")
            if args.sepp_encoder or args.sepp_bank != "pass" or args.sepp_center:
                raise UsageError("--sepp-pairs brings its own positives: drop --sepp-encoder, --sepp-bank and "
                                 "--sepp-center (centre when mining: python -m mining.mine --center)")
        if not args.sepp:
            return
        if (args.sepp_k < 1 or args.sepp_every < 1 or args.sepp_warmup < 0 or not -1 <= args.sepp_threshold <= 1
                or not 0 < args.sepp_keep <= 1):
            raise UsageError("--sepp-k and --sepp-every must be >= 1, --sepp-warmup >= 0, --sepp-threshold in "
                             "[-1, 1], --sepp-keep in (0, 1]")
        enc = args.sepp_encoder
        if enc and not os.path.isfile(enc) and not os.path.isfile(enc.rpartition(":")[0]):
            raise UsageError(f"--sepp-encoder {enc}: no such file")
        if enc and args.sepp_bank == "train":
            raise UsageError("--sepp-bank train fills the bank from the training network: drop --sepp-encoder or use "
                             "--sepp-bank pass")
        if args.loader == "synthetic":   # refused here, not after embedding the whole set
            raise UsageError("--sepp needs real images to mine neighbours among (torch, device, ffcv or dali), "
                             "not synthetic (random pixels)")
        if args.loader == "ffcv":   # the pair plan is an index order: ours, never silently in place of another
            if args.ffcv_order not in ("auto", "ours"):
                raise UsageError(f"--sepp keeps each pair in one batch by its own sample order: --ffcv-order "
                                 f"{args.ffcv_order} would replace it (drop it, or give --ffcv-order ours)")
            args.ffcv_order = "ours"
        if args.loader == "dali" and args.dali_pipes > 1:   # checked here, not at the first refresh
            raise UsageError("--sepp with --loader dali runs one pipeline per GPU: drop --dali-pipes")

    def build(self, args, run, model):
        if not args.sepp:
            return None
        from mining.sepp import SePP
        return SePP(args, run.loader, run.train_src, run.norm, run.device, rank=run.rank, world=run.world,
                    model=model)


class NonFiniteFaultAddOn(AddOn):
    """tests: --fault-nonfinite 3,5 makes the loss of global steps 3 and 5 NaN (the non-finite guard's test)."""

    def add_flags(self, a):
        a("--fault-nonfinite", default="", help=argparse.SUPPRESS)

    @staticmethod
    def steps(args) -> set[int]:
        try:
            return {int(x) for x in args.fault_nonfinite.split(",") if x.strip()}
        except ValueError:
            raise UsageError(f"--fault-nonfinite {args.fault_nonfinite}: not a list of steps") from None

    def check(self, args):
        self.steps(args)

    def build(self, args, run, model):
        steps = self.steps(args)
        return NonFiniteFault(steps) if steps else None


class NonFiniteFault(Extension):
    """The loss of these global steps is made NaN after the forward."""

    def __init__(self, steps: set[int]):
        self.steps = steps

    def after_forward(self, batch, out, it):
        if it in self.steps:
            out["loss"] = out["loss"] * float("nan")


ADDONS: list[AddOn] = [BSIMAddOn(), SePPAddOn(), NonFiniteFaultAddOn()]


def add_flags(p: argparse.ArgumentParser):
    """Each add-on's flags, as a group of its own in --help."""
    for addon in ADDONS:
        group = p.add_argument_group(addon.title) if addon.title else p
        addon.add_flags(group.add_argument)


def check(args):
    for addon in ADDONS:
        addon.check(args)


def build_extensions(args, run, model) -> list[Extension]:
    return [e for e in (a.build(args, run, model) for a in ADDONS) if e is not None]


def step_extensions(args, model) -> list[Extension]:
    """The extensions that need no run, for a step built outside train.py (the benches, the device checks):
    BSIM's, where --bsim is on."""
    return [e for e in (a.build(args, None, model) for a in ADDONS if not a.needs_run) if e is not None]
