"""Incremental forward passes for seq/asym capture.

Groups are pruned in topological order of their producers. Pruning group i changes only
nodes at or after its producer, so every tensor produced *before* that producer and read at
or after it (the group's *frontier*) keeps its value for all later steps. A `Stream` stores
each step's frontier for all calibration samples (store.py: in memory up to a budget, on disk
beyond) and runs the next step from there, so a whole seq/asym run costs about two full
forward passes per model instead of one prefix per group. Frontier tensors a few cheap nodes
compute from the others are not stored but computed again (`lean_frontier`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..graph.index import GraphIndex
from ..io.largemodel import with_graph


def frontier(idx: GraphIndex, boundary: str) -> set:
    """Tensors produced before node `boundary` (or graph inputs) and read at or after it."""
    cut = idx.order[boundary]
    out = set()
    for tensor, uses in idx.consumers.items():
        if idx.is_constant(tensor):
            continue
        producer = idx.producer.get(tensor)
        if producer is not None and idx.order[producer.name] >= cut:
            continue
        if any(idx.order[n.name] >= cut for n, _ in uses):
            out.add(tensor)
    return out


# Ops cheap enough to run again at the next step rather than store their outputs for every
# sample: elementwise maths, normalisations and shape bookkeeping (no weights multiplied).
RECOMPUTE_OPS = frozenset({
    "Abs", "Add", "BatchNormalization", "Cast", "Clip", "Concat", "Div", "Elu", "Erf", "Exp", "Expand",
    "Flatten", "Gather", "Gelu", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization",
    "LayerNormalization", "LeakyRelu", "Log", "Max", "Min", "Mul", "Neg", "Pow", "PRelu", "Reciprocal",
    "ReduceMean", "ReduceSum", "Relu", "Reshape", "RMSNormalization", "Selu", "Shape", "Sigmoid", "Sign",
    "Slice", "Softplus", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze", "Where",
})
RECOMPUTE_NODES = 32     # at most this many nodes run again for one tensor left out


def lean_frontier(idx: GraphIndex, tensors: set) -> set:
    """`tensors` less those that a few cheap nodes (RECOMPUTE_OPS) compute from the others
    and the graph inputs: a region that reads the rest computes them again. A transformer
    block's frontier is its residual stream and that stream's LayerNorm; storing only the
    residual halves what a step keeps for every calibration sample (ViT-S: 101 MB a stream)."""
    keep = set(tensors)
    for t in sorted(tensors, key=lambda t: -_position(idx, t)):      # latest first
        if _recomputable(idx, t, keep - {t}):
            keep.discard(t)
    return keep


def _position(idx: GraphIndex, tensor: str) -> int:
    node = idx.producer.get(tensor)
    return -1 if node is None else idx.order[node.name]


def _recomputable(idx: GraphIndex, tensor: str, available: set) -> bool:
    """Whether `tensor` follows from `available`, graph inputs and constants through at most
    RECOMPUTE_NODES nodes, all of RECOMPUTE_OPS in the default domain."""
    seen, stack = set(), [tensor]
    inputs = set(idx.graph_inputs)
    while stack:
        t = stack.pop()
        if t in available or t in inputs or idx.is_constant(t):
            continue
        node = idx.producer.get(t)
        if node is None or node.op_type not in RECOMPUTE_OPS or node.domain not in ("", "ai.onnx"):
            return False
        if node.name in seen:
            continue
        seen.add(node.name)
        if len(seen) > RECOMPUTE_NODES:
            return False
        stack.extend(i for i in node.input if i)
    return True


# A frontier tensor that does not hold the samples on axis 0 and does not grow with the batch
# (a shape vector, a size read off the input) is kept per batch, in memory, up to this size.
SMALL_TENSOR = 65536


@dataclass(frozen=True)
class CachePlan:
    """Whether Streams keep frontiers between steps, and which frontier tensors they keep per
    batch (the same batches run at every step) instead of by sample range."""

    enabled: bool
    per_batch: frozenset = frozenset()


def cache_plan(one: dict, two: dict) -> CachePlan:
    """The plan for frontier tensors computed on 1 and 2 samples (see samples_on_axis0): every
    tensor must hold the samples on axis 0, or be small and the same size for both."""
    per_batch = set()
    for name, a in one.items():
        b = two[name]
        if samples_on_axis0({name: a}, {name: b}):
            continue
        if a.size != b.size or a.size > SMALL_TENSOR:
            return CachePlan(False)
        per_batch.add(name)
    return CachePlan(True, frozenset(per_batch))


def samples_on_axis0(one: dict, two: dict) -> bool:
    """Whether tensors computed for 1 and 2 samples hold the samples on axis 0.

    `one`/`two` map tensor names to values for the first sample and the first two samples:
    axis 0 must double and its first half must equal the one-sample result.
    """
    for name, a in one.items():
        b = two[name]
        if a.ndim == 0 or b.shape[0] != 2 * a.shape[0] or b.shape[1:] != a.shape[1:]:
            return False
        first = b[:a.shape[0]].astype(np.float64)
        scale = max(1.0, float(np.max(np.abs(first))) if first.size else 1.0)
        if not np.allclose(first, a.astype(np.float64), rtol=1e-4, atol=1e-5 * scale):
            return False
    return True




def region_model(model: onnx.ModelProto, idx: GraphIndex, outputs: list, available: set) -> tuple:
    """A model computing `outputs` from the tensors in `available` (plus graph inputs).

    Returns (model, input names it reads).
    """
    needed, inputs, stack = set(), set(), list(outputs)
    graph_inputs = set(idx.graph_inputs)
    while stack:
        t = stack.pop()
        if t in available or (t in graph_inputs):
            inputs.add(t)
            continue
        node = idx.producer.get(t)
        if node is None or node.name in needed:
            continue
        needed.add(node.name)
        stack.extend(i for i in node.input if i and not idx.is_constant(i))
        stack.extend(r for r in idx.outer_reads.get(node.name, ()) if not idx.is_constant(r))
    g = model.graph
    nodes = [n for n in g.node if n.name in needed]
    used = {i for n in nodes for i in n.input} | set(outputs)
    for n in nodes:
        used |= idx.outer_reads.get(n.name, set())
    ins = [_value_info(idx, t) for t in sorted(inputs)]
    outs = [typed_info(t, idx.elem_types.get(t)) for t in outputs]
    graph = helper.make_graph(nodes, g.name or "region", ins, outs)
    for t in g.initializer:     # add().CopyFrom, not extend: works for tensors over 2 GB too
        if t.name in used:
            graph.initializer.add().CopyFrom(t)
    return with_graph(model, graph), sorted(inputs)


def _value_info(idx: GraphIndex, name: str):
    """Rank only for intermediate inputs: pruning may have changed their channel counts."""
    if name in idx.graph_inputs:
        return next(i for i in idx.model.graph.input if i.name == name)
    dims = idx.model_dims.get(name)
    shape = None if dims is None else [None] * len(dims)
    return typed_info(name, idx.elem_types.get(name), shape)


def typed_info(name: str, elem: int | None, shape=None):
    """A value info of `elem` type; a bare name when no inference could type the tensor (a
    custom op's output): onnxruntime types it itself."""
    if not elem:
        info = onnx.ValueInfoProto()
        info.name = name
        return info
    return helper.make_tensor_value_info(name, elem, shape)
