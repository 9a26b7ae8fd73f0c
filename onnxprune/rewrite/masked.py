"""The original model with every removed channel's consumer rows set to zero.

Without reweighting, pruning must not change what the kept channels compute: the pruned model
has to equal the *original* in which each consumer ignores the removed channels (its weight
rows reading them are zero). That holds whatever the surgery did on the way (producer
filters, biases, BatchNormalization, depthwise filters, Split sizes, Reshape widths), so
comparing the two outputs checks every row and column the rewrite touched. This module builds
that reference model; it only reads the analysis and the kept channels, and shares no code
with the rewrite it checks except the consumer-matrix conversion (weights.py). No
onnxruntime here: the caller runs both models.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.index import GraphIndex
from ..graph.layout import Alive
from ..solve.problem import ChannelView
from .weights import consumer_matrix, consumer_update


def removed_rows(groups, kept: dict) -> dict:
    """{consumer node: (Consumer, rows of its original weight matrix that read removed channels)}.

    Rows come from the consumer's channel layout (ChannelView), so Flatten/Reshape blocks, NHWC
    interleaving, Concat offsets and consumers that see only part of a group are all covered. A
    group missing from `kept` keeps every channel. A consumer read by several groups collects
    the rows of each.
    """
    alive = Alive()                      # nothing pruned yet: original coordinates
    out = {}
    for g in groups:
        if g.name not in kept:
            continue
        keep = np.asarray(kept[g.name], dtype=np.int64).reshape(-1)
        if keep.size and (keep.min() < 0 or keep.max() >= g.channels):
            raise ValueError(f"kept channels of group '{g.name}' are outside 0..{g.channels - 1}")
        for c in g.consumers:
            view = ChannelView.of(c, set(g.sources), g.channels, alive)
            rows = view.candidates[~np.isin(view.members, keep)].ravel()
            entry = out.setdefault(c.node, (c, []))
            entry[1].append(rows)
    return {node: (c, np.unique(np.concatenate(rows))) for node, (c, rows) in out.items()}


def masked_original(model: onnx.ModelProto, groups, kept: dict) -> onnx.ModelProto:
    """A copy of `model` whose consumers' weight rows of removed channels are zero.

    `model` is the model that was analysed (after io.modelio.normalize: named nodes, weights as
    initializers), `groups` its Analysis.groups and `kept` maps a group name to its kept
    channel indices (Report.groups[i]["kept"]). Without reweighting the pruned model must
    compute what this model computes.
    """
    idx = GraphIndex.build(model, infer=False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    nodes = {n.name: n for n in out.graph.node}
    for node, (c, rows) in removed_rows(groups, kept).items():
        if not rows.size:
            continue
        matrix = consumer_matrix(idx, c)
        matrix[rows] = 0.0
        update = consumer_update(idx, c, matrix)
        inits[c.weight].CopyFrom(numpy_helper.from_array(update.weight, c.weight))
        if update.bias is not None:           # Gemm beta folded in (with beta reset below)
            inits[c.bias].CopyFrom(numpy_helper.from_array(update.bias, c.bias))
        for name, value in update.attrs.items():
            _set_attr(nodes[node], name, value)
    return out


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in node.attribute:
        if a.name == name:
            a.CopyFrom(helper.make_attribute(name, value))
            return
    node.attribute.append(helper.make_attribute(name, value))
