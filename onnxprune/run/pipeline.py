"""`prune`: load -> analyze -> budget -> capture -> select -> reweight -> rewrite -> verify -> report.

Every option and input is validated before the first slow stage starts. A `Workspace` pairs
the immutable `Session` (session.py: model, analysis, calibration, device) with the
`LayerCache` (layercache.py) that layer-mode runs share, so `sweep` and tools pay for those
once; each run is `runner.prune_run`, its budget `allocate.counts`.
"""
from __future__ import annotations

from collections.abc import Callable

from . import allocate
from .clock import Clock
from .layercache import LayerCache
from .options import MODES, PruneOptions
from .runner import prune_run
from .session import close_session, open_session

__all__ = ["MODES", "PruneOptions", "Workspace", "prune"]


def prune(model, calib=None, *, progress: Callable | None = None, **options):
    """Prune `model` (a path or ModelProto) and return (pruned ModelProto, Report).

    `calib` is a path (.npz/.npy), a dict of arrays per input name, one array, a Calibration,
    a source (io.sources: ImageFolder, TextFile, LoaderScript), a reader with get_next() or an
    iterable of feed dicts, or None (then pass calib_random=N, or use a data-free method
    without reweighting).
    Keyword options are the fields of PruneOptions.
    """
    opts = PruneOptions.of(**options)
    opts.validate()
    ws = Workspace(model, calib, opts)
    try:
        return ws.prune(opts, progress)
    finally:
        ws.close()


class Workspace:
    """A session plus its layer cache: what several runs over one model share. Session
    fields (model, groups, calibration, device, batch_size, ...) read through it."""

    def __init__(self, model, calib, opts: PruneOptions, source: str | None = None):
        self.session = open_session(model, calib, opts, source)
        self.cache = LayerCache(self.session)

    def __getattr__(self, name):
        if name in ("session", "cache"):            # not set yet (copy, unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.session, name)

    def prune(self, opts: PruneOptions, progress: Callable | None = None, include_setup: bool = True):
        """One run with `opts` (their data and model options must be the workspace's)."""
        return prune_run(self.session, self.cache, opts, self.counts, progress, include_setup)

    def close(self) -> None:
        """Stop the Ray capture workers, if the session has any (nothing else needs closing)."""
        close_session(self.session)

    def check_budget(self, opts: PruneOptions) -> None:
        allocate.check_budget(self.session, opts)

    def target(self, opts: PruneOptions):
        return allocate.target(self.session, opts)

    def counts(self, opts: PruneOptions, clock: Clock, progress=None) -> dict:
        """Kept channels per group (a tool may replace this to try its own allocation)."""
        return allocate.counts(self.session, self.cache, opts, clock, progress)
