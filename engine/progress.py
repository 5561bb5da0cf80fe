"""Progress for terminals and for files. A terminal gets a tqdm bar; any other output (a SLURM log,
`> run.log`, a pipe) gets one plain line at most every EVERY_S seconds (30; PROGRESS_EVERY_S overrides it)
with the count, the rate and the time left, so a log file holds no bar redraws."""
from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

EVERY_S = float(os.environ.get("PROGRESS_EVERY_S", "30"))


def progress(iterable=None, *, total=None, desc: str = "", enabled: bool = True, file=None, initial: int = 0,
             leave: bool = True, unit: str = "it", **tqdm_kwargs):
    """A bar over `iterable` (or updated by hand: update(n), set_postfix(...), close()) on `file` (stderr)."""
    file = file or sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if file.isatty():
        return tqdm(iterable, total=total, desc=desc, file=file, initial=initial, leave=leave, unit=unit,
                    dynamic_ncols=True, **tqdm_kwargs)
    return Lines(iterable, total=total, desc=desc, file=file, initial=initial, unit=unit)


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Lines:
    """tqdm's surface (iterate, update, set_postfix, close, `with`) written as plain lines, at most one per
    EVERY_S seconds; a closing line with the total time if it wrote any (short work writes nothing)."""

    def __init__(self, iterable=None, total=None, desc="", file=None, initial=0, unit="it"):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.file, self.unit = iterable, total, desc, file, unit
        self.n = self.n0 = initial
        self.postfix, self.lines, self.closed = "", 0, False
        self.start = self.last = time.monotonic()

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1):
        self.n += n
        now = time.monotonic()
        if now - self.last >= EVERY_S:
            self.last = now
            self._write()

    def set_postfix(self, **kw):
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def set_description(self, desc: str):
        self.desc = desc

    def close(self):
        if not self.closed and self.lines:
            self._write(final=True)
        self.closed = True

    def _write(self, final: bool = False):
        dt = time.monotonic() - self.start
        rate = (self.n - self.n0) / dt if dt > 0 else 0.0
        parts = [f"{self.n}/{self.total} ({self.n / self.total:.0%})" if self.total else f"{self.n}",
                 f"{rate:.1f} {self.unit}/s"]
        if final:
            parts.append(f"{_hms(dt)} in all")
        elif self.total and rate > 0:
            parts.append(f"{_hms((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        self.file.write(f"{self.desc or 'progress'}: {', '.join(parts)}\n")
        self.file.flush()
        self.lines += 1
