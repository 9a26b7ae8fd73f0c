"""FLOPs of the matrix-multiply layers (Conv, ConvTranspose, Gemm, MatMul) and of the fused
attention ops (attnflops.py: QK^T, AV and com.microsoft Attention's projection) for one sample.

FLOPs = 2 x multiply-accumulates. Symbolic batch dimensions count as 1; any other unknown
dimension makes the total unknown (None) rather than a guess. A sequence length (or image
size) left dynamic in the model is taken from the calibration samples (`sample_index`):
attention's QK^T and AV products grow with it.
"""
from __future__ import annotations

import math

import onnx

from ..graph.index import MEASURED_DYNAMIC, GraphIndex, attr
from .attnflops import attention_macs, is_attention, projection_macs


def model_flops(model: onnx.ModelProto, index: GraphIndex | None = None, weight_dims: dict | None = None,
                scale: dict | None = None) -> int | None:
    """FLOPs for one sample; `weight_dims` (initializer -> new shape) counts a planned pruning:
    a layer with a constant weight does (output positions) x (weight elements) MACs, and
    pruning changes only the weight's size. `scale` (node -> factor) scales products of two
    activations, e.g. an attention block's QK^T by its kept share of heads."""
    idx = index or GraphIndex.build(model)
    weight_dims, scale = weight_dims or {}, scale or {}
    total = 0
    for node in idx.topo_nodes():
        if is_attention(node):
            macs = _attention_node(idx, node, weight_dims, scale.get(node.name, 1.0))
            if macs is None:
                return None
            total += macs
            continue
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        macs = _macs(idx, node)
        if macs is None:
            return None
        weight = node.input[1]
        if weight in weight_dims:
            macs = macs // math.prod(idx.shapes[weight]) * math.prod(weight_dims[weight])
        elif node.name in scale:
            macs = int(round(macs * scale[node.name]))
        total += macs
    return 2 * total


def _attention_node(idx: GraphIndex, node, weight_dims: dict, share: float) -> int | None:
    """A fused attention op: its QK^T and AV products (x the kept share of heads) and, for
    com.microsoft Attention, its packed projection (scaled by the planned weight size)."""
    products, projection = attention_macs(idx, node), projection_macs(idx, node)
    if products is None or projection is None:
        return None
    weight = node.input[1] if projection else None
    if weight in weight_dims:
        projection = projection // math.prod(idx.shapes[weight]) * math.prod(weight_dims[weight])
    return projection + int(round(products * share))


def _matmul_dims(a, b):
    """MatMul's output dims from its inputs' (a model output may keep unknown declared dims)."""
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    batch_a, batch_b = list(a[:-2]), list(b[:-2])
    n = max(len(batch_a), len(batch_b))
    batch_a, batch_b = [1] * (n - len(batch_a)) + batch_a, [1] * (n - len(batch_b)) + batch_b
    return [max(x, y) for x, y in zip(batch_a, batch_b)] + [a[-2], b[-1]]


def sample_index(model: onnx.ModelProto, sample_dims: dict, known: GraphIndex | None = None) -> GraphIndex | None:
    """An index of `model` whose inputs have the calibration samples' dims (the batch stays
    symbolic), for counting FLOPs of a model with a dynamic sequence length or image size;
    None when nothing is dynamic besides the batch or no sample dims fit. `known`: an index of
    the same model whose fallback shapes (symbolic inference through com.microsoft ops, where
    ONNX inference stops) fill what the static one lacks, their symbols set from the samples."""
    changed = False
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in out.graph.input:
        dims = sample_dims.get(vi.name)
        shape = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if dims is None or len(shape) != len(dims) + 1:
            continue
        for d, n in zip(list(shape)[1:], dims):
            if not d.HasField("dim_value"):
                d.dim_value = int(n)
                changed = True
    if not changed:
        return None
    del out.graph.value_info[:]          # shapes inferred before (symbolic) would stay as they were
    for vi in out.graph.output:          # ... and so would the outputs' declared symbolic dims
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.ClearField("dim_param")
    static = GraphIndex.build(out)
    if known is not None:
        _fill_from(static, known, _symbol_values(model, sample_dims))
    return static


def _symbol_values(model: onnx.ModelProto, sample_dims: dict) -> dict:
    """Symbolic input dim name -> its size in the calibration samples (the batch excluded)."""
    values = {}
    for vi in model.graph.input:
        dims = sample_dims.get(vi.name)
        shape = list(vi.type.tensor_type.shape.dim) if vi.type.HasField("tensor_type") else []
        if dims is not None and len(shape) == len(dims) + 1:
            values.update({d.dim_param: int(n) for d, n in zip(shape[1:], dims) if d.dim_param})
    return values


def _fill_from(static: GraphIndex, known: GraphIndex, values: dict) -> None:
    """Shapes `static` lacks, from `known`'s dims with the sample sizes put in for symbols and
    for dims measured as dynamic (their size on one calibration sample); the first (batch) dim
    may stay symbolic, a dim without a sample size leaves the shape unknown."""
    found = {}
    for name, dims in known.model_dims.items():
        if static.dims(name, batch=1) is not None or not dims:
            continue
        sample = known.sample_dims.get(name)

        def size(i, d):
            if isinstance(d, int):
                return d
            return sample[i] if d == MEASURED_DYNAMIC and sample else values.get(d)

        new = [dims[0] if isinstance(dims[0], int) else None] + [size(i, d) for i, d in enumerate(dims[1:], 1)]
        if all(d is not None for d in new[1:]):
            found[name] = (known.elem_types.get(name), tuple(new))
    for name, (elem, dims) in found.items():
        static.model_dims[name] = dims
        static.shapes[name] = dims
        static.shape_sources[name] = known.shape_sources.get(name, "symbolic")


def flops_for_samples(model: onnx.ModelProto, index: GraphIndex | None, sample_dims: dict | None) -> int | None:
    """model_flops, with dynamic non-batch dims taken from the samples when needed (and the
    shapes `index` got by fallback where static inference stops)."""
    flops = model_flops(model, index)
    if flops is None and sample_dims:
        static = sample_index(model, sample_dims, index)
        flops = model_flops(static.model, static) if static is not None else None
    return flops


def _macs(idx: GraphIndex, node) -> int | None:
    out = idx.dims(node.output[0], batch=1)
    a = idx.dims(node.input[0], batch=1)
    b = idx.dims(node.input[1], batch=1)
    if out is None and node.op_type == "MatMul":
        out = _matmul_dims(a, b)
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
