"""SGD and LARS, with norms and biases excluded from weight decay (and from LARS's adaptation), and the update
compiled under --compile (compile_update)."""
from __future__ import annotations

import inspect

import torch

from engine.errors import UsageError


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)   # biases and norm weights are 1-D
    return [{"params": decay, "weight_decay": weight_decay, "lars": True},
            {"params": no_decay, "weight_decay": 0.0, "lars": False}]


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in MoCo v3 / BYOL: trust ratio eta*|w|/|g + wd*w| on groups with lars.

    Under fp16 the GradScaler hands it the scale and the found-inf flag (_step_supports_amp_scaling, as the
    fused optimizers): it unscales the gradients itself and skips the update where they were not finite, on
    the device. Otherwise the scaler reads that flag on the host (a sync every step)."""
    _step_supports_amp_scaling = True

    def __init__(self, params, lr=0.0, momentum=0.9, weight_decay=0.0, eta=0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if scale is None else p.grad / scale
                dp = grad.add(p, alpha=g["weight_decay"]) if g["weight_decay"] else grad.clone()
                if g["lars"]:
                    pn, un = torch.norm(p), torch.norm(dp)
                    q = torch.where((pn > 0) & (un > 0), g["eta"] * pn / un, torch.ones_like(pn))
                    dp.mul_(q)
                st = self.state[p]
                if "mu" not in st:
                    st["mu"] = torch.zeros_like(p)
                if found_inf is None:
                    mu = st["mu"].mul_(g["momentum"]).add_(dp)
                    if isinstance(g["lr"], torch.Tensor):   # the update compiled (compile_update)
                        p.sub_(mu * g["lr"])
                    else:
                        p.add_(mu, alpha=-g["lr"])
                else:   # skipped where the scaled gradients overflowed: momentum and weights kept
                    skip = found_inf > 0
                    mu = torch.where(skip, st["mu"], st["mu"] * g["momentum"] + dp)
                    st["mu"].copy_(mu)
                    p.copy_(torch.where(skip, p, p - g["lr"] * mu))


def build_optimizer(name: str, model, lr: float, weight_decay: float, momentum: float = 0.9):
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        cuda = next(model.parameters()).is_cuda
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=cuda or None)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    raise UsageError(f"`optimizer` {name}: unknown (sgd or lars)")


def compile_update(opt: torch.optim.Optimizer, device, backend: str = "inductor") -> bool:
    """torch.compile the optimizer's update as one graph (its step hooks and profiling left out), the learning
    rates held as tensors on `device` that Step fills in place: a float lr is a constant to dynamo, so each new
    value of the schedule would compile again. torch.optim's own step wrapper breaks the graph on purpose
    (pytorch#104053, to keep the update out of autograd): no_grad does that here. A fused SGD is one multi-tensor
    kernel already (and dynamo has no fake kernel for it): it stays as it is. -> whether it was compiled."""
    if opt.defaults.get("fused"):
        return False
    lr_as_tensors(opt, device)
    update = inspect.unwrap(type(opt).step)

    def step():
        with torch.no_grad():
            update(opt)
    opt.step = torch.compile(step, backend=backend)
    return True


def lr_as_tensors(opt: torch.optim.Optimizer, device):
    for g in opt.param_groups:
        g["lr"] = torch.tensor(float(g["lr"]), device=device)
