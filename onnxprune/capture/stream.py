"""The `capture` stage: run calibration batches through onnxruntime and stream each
consumer's input into Gram statistics (never keeping activations beyond one batch).

`layer` mode needs one pass of the original model. `seq`/`asym` prune group after group, so
each group is captured from the current (partly pruned) model, and for asym in lockstep with
the original; `Stream`s resume each step from the previous step's frontier (see prefix.py).
"""
from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper

from . import runtime
from ..io.calib import Calibration
from ..graph.index import GraphIndex
from .prefix import CachePlan, cache_plan, frontier, lean_frontier, region_model
from .skipdrift import add_step_batch, step_tensors
from .shared import shared_accumulators, split_results, step_targets
from .stats import StatsSettings
from .store import MemoryBudget, TensorStore

Progress = Callable[[str, int, int], None]


def submodel(model: onnx.ModelProto, outputs: list, index: GraphIndex | None = None) -> onnx.ModelProto:
    """A copy of `model` that computes only `outputs` from the graph inputs."""
    idx = index or GraphIndex.build(model)
    sub, _ = region_model(model, idx, list(outputs), set())
    del sub.graph.input[:]
    sub.graph.input.extend(i for i in model.graph.input if i.name not in idx.initializers)
    return sub


class Stream:
    """One model run step by step; each step starts from the frontier the previous one saved."""

    def __init__(self, types: GraphIndex, calib: Calibration, device: str, cache: CachePlan,
                 threads: int | None = None, budget: MemoryBudget | None = None):
        self.types = types            # original model's index: element types and symbolic dims
        self.calib = calib
        self.device = device
        self.cache = cache
        self.threads = threads        # onnxruntime intra-op threads (a Ray worker's share of the cores)
        self.store = TensorStore(budget)
        self.available: set = set()
        self._session = None

    def prepare(self, model: onnx.ModelProto, outputs: list, save: set) -> None:
        structure = GraphIndex.build(model, infer=False)
        structure.elem_types, structure.model_dims = self._stored_types(), self.types.model_dims
        save = set(save) if self.cache.enabled else set()
        self._new = sorted(save - self.available)
        self._save = save
        # outputs already at hand (a saved frontier tensor, a graph input: a residual skip
        # can be either) are read, not computed: a region cannot output its own input
        at_hand = self.available | set(structure.graph_inputs)
        self._outputs = [t for t in outputs if t not in at_hand]
        self._read = [t for t in outputs if t in at_hand]
        fetch = self._outputs + [t for t in self._new if t not in self._outputs]
        self._fetch, self._inputs, self._session = fetch, [], None
        if fetch:
            sub, self._inputs = region_model(model, structure, fetch, self.available)
            self._session = runtime.session(sub, self.device, threads=self.threads, arena=True,
                                            built="the region of the partly pruned model cut for capture")

    def _stored_types(self) -> dict:
        """Element types, with those of saved tensors shape inference could not type (the
        outputs of com.microsoft ops) taken from the values stored."""
        types = dict(self.types.elem_types)
        for name, dtype in self.store.dtypes().items():
            types.setdefault(name, helper.np_dtype_to_tensor_dtype(dtype))
        return types

    def run_batch(self, start: int, feeds: dict) -> dict:
        count = next(iter(feeds.values())).shape[0]
        def at_hand(name):
            if name in feeds:
                return feeds[name]
            if name in self.cache.per_batch:
                return self.store.get(name, start)
            return self.store.read(name, start, count)

        full = {name: at_hand(name) for name in self._inputs}
        values = dict(zip(self._fetch, runtime.run(self._session, full, self._fetch))) if self._fetch else {}
        values.update((name, at_hand(name)) for name in self._read)
        for name in self._new:
            if name in self.cache.per_batch:
                self.store.put(name, start, values[name])
            else:
                self.store.append(name, start, values[name])
        for name in self._inputs + self._read:
            if name not in self._save:
                self.store.release(name, start)
        return values

    def finish(self) -> None:
        self.store.keep_only(self._save)
        self.available = set(self._save)
        self._session = None        # and its arena with it

    def close(self) -> None:
        self.store.close()


def step_pass(cur: Stream, ref: Stream | None, shared: list, targets: dict | None, batches, row_mask: str | None,
              partners: dict | None, observers) -> None:
    """Run the batches of one seq/asym step through the prepared streams (`ref`: the original
    model's, asym only) into `shared` (shared.shared_accumulators) and the observers; the one
    loop of a step, in this process (Capturer) and on a capture worker (parallel.ShardWorker)."""
    start = 0
    for feeds in batches:
        b_out = cur.run_batch(start, feeds)
        a_out = ref.run_batch(start, feeds) if ref is not None else {}
        add_step_batch(shared, targets, b_out, a_out, feeds.get(row_mask), partners)
        for obs in observers:
            obs.add(b_out[obs.consumer.input], row_mask=feeds.get(row_mask))
        start += next(iter(feeds.values())).shape[0]
    cur.finish()
    if ref is not None:
        ref.finish()
    runtime.release_memory()            # the step's sessions and their arenas


class Capturer:
    """Streams calibration batches through models and accumulates consumer statistics."""

    def __init__(self, calib: Calibration, batch_size: int, device: str, xp, progress: Progress | None = None,
                 row_mask: str | None = None, settings: StatsSettings | None = None):
        self.calib = calib
        self.settings = settings or StatsSettings()
        self.row_mask = row_mask      # model input whose 0 entries mark padding tokens
        self.batch_size = batch_size
        self.device = device
        self.xp = xp
        self.progress = progress or (lambda stage, done, total: None)
        self._streams: dict = {}
        self._budget = MemoryBudget()      # frontier values in memory, both streams together

    def layer_stats(self, model: onnx.ModelProto, consumers: list, label: str, observers: tuple = ()) -> list:
        """Statistics of every consumer from one pass of `model`. `observers` (objects with
        `.consumer` and `.add(batch)`, e.g. sampling's sensitivities) see the same batches."""
        tensors = sorted({c.input for c in consumers} | {o.consumer.input for o in observers})
        sess = runtime.session(submodel(model, tensors), self.device, built="the part of the model cut for capture")
        shared = shared_accumulators(consumers, self.xp, None, self.settings)
        accs = [acc for _, acc in shared]
        for feeds in self._batches(label):
            out = dict(zip(tensors, runtime.run(sess, feeds, tensors)))
            for acc in accs + list(observers):
                acc.add(out[acc.consumer.input], row_mask=feeds.get(self.row_mask))
        return split_results(shared, consumers, None)

    def plan(self, original: onnx.ModelProto, boundaries: list, index: GraphIndex | None = None) -> None:
        """Prepare incremental streams for groups whose producers are `boundaries`, in order
        (`index`: the original's, with the shapes the fallbacks filled in)."""
        self.types = index or GraphIndex.build(original)
        self.frontiers = [lean_frontier(self.types, frontier(self.types, b)) for b in boundaries]
        self.cache = self._probe_frontiers(original)
        runtime.release_memory()        # the probe's session of the whole model
        self.step = 0

    def _probe_frontiers(self, original: onnx.ModelProto) -> CachePlan:
        """Caching needs every frontier tensor laid out sample by sample, or small and kept per
        batch (prefix.cache_plan); checked on 1 and 2 samples (models with a fixed batch size
        cannot be checked, so they are not cached)."""
        tensors = sorted(set().union(*self.frontiers)) if self.frontiers else []
        fixed_batch = any((self.types.shapes.get(i) or (None,))[0] is not None for i in self.types.graph_inputs)
        if not tensors or self.calib.samples < 2 or fixed_batch:
            return CachePlan(False)
        sess = runtime.session(submodel(original, tensors, self.types), self.device,
                               built="the part of the model cut to probe capture")
        one = dict(zip(tensors, runtime.run(sess, {k: v[:1] for k, v in self.calib.arrays.items()}, tensors)))
        two = dict(zip(tensors, runtime.run(sess, {k: v[:2] for k, v in self.calib.arrays.items()}, tensors)))
        return cache_plan(one, two)

    def step_stats(self, current: onnx.ModelProto, consumers: list, label: str,
                   original: onnx.ModelProto | None = None, weights: dict | None = None,
                   observers: tuple = (), partners: dict | None = None) -> list:
        """Statistics of the next planned group on `current` (asym: against `original`, with
        the skip drift of `partners`: consumer node -> skip tensor, see skipdrift.py);
        `observers` see the current model's consumer inputs, as in layer_stats."""
        save, save_original = self._next_saves()
        tensors = step_tensors(consumers, partners if original is not None else None)
        cur = self._stream("current")
        cur.prepare(current, tensors, save)
        ref = None
        if original is not None:
            ref = self._stream("original")
            ref.prepare(original, tensors, save_original)
        targets = step_targets(consumers, weights) if ref is not None else None
        shared = shared_accumulators(consumers, self.xp, targets, self.settings)
        step_pass(cur, ref, shared, targets, self._batches(label), self.row_mask, partners, observers)
        return split_results(shared, consumers, targets)

    def _next_saves(self) -> tuple:
        """(the current model's, the original's) values to save in this step. The current model
        changes at this step's boundary, so the next step runs it again from this boundary's
        frontier. The original never changes: its stream saves the next step's frontier
        instead (computable from this one: boundaries come in topological order), and runs no
        node twice (ViT-S: each block's attention and fc1 ran twice)."""
        i = self.step
        self.step += 1
        return self.frontiers[i], (self.frontiers[i + 1] if i + 1 < len(self.frontiers) else set())

    def close(self) -> None:
        for s in self._streams.values():
            s.close()
        self._streams.clear()

    def _stream(self, key: str) -> Stream:
        if key not in self._streams:
            self._streams[key] = Stream(self.types, self.calib, self.device, self.cache, budget=self._budget)
        return self._streams[key]

    def _batches(self, label: str):
        total, done = self.calib.samples, 0
        self.progress(label, 0, total)
        for feeds in runtime.batches(self.calib.arrays, self.batch_size):
            yield feeds
            done += next(iter(feeds.values())).shape[0]
            self.progress(label, done, total)
