"""What a channel plan (kept channels per group) costs: parameters and FLOPs.

Parameter counts follow the paper: every floating-point initializer element of the model.
Counting is structural (it needs no data), so the budget is fixed before any slow work;
allocation.py searches plans with it.
"""
from __future__ import annotations

import numpy as np

from .attnflops import is_attention
from .flops import model_flops
from ..graph.index import GraphIndex, float_param_count


def axis_length(layout, counts_by_source: dict, channels_by_source: dict) -> int:
    """Elements along a site's axis once every source keeps counts_by_source[s] channels.

    A segment covering part of a source ([lo, hi) after a Split) is assumed to keep the
    same share as the whole source; the exact count is only known after selection.
    """
    positions = 0
    for seg in layout.segments:
        if seg.source is None or seg.source not in counts_by_source:
            positions += seg.size
        else:
            k, total = counts_by_source[seg.source], channels_by_source[seg.source]
            positions += k if seg.size == total else int(round(seg.size * k / total))
    return positions * layout.block


def planned_dims(idx: GraphIndex, groups, counts: dict) -> dict:
    """New shape of every initializer that depends on a group, once group g keeps counts[g]."""
    by_source, channels = {}, {}
    for g in groups:
        for s in g.sources:
            by_source[s], channels[s] = counts[g.name], g.channels
    dims, seen = {}, set()
    for g in groups:
        for p in g.params:
            if (p.name, p.axis) in seen:
                continue
            seen.add((p.name, p.axis))
            shape = dims.setdefault(p.name, list(idx.shapes[p.name]))
            shape[p.axis] = axis_length(p.layout, by_source, channels)
    return dims


def params_after(idx: GraphIndex, groups, counts: dict, adds_bias: bool, before: int | None = None) -> int:
    """Float parameter count of the model once every group keeps counts[name] channels."""
    dims = planned_dims(idx, groups, counts)
    before = float_param_count(idx.model) if before is None else before
    removed = sum(int(np.prod(idx.shapes[n])) - int(np.prod(d)) for n, d in dims.items())
    added = 0
    if adds_bias:
        counted = set()
        for g in groups:
            for c in g.consumers:
                if c.bias is None and c.node not in counted:
                    counted.add(c.node)
                    w = dims.get(c.weight, list(idx.shapes[c.weight]))
                    added += w[_output_axis(c)]
    return before - removed + added


def flops_after(idx: GraphIndex, groups, counts: dict) -> int | None:
    """FLOPs (as flops.model_flops counts them) once every group keeps counts[name] channels.
    Products of two activations keep their original cost (an upper bound), except inside an
    attention block, where QK^T and AV shrink with the kept share of heads; None when the
    model's FLOPs cannot be counted (dynamic non-batch dimensions)."""
    return model_flops(idx.model, idx, planned_dims(idx, groups, counts), head_scale(idx, groups, counts))


def head_scale(idx: GraphIndex, groups, counts: dict) -> dict:
    """node -> kept share of heads, for the activation products (QK^T, AV) of head groups: the
    batched MatMuls of an unfused block, the fused attention op itself (attnflops.py)."""
    out = {}
    for g in groups:
        if g.unit != "head":
            continue
        for name in g.passthrough:
            node = idx.nodes.get(name)
            if node is not None and (is_attention(node) or node.op_type == "MatMul"
                                     and not idx.is_constant(node.input[1])):
                out[name] = counts[g.name] / g.channels
    return out


def _output_axis(c) -> int:
    if c.op == "Conv":
        return 0
    if c.op == "ConvTranspose":
        return 1
    if c.op == "Gemm":
        return 0 if c.trans_b else 1
    return 1
