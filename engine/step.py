"""The training step, once: train.py runs it and eval.bench and mining.bench time it.

    step = build_step(args, model, steps_per_epoch)        # or Step(model, optimizer, amp=..., lr=..., ...)
    loss, out = step(batch, it)                            # it: the global iteration (indexes the schedules)

One call: the iteration's learning rate and momentum from per-iteration schedules (DINO's arrays), the
extensions' before_forward, the forward under autocast (with the extensions' loss terms), their after_forward,
backward through the fp16 GradScaler where it is on, the optimizer step, the momentum encoder's update, and the
non-finite guard around all of it (engine/guard.py). Nothing in it waits for the device: tests/test_device_check.py
runs it on a fake CUDA device and fails on any sync.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from engine.extension import adds_terms
from engine.guard import NonFiniteGuard
from engine.optim import build_optimizer, compile_update, lr_as_tensors
from engine.precision import amp_dtype, grad_scaler, load_scaler_state
from engine.sched import momentum_schedule, warmup_cosine


class Step:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, amp: str = "off",
                 lr: np.ndarray | None = None, momentum: np.ndarray | None = None, nonfinite_limit: int = 20,
                 net: nn.Module | None = None, hooks=()):
        """model: the method (its forward(batch) -> dict with 'loss'); net: what runs the forward (a DDP wrapper
        of model), model itself by default; lr / momentum: per-iteration arrays (None: left as they are);
        hooks: objects with before_forward(batch, it) and/or after_forward(batch, out, it) (which may change
        out['loss']); the extensions among them that bring loss terms (engine/extension.py) go into the forward."""
        self.model, self.opt, self.net = model, optimizer, net or model
        device = next(model.parameters()).device
        self.device_type, self.amp, self.dtype = device.type, amp, amp_dtype(amp)
        self.scaler = grad_scaler(device.type, amp)
        self.guard = NonFiniteGuard(model, optimizer, nonfinite_limit, device)
        self.lr, self.momentum, self.hooks = lr, momentum, list(hooks)
        self.terms = [h for h in self.hooks if adds_terms(h)]

    def __call__(self, batch, it: int = 0):
        """One update from `batch` at global iteration `it`. -> (loss tensor, the forward's output dict)."""
        if self.lr is not None:
            lr = float(self.lr[it])
            for g in self.opt.param_groups:
                if isinstance(g["lr"], torch.Tensor):   # a compiled update's input: filled on the device
                    g["lr"].fill_(lr)
                else:
                    g["lr"] = lr
        for h in self.hooks:
            getattr(h, "before_forward", _nothing)(batch, it)
        self.guard.before()
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.net(batch, self.terms) if self.terms else self.net(batch)
        for h in self.hooks:
            getattr(h, "after_forward", _nothing)(batch, out, it)
        loss = out["loss"]
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if getattr(self.model, "momentum_encoder", False):
            self.model.momentum_update(float(self.momentum[it]) if self.momentum is not None else 0.99)
        self.guard.after(loss)
        return loss, out

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> list[str]:
        """Weights, optimizer and loss scale of a checkpoint. -> notes for the user (a scale started afresh)."""
        self.model.load_state_dict(state["model"])
        compiled = isinstance(self.opt.param_groups[0]["lr"], torch.Tensor)
        self.opt.load_state_dict(state["optimizer"])
        if compiled:   # the saved lr may be a float (an eager run's): a compiled update takes tensors
            lr_as_tensors(self.opt, next(self.model.parameters()).device)
        else:
            for g in self.opt.param_groups:
                g["lr"] = float(g["lr"])
        if self.amp == "fp16" and not load_scaler_state(self.scaler, state.get("scaler")):
            return ["the checkpoint was saved without fp16: the loss scale starts afresh"]
        return []


def _nothing(*_):
    pass


def compile_step(model: nn.Module, opt: torch.optim.Optimizer, backend: str = "inductor"):
    """--compile: the method's forward with its loss as one graph (AOTAutograd compiles its backward), and the
    optimizer's update (engine/optim.compile_update). tests/test_compile.py finds no graph break in either."""
    model.compile(backend=backend)
    compile_update(opt, next(model.parameters()).device, backend)


def schedules(args, steps_per_epoch: int, cosine_momentum: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(lr, momentum) per iteration from the flags: lr per 256 images scaled to the global batch, warmed up
    linearly then cosine to 0; momentum constant (MoCo), or with cosine_momentum (BYOL) a cosine from ema to 1."""
    total = args.epochs * steps_per_epoch
    lr = warmup_cosine(args.lr * args.batch_size / 256, 0.0, total, int(args.warmup_epochs * steps_per_epoch))
    ema = momentum_schedule(args.ema, total) if cosine_momentum else np.full(total, args.ema or 0.0)
    return lr, ema


def build_step(args, model: nn.Module, steps_per_epoch: int, net: nn.Module | None = None, hooks=(),
               compile_backend: str = "inductor") -> Step:
    """The Step that train.py runs for the resolved flags `args` (flags.py): its optimizer, precision,
    schedules, guard, and --compile. eval.bench and mining.bench build theirs here too."""
    opt = build_optimizer(args.optimizer, model, args.lr, args.wd)
    lr, ema = schedules(args, steps_per_epoch, getattr(model, "cosine_momentum", False))
    if getattr(args, "compile", False):
        compile_step(model, opt, compile_backend)
    return Step(model, opt, amp=args.amp, lr=lr, momentum=ema, nonfinite_limit=args.nonfinite_limit, net=net,
                hooks=hooks)
