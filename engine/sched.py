"""Schedules as per-iteration arrays (as DINO): computed once, indexed by the global step."""
from __future__ import annotations

import numpy as np


def warmup_cosine(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                  start: float = 0.0) -> np.ndarray:
    warm = np.linspace(start, base, warmup_steps, endpoint=False) if warmup_steps > 0 else np.array([])
    t = np.arange(total_steps - len(warm))
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(1, len(t))))
    return np.concatenate([warm, cos])[:total_steps]


def momentum_schedule(base: float, total_steps: int) -> np.ndarray:
    """BYOL's tau: 1 - (1 - base) * (cos(pi k / K) + 1) / 2, from base to 1."""
    return warmup_cosine(base, 1.0, total_steps)
