"""A step whose loss is not finite leaves no trace, and the host never waits for the device to find out.

Before the forward, the guard copies the model's tensors (parameters and buffers: BatchNorm statistics, a
MoCo queue, the momentum encoder) and the optimizer's state into a snapshot (one multi-tensor copy). After
the step and the momentum update, every one of them is put back where the loss was not finite
(torch.where on a device flag: no host-device sync). The flag is max-reduced over ranks first (DDP averaged
the non-finite gradients into every rank). Counters stay on the device: skipped steps in all, the current
run of them and the longest run; the training loop reads them at its log steps, where it syncs anyway, and
stops after --nonfinite-limit skipped steps in a row.

Optimizer state created by the skipped step itself (momentum buffers at the very first step) has no
snapshot: it is zeroed instead.
"""
from __future__ import annotations

import torch
import torch.distributed as torch_dist

from engine import dist


class NonFiniteGuard:
    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, limit: int, device):
        self.model, self.opt, self.limit = model, opt, limit
        zero = lambda: torch.zeros((), dtype=torch.int64, device=device)   # noqa: E731
        self.skipped, self.run, self.longest = zero(), zero(), zero()
        self.ts, self.snap, self.n_state = None, None, -1

    def _tensors(self) -> list[torch.Tensor]:
        """The model's parameters and buffers, then the optimizer's state tensors (appended as they appear)."""
        if self.ts is None or len(self.opt.state) != self.n_state:   # not per step: state_dict() is slow
            ts = list(self.model.state_dict(keep_vars=True).values())   # the objects themselves
            for state in self.opt.state.values():
                ts += [v for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
            self.ts, self.n_state = ts, len(self.opt.state)
        return self.ts

    @torch.no_grad()
    def before(self):
        """Before the forward: snapshot everything the step may change."""
        if not self.limit:
            return
        ts = self._tensors()
        if self.snap is None or len(self.snap) != len(ts):   # the first step, or optimizer state that appeared
            self.snap = [t.detach().clone() for t in ts]
        else:
            torch._foreach_copy_(self.snap, ts)

    @torch.no_grad()
    def after(self, loss: torch.Tensor):
        """After the update: put the snapshot back wherever the loss was not finite; count."""
        if not self.limit:
            return
        bad = ~torch.isfinite(loss.detach().float())
        if dist.active():
            flag = bad.to(torch.int32)
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
            bad = flag.bool()
        for i, t in enumerate(self._tensors()):   # the snapshot covers the first len(snap) of them
            prev = self.snap[i] if i < len(self.snap) else torch.zeros_like(t)
            t.copy_(torch.where(bad, prev, t))
        self.skipped += bad
        self.run = torch.where(bad, self.run + 1, torch.zeros_like(self.run))
        self.longest = torch.maximum(self.longest, self.run)

    def read(self) -> tuple[int, int]:
        """(skipped steps so far, the longest run of them in a row): a sync, for the log steps."""
        return int(self.skipped.item()), int(self.longest.item())


@torch.no_grad()
def all_finite(module: torch.nn.Module) -> bool:
    """Every floating-point parameter and buffer finite (one sync): checked before a checkpoint is written."""
    flags = [torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all().item()) if flags else True
