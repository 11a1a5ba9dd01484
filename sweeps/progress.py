"""The driver's one-line progress view: trials done, running, failed, and an ETA.

The ETA weighs trials by compute (FLOPs), not by count: in an IsoFLOP design every run
of a budget costs the same, but budgets differ by 4x or more.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class SweepProgress:
    def __init__(self, sweep: str, flops_by_key: dict[str, float], out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # stderr as it is now, not as it was at import (a redirected or closed stream then)
        self.out = out if out is not None else sys.stderr
        self.sweep, self.flops_by_key, self.clock = sweep, flops_by_key, clock
        self.started_at = clock()
        self.total_flops = sum(flops_by_key.values())
        self.mean_flops = self.total_flops / max(1, len(flops_by_key))
        self.running: dict[str, float] = {}  # trial key -> start time
        self.started: set[str] = set()  # every trial key Tune started, retries once
        self.done: list[str] = []
        self.failed: list[str] = []
        self.done_flops = self.settled_flops = 0.0

    def start(self, key: str) -> None:
        self.running[key] = self.clock()
        self.started.add(key)

    def finish(self, key: str, loss: float | None) -> None:
        self.done.append(key)
        self.done_flops += self._flops(key)
        self.settled_flops += self._flops(key)
        self._end(key, f"loss {loss:.4g}" if loss is not None else "")

    def skip(self, key: str) -> None:
        """A restored trial whose grid point an earlier driver saw finish: not counted."""
        self.running.pop(key, None)
        print(f"{self.summary()}  | {key}: already finished", file=self.out, flush=True)

    def fail(self, key: str, reason: str) -> None:
        self.failed.append(key)
        self.settled_flops += self._flops(key)
        self._end(key, f"FAILED: {reason}")

    def eta_s(self) -> float | None:
        """Seconds left at the compute rate seen so far; None before a trial finished."""
        elapsed = self.clock() - self.started_at
        if self.done_flops <= 0 or elapsed <= 0:
            return None
        return max(0.0, self.total_flops - self.settled_flops) / (self.done_flops / elapsed)

    def _flops(self, key: str) -> float:
        return self.flops_by_key.get(key, self.mean_flops)  # search trials: keys unknown

    def summary(self) -> str:
        eta = self.eta_s()
        return (f"[{self.sweep}] {len(self.done)}/{len(self.flops_by_key)} done, "
                f"{len(self.running)} running, {len(self.failed)} failed, "
                f"ETA {format_seconds(eta) if eta is not None else '?'}")

    def _end(self, key: str, what: str) -> None:
        started = self.running.pop(key, None)
        took = f" in {self.clock() - started:.1f}s" if started is not None else ""
        print(f"{self.summary()}  | {key}: {what}{took}", file=self.out, flush=True)
