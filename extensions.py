"""The extensions a run of train.py gets from its flags (engine/extension.py): the one place that names them,
beside flags.py at the top layer. A new add-on is its class and one line in BUILDERS."""
from __future__ import annotations

from engine.extension import Extension


def sepp(args, run, model):
    if not args.sepp:
        return None
    from mining.sepp import SePP
    return SePP(args, run.loader, run.train_src, run.norm, run.device, rank=run.rank, world=run.world, model=model)


def bsim(args, run, model):
    if not args.bsim:
        return None
    from loaders.mix import BSIM
    return BSIM()


def nonfinite_fault(args, run, model):
    steps = {int(x) for x in args.fault_nonfinite.split(",") if x.strip()}
    return NonFiniteFault(steps) if steps else None


class NonFiniteFault(Extension):
    """tests (--fault-nonfinite): the loss of these global steps is made NaN after the forward."""

    def __init__(self, steps: set[int]):
        self.steps = steps

    def after_forward(self, batch, out, it):
        if it in self.steps:
            out["loss"] = out["loss"] * float("nan")


BUILDERS = [bsim, sepp, nonfinite_fault]


def build_extensions(args, run, model) -> list[Extension]:
    return [e for e in (b(args, run, model) for b in BUILDERS) if e is not None]
