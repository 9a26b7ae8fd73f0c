"""Per-operator rules: which nodes produce, pass through, or consume a channel axis.

Each rule looks at one node and either describes its role or raises `Refusal` with a
reason a user can read. Anything not listed is refused: we never guess.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import GraphIndex, attr
from .groups import ConvGeometry, Consumer, ParamSlice, Producer


class Refusal(Exception):
    """Why a group of channels cannot be pruned safely."""


@dataclass(frozen=True)
class Carrier:
    """How a tensor carries the group's channels: on `axis` of a rank-`rank` tensor,
    each channel owning `flatten_block` consecutive positions (after a Flatten)."""

    axis: int
    rank: int
    flatten_block: int = 1


@dataclass(frozen=True)
class Production:
    """A producer, its prunable output tensor, channel count and sliced params."""

    producer: Producer
    output: str
    channels: int
    carrier: Carrier
    slices: tuple


# Element-wise ops with no parameters: channel identity is untouched.
UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Mish", "Gelu", "ThresholdedRelu", "Identity", "Dropout", "Clip",
}
POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
CONST_BINARY = {"Add", "Sub", "Mul", "Div"}
MATMUL_LIKE = {"Conv", "Gemm", "MatMul"}


def _single_data_input(node, in_index: int) -> None:
    if in_index != 0:
        raise Refusal(f"channels enter {node.op_type} node '{node.name}' as input {in_index}, not as its data input")


def _unused_extra_outputs(idx: GraphIndex, node) -> None:
    for extra in node.output[1:]:
        if extra and (idx.uses(extra) or extra in idx.graph_outputs):
            raise Refusal(f"{node.op_type} node '{node.name}' has a second output in use ({extra})")


def _per_channel_param(idx: GraphIndex, node, name: str, carrier: Carrier, channels: int):
    """Slice for a constant broadcast against the channel tensor, or None for a scalar-like one."""
    if not idx.is_constant(name):
        raise Refusal(f"{node.op_type} node '{node.name}' mixes the channels with a non-constant input '{name}'")
    shape = tuple(idx.shapes[name])
    if int(np.prod(shape, dtype=np.int64)) == 1:
        return None
    if len(shape) > carrier.rank:
        raise Refusal(f"constant '{name}' of {node.op_type} node '{node.name}' broadcasts to a higher rank")
    axis = carrier.axis - (carrier.rank - len(shape))
    others = [d for i, d in enumerate(shape) if i != axis]
    if axis < 0 or any(d != 1 for d in others):
        raise Refusal(f"constant '{name}' of {node.op_type} node '{node.name}' varies along a non-channel axis")
    if shape[axis] == 1:
        return None
    if carrier.flatten_block != 1 or shape[axis] != channels:
        raise Refusal(f"constant '{name}' of {node.op_type} node '{node.name}' does not match the channel layout")
    return ParamSlice(name, axis, 1)


def passthrough(idx: GraphIndex, node, in_index: int, carrier: Carrier, channels: int):
    """(output carrier, param slices) when `node` keeps channel identity, else Refusal."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        raise Refusal(f"channels reach custom-domain op {node.domain}.{op} ('{node.name}')")
    if op in UNARY:
        _single_data_input(node, in_index)
        _unused_extra_outputs(idx, node)
        for extra in node.input[1:]:
            if extra and not idx.is_constant(extra):
                raise Refusal(f"{op} node '{node.name}' has a non-constant input '{extra}'")
        return carrier, ()
    if op == "PRelu":
        _single_data_input(node, in_index)
        s = _per_channel_param(idx, node, node.input[1], carrier, channels)
        return carrier, (s,) if s else ()
    if op == "BatchNormalization":
        _single_data_input(node, in_index)
        _unused_extra_outputs(idx, node)
        if carrier.axis != 1 or carrier.flatten_block != 1:
            raise Refusal(f"BatchNormalization '{node.name}' normalises axis 1, not the channel axis")
        slices = []
        for name in node.input[1:5]:
            if not idx.is_constant(name):
                raise Refusal(f"BatchNormalization '{node.name}' has non-constant parameter '{name}'")
            slices.append(ParamSlice(name, 0, 1))
        return carrier, tuple(slices)
    if op in POOLS:
        _single_data_input(node, in_index)
        _unused_extra_outputs(idx, node)
        if carrier.axis != 1 or carrier.flatten_block != 1:
            raise Refusal(f"{op} '{node.name}' pools a layout whose channel axis is not 1")
        return carrier, ()
    if op in CONST_BINARY:
        other = node.input[1 - in_index]
        if other == node.input[in_index]:
            raise Refusal(f"{op} node '{node.name}' combines the channels with themselves")
        if not idx.is_constant(other):
            raise Refusal(f"channels reach {op} node '{node.name}' together with another branch ('{other}'); "
                          "coupled branches are not pruned")
        s = _per_channel_param(idx, node, other, carrier, channels)
        return carrier, (s,) if s else ()
    if op == "Flatten":
        return _flatten(idx, node, carrier), ()
    raise Refusal(f"channels reach {op} node '{node.name}', which onnxprune does not see through")


def _flatten(idx: GraphIndex, node, carrier: Carrier) -> Carrier:
    if carrier.flatten_block != 1:
        raise Refusal(f"Flatten '{node.name}' follows another Flatten")
    dims = idx.shapes.get(node.input[0])
    axis = attr(node, "axis", 1)
    axis = axis + carrier.rank if axis < 0 else axis
    if carrier.axis < axis:
        raise Refusal(f"Flatten '{node.name}' folds the channel axis into the rows")
    between = dims[axis:carrier.axis] if dims else None
    inner = dims[carrier.axis + 1:] if dims else None
    if dims is None or any(d is None for d in between + inner):
        raise Refusal(f"Flatten '{node.name}' has an input of unknown shape")
    if int(np.prod(between, dtype=np.int64)) != 1:
        raise Refusal(f"Flatten '{node.name}' interleaves the channels with other axes")
    return Carrier(axis=1, rank=2, flatten_block=int(np.prod(inner, dtype=np.int64)))


def consumer(idx: GraphIndex, node, in_index: int, carrier: Carrier) -> Consumer | None:
    """A Consumer when `node` is a Conv/Gemm/MatMul reading the channels as its data input."""
    op = node.op_type
    if op not in MATMUL_LIKE or node.domain not in ("", "ai.onnx"):
        return None
    if in_index != 0:
        raise Refusal(f"channels enter {op} '{node.name}' as input {in_index} (the weight side)")
    if len(node.input) < 2 or not idx.is_constant(node.input[1]):
        raise Refusal(f"{op} '{node.name}' has no constant weight")
    weight = node.input[1]
    fb = carrier.flatten_block
    if op == "Conv":
        if attr(node, "group", 1) != 1:
            raise Refusal(f"channels reach grouped Conv '{node.name}' (group={attr(node, 'group')})")
        if carrier.axis != 1 or fb != 1:
            raise Refusal(f"Conv '{node.name}' reads channels on axis 1, the channels are elsewhere")
        wshape = idx.shapes[weight]
        spatial = len(wshape) - 2
        kernel = tuple(wshape[2:])
        geometry = ConvGeometry(
            kernel=kernel,
            strides=tuple(attr(node, "strides", [1] * spatial)),
            pads=tuple(attr(node, "pads", [0] * (2 * spatial))),
            dilations=tuple(attr(node, "dilations", [1] * spatial)),
            auto_pad=_str(attr(node, "auto_pad", "NOTSET")),
        )
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        _constant_bias(idx, node, bias)
        return Consumer(node=node.name, op=op, input=node.input[0], weight=weight, weight_axis=1,
                        flatten_block=1, block=int(np.prod(kernel, dtype=np.int64)), bias=bias, conv=geometry)
    if op == "Gemm":
        trans_a, trans_b = bool(attr(node, "transA", 0)), bool(attr(node, "transB", 0))
        if carrier.rank != 2 or carrier.axis != (0 if trans_a else 1):
            raise Refusal(f"Gemm '{node.name}' contracts an axis that does not hold the channels")
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        _constant_bias(idx, node, bias)
        if bias is not None and not _row_vector(idx.shapes[bias], _gemm_n(idx, node)):
            raise Refusal(f"Gemm '{node.name}' has a bias that is not one value per output column")
        return Consumer(node=node.name, op=op, input=node.input[0], weight=weight, weight_axis=1 if trans_b else 0,
                        flatten_block=fb, block=fb, bias=bias, trans_a=trans_a, trans_b=trans_b,
                        alpha=float(attr(node, "alpha", 1.0)), beta=float(attr(node, "beta", 1.0)))
    # MatMul: X[..., K] @ W[K, N]
    if len(idx.shapes[weight]) != 2:
        raise Refusal(f"MatMul '{node.name}' has a weight of rank {len(idx.shapes[weight])}, not 2")
    if carrier.axis != carrier.rank - 1:
        raise Refusal(f"MatMul '{node.name}' contracts the last axis, the channels are on axis {carrier.axis}")
    bias, bias_node = matmul_bias(idx, node)
    return Consumer(node=node.name, op=op, input=node.input[0], weight=weight, weight_axis=0,
                    flatten_block=fb, block=fb, bias=bias, bias_node=bias_node)


def matmul_bias(idx: GraphIndex, node):
    """(bias constant, Add node name) when the MatMul's only use is an Add of a [N] constant."""
    out = node.output[0]
    uses = idx.uses(out)
    if len(uses) != 1 or out in idx.graph_outputs:
        return None, None
    add, _ = uses[0]
    if add.op_type != "Add" or len(add.input) != 2:
        return None, None
    other = add.input[1] if add.input[0] == out else add.input[0]
    n = idx.shapes[node.input[1]][1]
    if idx.is_constant(other) and _row_vector(idx.shapes[other], n) and len(idx.uses(other)) == 1:
        return other, add.name
    return None, None


def production(idx: GraphIndex, node) -> Production:
    """Describe `node` as a producer of prunable output channels, or raise Refusal."""
    op = node.op_type
    name = node.name
    if len(node.input) < 2 or not idx.is_constant(node.input[1]):
        raise Refusal(f"{op} '{name}' has no constant weight as its second input")
    if idx.is_constant(node.input[0]):
        raise Refusal(f"{op} '{name}' has a constant data input")
    weight = node.input[1]
    out = node.output[0]
    rank = idx.rank(out)
    if rank is None:
        raise Refusal(f"{op} '{name}' has an output of unknown rank")
    if op == "Conv":
        if attr(node, "group", 1) != 1:
            raise Refusal(f"Conv '{name}' is grouped (group={attr(node, 'group')})")
        slices = [ParamSlice(weight, 0)]
        if len(node.input) > 2 and node.input[2]:
            _constant_bias(idx, node, node.input[2])
            slices.append(ParamSlice(node.input[2], 0))
        channels = idx.shapes[weight][0]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        return Production(Producer(name, op, weight, 0, bias), out, channels, Carrier(1, rank), tuple(slices))
    if op == "Gemm":
        trans_b = bool(attr(node, "transB", 0))
        channels = _gemm_n(idx, node)
        slices = [ParamSlice(weight, 0 if trans_b else 1)]
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
            _constant_bias(idx, node, bias)
            bshape = idx.shapes[bias]
            if bshape and bshape[-1] == channels and channels != 1:
                slices.append(ParamSlice(bias, len(bshape) - 1))
            elif int(np.prod(bshape, dtype=np.int64)) != 1:
                raise Refusal(f"Gemm '{name}' has a bias that is not one value per output column")
        return Production(Producer(name, op, weight, 0 if trans_b else 1, bias), out, channels, Carrier(1, 2),
                          tuple(slices))
    if op == "MatMul":
        wshape = idx.shapes[weight]
        if len(wshape) != 2:
            raise Refusal(f"MatMul '{name}' has a weight of rank {len(wshape)}, not 2")
        channels = wshape[1]
        slices = [ParamSlice(weight, 1)]
        bias, bias_node = matmul_bias(idx, node)
        if bias is not None:
            bshape = idx.shapes[bias]
            if bshape[-1] == channels:
                slices.append(ParamSlice(bias, len(bshape) - 1))
            out = idx.nodes[bias_node].output[0]
        return Production(Producer(name, op, weight, 1, bias, bias_node), out, channels, Carrier(rank - 1, rank),
                          tuple(slices))
    raise Refusal(f"{op} '{name}' is not a supported producer")


def _gemm_n(idx: GraphIndex, node) -> int:
    wshape = idx.shapes[node.input[1]]
    return wshape[0] if attr(node, "transB", 0) else wshape[1]


def _constant_bias(idx: GraphIndex, node, bias) -> None:
    if bias is not None and not idx.is_constant(bias):
        raise Refusal(f"{node.op_type} '{node.name}' has a non-constant bias '{bias}'")


def _row_vector(shape, n: int) -> bool:
    """True for shapes like [n], [1, n], [1] that add one value per output column."""
    if not shape:
        return True
    return all(d == 1 for d in shape[:-1]) and shape[-1] in (1, n)


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
