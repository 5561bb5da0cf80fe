"""Checkpoints: one dict, written to a temporary file and renamed (a kill never leaves a broken one)."""
from __future__ import annotations

import os
import random
import subprocess

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
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


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
