"""Per-channel operands that the graph reshapes from an initializer at run time.

Paddle2ONNX writes a Conv bias (and other per-channel constants) as
`Add(conv_out, Reshape(b [C], shape [1, C, 1, 1]))`; torch exports sometimes use
`Unsqueeze(b, axes)`. The operand of the element-wise op is then no initializer, but it is one
initializer laid out again: channel c of the operand is element c of `b`. `reshaped_param_sites`
proves that and returns what the rewrite must change: `b` sliced along its channel axis
(a `ParamSite`) and, for a Reshape, the shape entry that spells C (an `AttrSite` of kind
'reshape', copied first when other nodes read the same shape constant). Anything else (a
computation, a shared operand, a layout that moves elements across the channel) is refused.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .groups import AttrSite, ParamSite
from .index import GraphIndex
from .layout import Layout
from .roles import Refusal

RELAYOUT = {"Reshape", "Unsqueeze"}


def reshaped_param_sites(idx: GraphIndex, node, name: str, layout: Layout, out_rank: int):
    """Sites for operand `name` of element-wise `node` when it is a Reshape/Unsqueeze of one
    initializer; [] when it treats every channel alike; None when it is no such tensor."""
    producer = idx.producer.get(name)
    if producer is None or producer.op_type not in RELAYOUT or producer.domain not in ("", "ai.onnx"):
        return None
    source = producer.input[0]
    if not idx.is_constant(source) or any(i and not idx.is_constant(i) for i in producer.input[1:]):
        return None
    dims = idx.dims(name)
    if dims is None or any(d is None for d in dims):
        raise Refusal(f"{node.op_type} '{node.name}' reads '{name}' ({producer.op_type} of a constant) "
                      "of unknown shape")
    axis = layout.axis - (out_rank - len(dims))
    width = layout.positions * layout.block
    if axis < 0 or dims[axis] == 1:
        return []                                   # broadcast along the channels
    if dims[axis] != width or int(np.prod(dims, dtype=np.int64)) != width:
        raise Refusal(f"{producer.op_type} '{producer.name}' lays out a constant of shape {list(dims)} "
                      f"that is not one value per channel of {node.op_type} '{node.name}'")
    readers = {n.name for n, _ in idx.uses(name)} | {n.name for n, _ in idx.uses(source)}
    if readers != {node.name, producer.name} or len(idx.uses(name)) != 1 or name in idx.graph_outputs:
        raise Refusal(f"per-channel constant '{source}' of {node.op_type} '{node.name}' is shared "
                      f"with other nodes ({', '.join(sorted(readers - {node.name, producer.name}))})")
    src_dims = tuple(idx.array(source).shape)
    big = [i for i, d in enumerate(src_dims) if d != 1]
    if len(big) != 1:                               # a [C] vector, or [1, C, 1] and the like
        raise Refusal(f"constant '{source}' of {producer.op_type} '{producer.name}' is not a vector")
    sites = [ParamSite(source, big[0], replace(layout, axis=big[0], rank=len(src_dims)))]
    if producer.op_type == "Reshape":
        sites.extend(_shape_entry(idx, producer, axis, replace(layout, axis=axis, rank=len(dims)), width))
    return sites


def _shape_entry(idx: GraphIndex, reshape, axis: int, layout: Layout, width: int) -> list:
    """The Reshape's entry that sets the channel axis: rewritten when it is the literal width,
    nothing to do when it is -1 (inferred from the sliced vector)."""
    shape = [int(v) for v in np.asarray(idx.array(reshape.input[1])).reshape(-1)]
    entry = shape[axis]
    if entry == -1:
        return []
    if entry != width:
        raise Refusal(f"Reshape '{reshape.name}' gives its constant's channel axis as {entry}")
    return [AttrSite(reshape.name, "reshape", (layout,), name=reshape.input[1], index=axis,
                     factor=layout.block)]
