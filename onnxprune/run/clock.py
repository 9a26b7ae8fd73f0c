"""Per-stage wall time of a run (the report's `seconds`); public because tools time stages too."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


STAGES = ("analyze", "budget", "capture", "select", "reweight", "rewrite", "verify", "total")


@dataclass
class Clock:
    """Every stage is listed, 0.0 where a run skips it (a data-free run captures nothing)."""
    seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, since: float) -> float:
        """Charge the time since `since` to `stage`; returns now, the next stage's start."""
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (now - since)
        return now


class NoClock:
    """A clock that records nothing: inner runs (a group pruned alone) must not count twice."""

    def add(self, stage, since):
        return time.perf_counter()
