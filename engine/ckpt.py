"""Checkpoints: one dict, written to a temporary file and renamed (a kill never leaves a broken one). A
training checkpoint keeps its predecessor (X.prev.pt) until the new one is complete, and a resume whose
X.pt is truncated or unreadable (a full disk, a copy cut short) falls back to it with a warning."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import torch

from engine.errors import UsageError


def git_sha() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def rng_state() -> dict:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict):
    """Restore rng_state()'s streams. CUDA: one state per visible device when saved; a run resumed where fewer
    devices are visible restores the first ones (each process trains on its own device, its local rank), and
    more devices than saved keep their own streams."""
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        for i, state in enumerate(s["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, i)


def save_atomic(obj: dict, path: str):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UsageError(f"checkpoint {path}: cannot be read ({type(e).__name__}); is it a checkpoint of "
                         f"this project?")


def previous(path: str) -> str:
    return os.path.splitext(path)[0] + ".prev.pt"


def save_keeping_previous(obj: dict, path: str):
    """save_atomic, and the checkpoint it replaces is kept as previous(path). At every moment `path` is a
    complete checkpoint (the old or the new one): the old one is hard-linked aside first."""
    if os.path.isfile(path):
        tmp = f"{previous(path)}.tmp.{os.getpid()}"
        try:
            os.link(path, tmp)
        except OSError:   # a file system without hard links: a copy
            import shutil
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous(path))
    save_atomic(obj, path)


def exists(path: str) -> bool:
    """A checkpoint to resume from: `path` or its predecessor."""
    return os.path.isfile(path) or os.path.isfile(previous(path))


def load_resume(path: str, need=("model", "optimizer", "epoch")) -> tuple[dict, str]:
    """The checkpoint at `path` -> (state, the file read); if it is missing, truncated or lacks `need`, its
    predecessor, with a warning on stderr; neither: one error line."""
    errors = []
    for p in (path, previous(path)):
        try:
            state = load(p)
        except UsageError as e:
            errors.append(str(e))
            continue
        missing = [k for k in need if k not in state]
        if missing:
            errors.append(f"checkpoint {p}: holds no {', '.join(missing)}")
            continue
        if p != path and int(os.environ.get("RANK", "0")) == 0:
            print(f"warning: {errors[0]}; resuming from the previous checkpoint {p}", file=sys.stderr, flush=True)
        return state, p
    raise UsageError(f"`resume` {path}: no readable checkpoint ({'; '.join(errors)})")
