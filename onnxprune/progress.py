"""Progress on stderr: a live bar on a terminal, one line per finished stage otherwise."""
from __future__ import annotations

import sys
import time


class StderrProgress:
    """Callable(stage, done, total) used as the pipeline's progress hook."""

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stage = None
        self._started = 0.0
        self._last_draw = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if stage != self._stage:
            self._stage, self._started = stage, now
        finished = total > 0 and done >= total
        if self.tty and (finished or now - self._last_draw > 0.1):
            self._last_draw = now
            width = 24
            fill = int(width * done / total) if total else width
            label = stage if len(stage) <= 48 else "..." + stage[-45:]
            self.stream.write(f"\r{label:<48} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}")
            if finished:
                self.stream.write(f" {now - self._started:.1f}s\n")
            self.stream.flush()
        elif not self.tty and finished:
            self.stream.write(f"{stage}: {done}/{total} done in {now - self._started:.1f}s\n")
            self.stream.flush()
