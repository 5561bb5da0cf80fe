"""One distributed path (as DINO's init_distributed_mode): torchrun, one GPU and a CPU run all go through
here; without torchrun's variables nothing is initialised and every collective is a no-op."""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init(device_kind: str) -> tuple[int, int, int]:
    """-> (rank, world, local_rank). NCCL on GPUs, gloo on CPUs."""
    if "RANK" not in os.environ or dist.is_initialized():
        return rank(), world(), int(os.environ.get("LOCAL_RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    backend, timeout = "nccl" if device_kind == "cuda" else "gloo", timedelta(minutes=30)
    store = elastic_store(timeout)
    if store is None:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), local


def elastic_store(timeout):
    """torchrun's agent lends its TCPStore to the workers (TORCHELASTIC_USE_AGENT_STORE) and keeps it across
    --max-restarts, so a restarted group would read the dead group's addresses (pytorch issue 135712: it hangs
    or is refused). Each attempt gets its own key space; None where torchrun lends no store (the default path).
    TORCHELASTIC_RESTART_COUNT agrees on every node where every agent restarts on the failure (one node, or
    static rendezvous); a multi-node c10d job should also export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a new
    store each round), as the README says."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"ssl/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def init_device(name: str) -> tuple[torch.device, int, int]:
    """--device NAME -> (this process's device, rank, world): the process group joined (under torchrun), and
    cuda resolved to the local rank's GPU. The evaluation and mining CLIs start with it."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from engine.errors import UsageError
        raise UsageError("`device` cuda: no CUDA device here; use `device` cpu")
    rank, world, local = init(device.type)
    return (torch.device("cuda", local) if device.type == "cuda" else device), rank, world


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def barrier():
    if active():
        dist.barrier()


def cleanup():
    if active():
        dist.destroy_process_group()


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank along dim 0 (equal shapes), no gradient."""
    if not active():
        return x
    out = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def share(n: int, rank: int, world: int):
    """Rank's contiguous share of range(n): ceil(n / world) rows each, so only the last shares can be short."""
    import numpy as np
    per = -(-n // world)
    return np.arange(rank * per, min(n, (rank + 1) * per))


@torch.no_grad()
def gather_shares(x: torch.Tensor, n: int, fill) -> torch.Tensor:
    """Every rank's rows of share(n, rank, world), in order: each share padded to ceil(n / world) rows with
    `fill` for all_gather, the padding (all at the end, as only trailing shares are short) cut off."""
    if not active():
        return x
    per = -(-n // world())
    pad = x.new_full((per - x.shape[0], *x.shape[1:]), fill)
    return all_gather(torch.cat([x, pad]))[:n]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(world())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, g):
        # d(sum of every rank's loss)/d(my slice): sum the gathered gradients over ranks, keep my slice.
        g = g.contiguous()
        dist.all_reduce(g)
        return g.chunk(world())[rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """all_gather whose backward sends each rank the gradient of its own slice (SimCLR's global batch)."""
    return _GatherWithGrad.apply(x) if active() and world() > 1 else x


def any_rank(flags: list[bool], device) -> list[bool]:
    """Each flag true on any rank (a sync: for log steps, where ranks agree to checkpoint or stop together)."""
    t = torch.tensor([int(f) for f in flags], device=device)
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if active():
        x = x.clone()
        dist.all_reduce(x)
        x /= world()
    return x
