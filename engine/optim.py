"""SGD and LARS, with norms and biases excluded from weight decay (and from LARS's adaptation)."""
from __future__ import annotations

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
    """LARS (You et al. 2017) as in MoCo v3 / BYOL: trust ratio eta*|w|/|g + wd*w| on groups with lars."""

    def __init__(self, params, lr=0.0, momentum=0.9, weight_decay=0.0, eta=0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad.add(p, alpha=g["weight_decay"]) if g["weight_decay"] else p.grad.clone()
                if g["lars"]:
                    pn, un = torch.norm(p), torch.norm(dp)
                    q = torch.where((pn > 0) & (un > 0), g["eta"] * pn / un, torch.ones_like(pn))
                    dp.mul_(q)
                st = self.state[p]
                if "mu" not in st:
                    st["mu"] = torch.zeros_like(p)
                mu = st["mu"].mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def build_optimizer(name: str, model, lr: float, weight_decay: float, momentum: float = 0.9):
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        cuda = next(model.parameters()).is_cuda
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=cuda or None)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    raise UsageError(f"--optimizer {name}: unknown (sgd or lars)")
