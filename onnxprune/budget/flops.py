"""FLOPs of the matrix-multiply layers (Conv, ConvTranspose, Gemm, MatMul) for one sample.

FLOPs = 2 x multiply-accumulates. Symbolic batch dimensions count as 1; any other unknown
dimension makes the total unknown (None) rather than a guess.
"""
from __future__ import annotations

import math

import onnx

from ..graph.index import GraphIndex, attr


def model_flops(model: onnx.ModelProto, index: GraphIndex | None = None, weight_dims: dict | None = None) -> int | None:
    """FLOPs for one sample; `weight_dims` (initializer -> new shape) counts a planned pruning:
    a layer with a constant weight does (output positions) x (weight elements) MACs, and
    pruning changes only the weight's size."""
    idx = index or GraphIndex.build(model)
    weight_dims = weight_dims or {}
    total = 0
    for node in idx.topo_nodes():
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        macs = _macs(idx, node)
        if macs is None:
            return None
        weight = node.input[1]
        if weight in weight_dims:
            macs = macs // math.prod(idx.shapes[weight]) * math.prod(weight_dims[weight])
        total += macs
    return 2 * total


def _macs(idx: GraphIndex, node) -> int | None:
    out = idx.dims(node.output[0], batch=1)
    a = idx.dims(node.input[0], batch=1)
    b = idx.dims(node.input[1], batch=1)
    if out is None or a is None or b is None:
        return None
    if node.op_type == "Conv":
        return math.prod(out) * math.prod(b[1:])          # each output: Cin/group * kernel MACs
    if node.op_type == "ConvTranspose":                   # each input element: Cout/group * kernel MACs
        return math.prod(a[2:]) * math.prod(b)            # (C_in positions x weight [C_in, Cout/g, k...])
    if node.op_type == "Gemm":
        k = a[0] if attr(node, "transA", 0) else a[1]
        return math.prod(out) * k
    k = a[-1] if len(a) > 1 else a[0]
    return math.prod(out) * k
