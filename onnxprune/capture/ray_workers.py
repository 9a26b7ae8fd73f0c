"""Ray actors for data-parallel capture (`--workers N`, `--ray-address ADDR`).

Each actor is a `parallel.ShardWorker`: one onnxruntime session at a time on one core (or one
GPU, with the Gram on CuPy), holding its share of the calibration batches, which travel once
through Ray's object store. Everything else (sharding, the reduction, the driver side of a
step) is in parallel.py, which does not need Ray. `ray` is imported only when a run asks for
workers, so it stays an optional extra (`pip install onnxprune[ray]`).

A worker that dies (a crash, a lost node) is restarted and its call retried, RETRIES times;
after that the run stops with a one-line error. Closing the pool kills every actor (and stops
the local Ray it started), so Ctrl-C leaves nothing running and nothing written.
"""
from __future__ import annotations

import logging
import os

from ..errors import InternalError, OnnxPruneError, first_line
from ..io.calib import Calibration
from .parallel import ShardWorker, shard_arrays, shard_ranges

RETRIES = 2                 # restarts of a dead worker (Ray max_restarts / max_task_retries)
FAIL_ONCE: str | None = None    # test hook: ShardWorker.fail_once of worker 0 (a marker file path)


def require_ray():
    """The ray module, or the one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise OnnxPruneError("--workers/--ray-address need Ray, which is not installed: "
                             "pip install 'onnxprune[ray]'") from None
    return ray


class _Actor:
    """A ShardWorker inside a Ray actor, built at its first call from the shard every call
    carries (boxed in a list, so Ray hands over the reference and the data is read once). The
    actor's constructor takes no object-store arguments, so a restarted actor needs none."""

    def __init__(self, *config):
        self._config = config
        self._worker = None

    def call(self, box: list, method: str, *args):
        if self._worker is None:
            import ray

            self._worker = ShardWorker(ray.get(box[0]), *self._config)
        return getattr(self._worker, method)(*args)

    def pid(self) -> int:
        """The worker's process id (tests check that closing the pool ends it)."""
        return os.getpid()


class RayPool:
    """ShardWorker actors on a local Ray (started here, stopped by close) or on the cluster at
    `address`; `workers` None with an address: one per CPU (or GPU) of the cluster."""

    def __init__(self, calib: Calibration, batch_size: int, workers: int | None, address: str | None,
                 device: str, xp_name: str):
        ray = self._ray = require_ray()
        self.timings: list = []
        self.actors: list = []
        self._started = False
        if not ray.is_initialized():
            self._init(address, workers)
        try:
            self._start_actors(calib, batch_size, workers, device, xp_name)
        except BaseException:
            self.close()
            raise

    def _init(self, address: str | None, workers: int | None) -> None:
        ray = self._ray
        quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if address:
                ray.init(address=address, **quiet)
            else:       # as many CPUs as workers asked for: Ray would otherwise leave the extra ones unscheduled
                ray.init(num_cpus=max(workers or 1, os.cpu_count() or 1), **quiet)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise OnnxPruneError(f"cannot start {where}: {first_line(exc)}") from None
        self._started = True

    def _start_actors(self, calib: Calibration, batch_size: int, workers: int | None, device: str,
                      xp_name: str) -> None:
        ray = self._ray
        kind = "GPU" if device == "cuda" else "CPU"
        have = int(ray.cluster_resources().get(kind, 0))
        workers = workers or have
        if workers > have:
            raise OnnxPruneError(f"--workers {workers}: the Ray cluster has {have} {kind}(s) for one worker each; "
                                 f"ask for at most {have}")
        self.shards = shard_ranges(calib.samples, batch_size, workers)
        actor = ray.remote(num_cpus=1, num_gpus=1 if kind == "GPU" else 0, max_restarts=RETRIES,
                           max_task_retries=RETRIES)(_Actor)
        # the shards stay referenced here: a restarted actor reads its shard again
        self._shards = [ray.put(shard_arrays(calib.arrays, a, b)) for a, b in self.shards]
        self.actors = [actor.remote(batch_size, device, xp_name, 1, w, FAIL_ONCE, start // batch_size)
                       for w, (start, _) in enumerate(self.shards)]
        self.map("ready")       # every worker started and imported onnxprune: a broken worker fails here

    @property
    def workers(self) -> int:
        return len(self.actors)

    def put(self, value):
        """One copy in the object store that every worker reads (a model, once per step)."""
        return self._ray.put(value)

    def map(self, method: str, *args, done=None) -> list:
        """Results of ShardWorker.`method`(*args) on every actor, in worker order; `done(w)` as
        each finishes. Every argument is put in the object store once, not once per actor."""
        ray = self._ray
        args = [a if isinstance(a, ray.ObjectRef) else ray.put(a) for a in args]
        refs = [a.call.remote([shard], method, *args) for a, shard in zip(self.actors, self._shards)]
        worker = {r: w for w, r in enumerate(refs)}
        try:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                if done is not None:
                    done(worker[ready[0]])
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (OnnxPruneError, InternalError)):
                raise cause from None
            raise
        except ray.exceptions.RayError as exc:
            raise OnnxPruneError(f"a Ray capture worker was lost and {RETRIES} restarts did not finish its "
                                 f"share ({first_line(exc)}); nothing was written") from None

    def tell(self, method: str, *args) -> None:
        """Queue ShardWorker.`method`(*args) on every actor without waiting for it."""
        for a, shard in zip(self.actors, self._shards):
            a.call.remote([shard], method, *args)

    def close(self) -> None:
        """Kill every actor (and stop the local Ray this pool started)."""
        ray = self._ray
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self.actors, self._shards = [], []
        if self._started:
            self._started = False
            ray.shutdown()
