"""The `capture` stage: run calibration batches through onnxruntime and stream each
consumer's input into Gram statistics (never keeping activations beyond one batch)."""
from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper

from . import runtime
from .calib import Calibration
from .graph import GraphIndex
from .stats import ConsumerStats, GramAccumulator

Progress = Callable[[str, int, int], None]


def submodel(model: onnx.ModelProto, outputs: list, index: GraphIndex | None = None) -> onnx.ModelProto:
    """A copy of `model` that computes only `outputs` (intermediate tensors allowed)."""
    idx = index or GraphIndex.build(model)
    needed, stack = set(), list(outputs)
    while stack:
        t = stack.pop()
        node = idx.producer.get(t)
        if node is None or node.name in needed:
            continue
        needed.add(node.name)
        stack.extend(i for i in node.input if i)
        stack.extend(idx.outer_reads.get(node.name, ()))
    g = model.graph
    nodes = [n for n in g.node if n.name in needed]
    used = {i for n in nodes for i in n.input} | set(outputs)
    for n in nodes:
        used |= idx.outer_reads.get(n.name, set())
    outs = []
    for name in outputs:
        elem = idx.elem_types.get(name)
        if elem is None:
            raise ValueError(f"cannot tell the element type of tensor '{name}'")
        outs.append(helper.make_tensor_value_info(name, elem, None))
    graph = helper.make_graph(
        nodes, g.name or "capture",
        [i for i in g.input if i.name not in idx.initializers],
        outs,
        initializer=[t for t in g.initializer if t.name in used],
    )
    sub = onnx.ModelProto()
    sub.CopyFrom(model)
    sub.graph.CopyFrom(graph)
    return sub


class Capturer:
    """Streams calibration batches through models and accumulates consumer statistics."""

    def __init__(self, calib: Calibration, batch_size: int, device: str, xp, progress: Progress | None = None):
        self.calib = calib
        self.batch_size = batch_size
        self.device = device
        self.xp = xp
        self.progress = progress or (lambda stage, done, total: None)

    def stats(self, model: onnx.ModelProto, consumers: list, label: str,
              original: onnx.ModelProto | None = None, weights: dict | None = None) -> list:
        """ConsumerStats for `consumers` on `model`; with `original`, asym statistics against it."""
        tensors = sorted({c.input for c in consumers})
        current = runtime.session(submodel(model, tensors), self.device)
        reference = runtime.session(submodel(original, tensors), self.device) if original is not None else None
        accs = [GramAccumulator(c, self.xp, asym=reference is not None,
                                weight=(weights or {}).get(c.node)) for c in consumers]
        total = self.calib.samples
        done = 0
        self.progress(label, 0, total)
        for feeds in runtime.batches(self.calib.arrays, self.batch_size):
            b_out = dict(zip(tensors, runtime.run(current, feeds, tensors)))
            a_out = dict(zip(tensors, runtime.run(reference, feeds, tensors))) if reference is not None else {}
            for acc in accs:
                acc.add(b_out[acc.consumer.input], a_out.get(acc.consumer.input))
            done += next(iter(feeds.values())).shape[0]
            self.progress(label, done, total)
        return [acc.result() for acc in accs]


def group_consumers(groups) -> list:
    return [c for g in groups for c in g.consumers]


def split_by_group(groups, stats: list) -> dict:
    """Regroup a flat list of ConsumerStats (in group_consumers order) by group name."""
    out, it = {}, iter(stats)
    for g in groups:
        out[g.name] = [next(it) for _ in g.consumers]
    return out


__all__ = ["Capturer", "ConsumerStats", "submodel", "group_consumers", "split_by_group"]
