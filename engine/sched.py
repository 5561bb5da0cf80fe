"""Schedules as per-iteration arrays (as DINO): computed once, indexed by the global step."""
from __future__ import annotations

import time

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


def stretch(sched: np.ndarray, at: int, total: int, warmup_steps: int = 0) -> np.ndarray:
    """`sched` (a warm-up then a decay, one value per step) re-planned at step `at` for `total` steps: the steps
    before `at` as they were, the decay's progress at `at` kept, and the rest of the decay spread over the steps
    left (resampled, so the values go on without a jump). In the warm-up, the warm-up goes on as it was."""
    old = len(sched)
    total = max(total, at + 1)
    if old <= warmup_steps + 1 or total == old:
        return np.concatenate([sched, np.full(total - old, sched[-1])]) if total > old else sched[:total].copy()
    x = (np.arange(warmup_steps, old) - warmup_steps) / (old - warmup_steps)   # the decay's progress per step
    begin = max(at, warmup_steps)
    q0 = (begin - warmup_steps) / (old - warmup_steps)
    q = q0 + (np.arange(begin, total) - begin) / (total - begin) * (1 - q0)   # warmup_cosine's spacing
    return np.concatenate([sched[:begin], np.interp(q, x, sched[warmup_steps:])])


class TimePlan:
    """Training for a wall-clock limit: the steps that fit, from the speed measured so far (the loop's own time,
    its checkpoints and monitors included), re-planned at a first calibration step and at every epoch's end;
    the schedules are stretched or shrunk to end there (stretch). used_s carries the time of earlier processes
    of a resumed run."""

    def __init__(self, limit_s: float, total: int, *, most: int, calibrate: int):
        self.limit_s, self.total, self.most, self.used_s = float(limit_s), int(total), int(most), 0.0
        self.calibrate = calibrate   # steps of this process before the first plan
        self.t0 = self.step0 = None

    def started(self, step: int):
        """This process's first step is about to run (the clock starts here, after the set-up)."""
        if self.t0 is None:
            self.t0, self.step0 = time.perf_counter(), step

    def used(self) -> float:
        return self.used_s + (time.perf_counter() - self.t0 if self.t0 is not None else 0.0)

    def over(self) -> bool:
        return self.used() >= self.limit_s

    def due(self, step: int) -> bool:
        """The calibration step: plan once this many steps have run in this process."""
        return self.step0 is not None and step + 1 - self.step0 == self.calibrate

    def fit(self, done: int) -> int:
        """Steps in all that fit in the limit, `done` of them trained: at this process's mean speed."""
        ran = done - self.step0
        if ran <= 0:
            return self.total
        per = (time.perf_counter() - self.t0) / ran
        return int(min(self.most, max(done + 1, done + 0.98 * (self.limit_s - self.used()) // per)))   # 2% spare

    def state_dict(self) -> dict:
        return {"limit_s": self.limit_s, "total": self.total, "used_s": self.used()}

    def load_state_dict(self, state: dict):
        self.total, self.used_s = int(state["total"]), float(state["used_s"])
