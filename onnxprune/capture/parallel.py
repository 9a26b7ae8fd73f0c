"""Data-parallel capture: calibration batches split across workers, statistics summed back.

Capture statistics are sums over samples, so they shard. Worker w holds a contiguous block of
the calibration *batches* (`shard_ranges`: the same batches one process would run, so every
batch computes the same values) and returns its partial sums (`stats.PartialSums`); the driver
adds them in worker order, a fixed order, so a run is reproducible for a given worker count.
A batch's float32 products are the same numbers on any worker (each batch is shifted by its own
mean; `--max-rows` draws by the batch's calibration index, `ShardWorker.first_batch`), so the
result differs from one process only by float64 summation order. seq/asym steps stay sequential (each
needs the model pruned so far); within a step every worker runs its shard. Each worker keeps
its own `Stream`s, so a step resumes from the frontier of *its* samples (prefix.py).

This module knows nothing of Ray: a pool is anything with `workers`, `shards`, `put`, `map`,
`tell` and `timings` (ray_workers.RayPool runs `ShardWorker`s as Ray actors; `LocalPool` runs
them in this process, which tests use to check the sharding and the reduction without Ray).
"""
from __future__ import annotations

import importlib
import itertools
import os
import time

import numpy as np
import onnx

from . import runtime
from ..errors import InternalError
from ..graph.index import GraphIndex
from ..io.calib import Calibration
from .skipdrift import step_tensors
from .shared import shared_accumulators, split_results, step_targets
from .prefix import CachePlan
from .stats import StatsSettings
from .store import MemoryBudget
from .stream import Capturer, Stream, step_pass, submodel

_capture_ids = itertools.count()


def shard_ranges(samples: int, batch_size: int, workers: int) -> list:
    """[(start, stop)] sample ranges, one per worker that gets any: contiguous blocks of whole
    batches (only the last range may end in a short batch), as even as the batch count allows."""
    batches = -(-samples // batch_size)
    n = max(1, min(workers, batches))
    bounds = [w * batches // n for w in range(n + 1)]
    return [(bounds[w] * batch_size, min(bounds[w + 1] * batch_size, samples)) for w in range(n)]


def shard_arrays(arrays: dict, start: int, stop: int) -> dict:
    """One worker's calibration inputs, read into memory (a StoredArray slice reads from disk)."""
    return {k: np.ascontiguousarray(np.asarray(v[start:stop])) for k, v in arrays.items()}


class ShardWorker:
    """What one worker holds: its calibration shard and, per capture, the original model's
    index and its Streams. Every method returns (result, (seconds before the first batch:
    parsing the model, cutting the region, starting its session; seconds in all))."""

    def __init__(self, arrays: dict, batch_size: int, device: str, xp_name: str, threads: int | None = None,
                 index: int = 0, fail_once: str | None = None, first_batch: int = 0):
        self.calib = Calibration(arrays, "shard")
        self.batch_size = batch_size
        self.first_batch = first_batch     # calibration index of this shard's first batch (seeds --max-rows)
        self.device = device
        self.xp = importlib.import_module(xp_name)
        self.threads = threads
        self.index = index
        self.fail_once = fail_once     # test hook: worker 0 exits at its first batch if this file is absent
        self._captures: dict = {}      # capture id -> (original model, its GraphIndex, {key: Stream}, cache plan,
                                       #                their shared MemoryBudget)

    def layer_partials(self, model_bytes: bytes, consumers: list, observers: tuple, row_mask: str | None,
                       settings: StatsSettings):
        """Partial statistics of `consumers` (and observers) from one pass of the cut model."""
        start = time.perf_counter()
        tensors = sorted({c.input for c in consumers} | {o.consumer.input for o in observers})
        sess = runtime.session(onnx.load_from_string(model_bytes), self.device,
                               built="the part of the model cut for capture", threads=self.threads)
        accs = [acc for _, acc in shared_accumulators(consumers, self.xp, None, settings, self.first_batch)]
        mine = _spawn(observers)
        setup = time.perf_counter() - start
        for feeds in self._batches():
            out = dict(zip(tensors, runtime.run(sess, feeds, tensors)))
            for acc in accs + list(mine):
                acc.add(out[acc.consumer.input], row_mask=feeds.get(row_mask))
        return ([acc.partial() for acc in accs], mine), (setup, time.perf_counter() - start)

    def step_partials(self, cid: int, original_bytes: bytes, cache: CachePlan, current_bytes: bytes, asym: bool,
                      consumers: list, weights: dict, saves: tuple, observers: tuple, row_mask: str | None,
                      settings: StatsSettings, partners: dict | None = None):
        """Partial statistics of one seq/asym step of capture `cid` on this worker's samples
        (see Capturer.step_stats; `saves`: what each stream keeps for the next step,
        Capturer._next_saves). The original model comes with every step but is parsed once
        per capture; a worker restarted after a crash has no saved frontier, so its Streams
        cut the region from the graph inputs (the same values, up to kernel fusion)."""
        start = time.perf_counter()
        if cid not in self._captures:
            original = onnx.load_from_string(original_bytes)
            self._captures[cid] = (original, GraphIndex.build(original), {}, cache, MemoryBudget())
        original, types, streams, cache, budget = self._captures[cid]
        tensors = step_tensors(consumers, partners if asym else None)
        cur = self._stream(streams, "current", types, cache, budget)
        cur.prepare(onnx.load_from_string(current_bytes), tensors, saves[0])
        ref = None
        if asym:
            ref = self._stream(streams, "original", types, cache, budget)
            ref.prepare(original, tensors, saves[1])
        targets = step_targets(consumers, weights) if asym else None
        shared = shared_accumulators(consumers, self.xp, targets, settings, self.first_batch)
        mine = _spawn(observers)
        setup = time.perf_counter() - start
        step_pass(cur, ref, shared, targets, self._batches(), row_mask, partners, mine)
        return ([acc.partial() for _, acc in shared], mine), (setup, time.perf_counter() - start)

    def ready(self):
        return None, (0.0, 0.0)

    def close_capture(self, cid: int):
        entry = self._captures.pop(cid, None)
        if entry is not None:
            for s in entry[2].values():
                s.close()
        return None, (0.0, 0.0)

    def _stream(self, streams: dict, key: str, types: GraphIndex, cache: CachePlan, budget: MemoryBudget) -> Stream:
        if key not in streams:
            streams[key] = Stream(types, self.calib, self.device, cache, self.threads, budget)
        return streams[key]

    def _batches(self):
        for feeds in runtime.batches(self.calib.arrays, self.batch_size):
            if self.fail_once and self.index == 0 and not os.path.exists(self.fail_once):
                open(self.fail_once, "w").close()
                os._exit(1)          # a crash, not an exception: what a lost worker looks like
            yield feeds


def _spawn(observers: tuple) -> tuple:
    """Fresh copies of the driver's observers for this worker's batches."""
    missing = [type(o).__name__ for o in observers if not hasattr(o, "spawn") or not hasattr(o, "absorb")]
    if missing:
        raise InternalError(f"capture observer {missing[0]} has no spawn()/absorb(), so it cannot run on workers")
    return tuple(o.spawn() for o in observers)


class LocalPool:
    """ShardWorkers in this process, one after another: the pool protocol without Ray."""

    def __init__(self, calib: Calibration, batch_size: int, workers: int, device: str, xp_name: str):
        self.shards = shard_ranges(calib.samples, batch_size, workers)
        self._workers = [ShardWorker(shard_arrays(calib.arrays, a, b), batch_size, device, xp_name, index=w,
                                     first_batch=a // batch_size)
                         for w, (a, b) in enumerate(self.shards)]
        self.timings: list = []

    @property
    def workers(self) -> int:
        return len(self._workers)

    def put(self, value):
        return value

    def map(self, method: str, *args, done=None) -> list:
        """Results of `method(*args)` on every worker, in worker order; `done(w)` after each."""
        out = []
        for w, worker in enumerate(self._workers):
            out.append(getattr(worker, method)(*args))
            if done is not None:
                done(w)
        return out

    def tell(self, method: str, *args) -> None:
        self.map(method, *args)

    def close(self) -> None:
        for w in self._workers:
            for cid in list(w._captures):
                w.close_capture(cid)


class ParallelCapturer(Capturer):
    """A Capturer whose batches run on a pool's workers; planning (frontiers, the probe) stays here."""

    def __init__(self, pool, calib: Calibration, batch_size: int, device: str, xp, progress=None,
                 row_mask: str | None = None, settings: StatsSettings | None = None):
        super().__init__(calib, batch_size, device, xp, progress, row_mask, settings)
        self.pool = pool
        self._cid = None
        self._original = None

    def layer_stats(self, model: onnx.ModelProto, consumers: list, label: str, observers: tuple = ()) -> list:
        start = time.perf_counter()
        tensors = sorted({c.input for c in consumers} | {o.consumer.input for o in observers})
        cut = self.pool.put(submodel(model, tensors).SerializeToString())
        results = self._map(label, "layer_partials", cut, list(consumers), tuple(observers), self.row_mask,
                            self.settings)
        return self._reduce(label, start, results, consumers, None, observers)

    def plan(self, original: onnx.ModelProto, boundaries: list, index=None) -> None:
        super().plan(original, boundaries, index)
        self.close()
        self._cid = next(_capture_ids)
        self._original = self.pool.put(original.SerializeToString())     # once per run

    def step_stats(self, current: onnx.ModelProto, consumers: list, label: str,
                   original: onnx.ModelProto | None = None, weights: dict | None = None,
                   observers: tuple = (), partners: dict | None = None) -> list:
        start = time.perf_counter()
        saves = self._next_saves()
        model = self.pool.put(current.SerializeToString())        # once per step, for every worker
        results = self._map(label, "step_partials", self._cid, self._original, self.cache, model,
                            original is not None, list(consumers), dict(weights or {}), saves,
                            tuple(observers), self.row_mask, self.settings, dict(partners or {}))
        targets = step_targets(consumers, weights) if original is not None else None
        return self._reduce(label, start, results, consumers, targets, observers)

    def close(self) -> None:
        if self._cid is not None:
            cid, self._cid, self._original = self._cid, None, None
            self.pool.tell("close_capture", cid)   # no wait: after Ctrl-C or a lost worker the pool is closed next

    def _map(self, label: str, method: str, *args) -> list:
        total, shards = self.calib.samples, self.pool.shards
        self.progress(label, 0, total)
        finished = []

        def done(w):
            finished.append(w)
            self.progress(label, sum(shards[i][1] - shards[i][0] for i in finished), total)

        return self.pool.map(method, *args, done=done)

    def _reduce(self, label: str, start: float, results: list, consumers: list, targets: dict | None,
                observers: tuple) -> list:
        """Add the workers' partial sums in worker order (the fixed order the result depends on);
        the driver's accumulators only absorb (`targets`, asym: how many columns each consumer of
        a shared accumulator has)."""
        shared = shared_accumulators(consumers, self.xp, targets, self.settings)
        accs = [acc for _, acc in shared]
        for (partials, theirs), _ in results:
            for acc, part in zip(accs, partials):
                acc.absorb(part)
            for obs, their in zip(observers, theirs):
                obs.absorb(their)
        self._timed(label, start, results)
        return split_results(shared, consumers, targets)

    def _timed(self, label: str, start: float, results: list) -> None:
        """Wall time of one parallel call next to each worker's time (and the part of it before
        its first batch): wall minus the busiest worker is what distribution costs (shipping
        the model and the statistics, scheduling, the reduction)."""
        self.pool.timings.append({"label": label, "wall": time.perf_counter() - start,
                                  "setup": [s[0] for _, s in results], "busy": [s[1] for _, s in results]})
