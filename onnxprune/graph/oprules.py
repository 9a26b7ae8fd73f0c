"""Per-operator rules: how each op moves channel layouts from its inputs to its outputs.

A rule returns an `Effect` (output layouts, parameter/attribute sites, couplings between
inputs) or raises `Refusal` with a reason a user can read. Ops not listed are refused:
we never guess. Producers and consumers (Conv / Gemm / MatMul, depthwise Convs included),
`Effect` and `Refusal` are in roles.py.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .index import GraphIndex, attr
from .groups import AttrSite, ParamSite
from .layout import Layout, concat, cut, opaque
from .roles import Effect, Refusal
from .constparams import reshaped_param_sites
from .msrules import MS, ms_transfer
from .padding import pad_effect
from .reshape import flatten_effect, reshape_effect
from .shapes import channel_count_unused, shape_range


# Element-wise ops of one tensor: channel identity is untouched.
UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Mish", "Gelu", "ThresholdedRelu", "Identity", "Dropout", "Clip", "Erf",
    "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Cast", "Pow", "Sin", "Cos", "Floor", "Ceil",
    "Round", "Sign", "Swish",
}
POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "PRelu"}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceProd"}
SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}


def transfer(idx: GraphIndex, node, layouts: dict, opset: int) -> Effect:
    """The Effect of `node` given the layouts of its tracked inputs ({input index: Layout})."""
    op = node.op_type
    if node.domain == MS:
        return ms_transfer(idx, node, layouts)
    if node.domain not in ("", "ai.onnx"):
        raise Refusal(f"channels reach custom-domain op {node.domain}.{op} ('{node.name}')")
    handler = _HANDLERS.get(op)
    if handler is None and op in UNARY:
        handler = _unary
    elif handler is None and op in POOLS:
        handler = _pool
    elif handler is None and op in REDUCE:
        handler = _reduce
    elif handler is None and op in BINARY:
        handler = _binary
    elif handler is None and op in SOFTMAX:
        handler = _softmax
    if handler is None:
        raise Refusal(f"channels reach {op} node '{node.name}', which onnxprune does not see through")
    return handler(idx, node, layouts, opset)


# -- helpers -------------------------------------------------------------------------------

def _only_input0(node, layouts: dict) -> Layout:
    if set(layouts) != {0}:
        raise Refusal(f"channels enter {node.op_type} node '{node.name}' through input "
                      f"{min(i for i in layouts if i)} rather than its data input")
    return layouts[0]


def _no_extra_outputs(idx: GraphIndex, node) -> None:
    for extra in node.output[1:]:
        if extra and (idx.uses(extra) or extra in idx.graph_outputs):
            raise Refusal(f"{node.op_type} node '{node.name}' has a second output in use ({extra})")


def _constant_inputs(idx: GraphIndex, node, skip=(0,)) -> None:
    for i, name in enumerate(node.input):
        if i not in skip and name and not idx.is_constant(name):
            raise Refusal(f"{node.op_type} node '{node.name}' has a non-constant input '{name}'")


def _const_ints(idx: GraphIndex, node, name: str):
    value = idx.known_value(name)
    if value is None:
        raise Refusal(f"{node.op_type} node '{node.name}' takes '{name}' from a computation, not a constant")
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _axes(idx: GraphIndex, node, opset: int, attr_until: int, rank: int, input_index: int = 1):
    """Axes given as an attribute (opset < attr_until) or as an input; None when absent."""
    if opset < attr_until:
        axes = attr(node, "axes")
    else:
        axes = (_const_ints(idx, node, node.input[input_index])
                if len(node.input) > input_index and node.input[input_index] else None)
    return None if axes is None else [a + rank if a < 0 else a for a in axes]


def _out(node, layout: Layout) -> Effect:
    return Effect(outputs={node.output[0]: layout})


def _per_channel_const(idx: GraphIndex, node, name: str, layout: Layout, out_rank: int):
    """A ParamSite when constant `name` varies along the channel axis, None when it is
    broadcast along it (then it treats every channel alike)."""
    shape = tuple(idx.shapes[name])
    axis = layout.axis - (out_rank - len(shape))
    if int(np.prod(shape, dtype=np.int64)) == 1 or axis < 0 or shape[axis] == 1:
        return None
    if shape[axis] != layout.positions * layout.block:
        raise Refusal(f"constant '{name}' of {node.op_type} '{node.name}' does not match the channel axis")
    return ParamSite(name, axis, layout)


# -- handlers ------------------------------------------------------------------------------

def _unary(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    _no_extra_outputs(idx, node)
    if node.op_type == "Pow":
        if not idx.is_constant(node.input[1]) or np.asarray(idx.array(node.input[1])).size != 1:
            raise Refusal(f"Pow '{node.name}' has a non-scalar exponent")
    else:
        _constant_inputs(idx, node)
    return _out(node, layout)


def _pool(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    _no_extra_outputs(idx, node)
    if layout.axis != 1 or layout.block != 1:
        raise Refusal(f"{node.op_type} '{node.name}' pools a layout whose channel axis is not 1")
    return _out(node, layout)


def _normalization(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    _no_extra_outputs(idx, node)
    _constant_inputs(idx, node)
    if layout.axis != 1 or layout.block != 1:
        raise Refusal(f"{node.op_type} '{node.name}' normalises axis 1, not the channel axis")
    effect = _out(node, layout)
    effect.sites = [ParamSite(name, 0, layout) for name in node.input[1:] if name]
    return effect


def _layer_norm(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    first = attr(node, "axis", -1)
    first = first + layout.rank if first < 0 else first
    if layout.axis >= first:
        raise Refusal(f"LayerNormalization '{node.name}' normalises over the channel axis "
                      "(removing channels would change its statistics)")
    _no_extra_outputs(idx, node)
    _constant_inputs(idx, node)
    return _out(node, layout)


def _binary(idx, node, layouts, opset):
    out_rank = len(idx.dims(node.output[0]) or ()) or max(l.rank for l in layouts.values())
    tracked = {i: replace(l, axis=l.axis + out_rank - l.rank, rank=out_rank) for i, l in layouts.items()}
    first = next(iter(tracked.values()))
    effect = _out(node, first)
    for i, name in enumerate(node.input):
        if i in tracked:
            lay = tracked[i]
            if (lay.axis, lay.block, lay.interleaved) != (first.axis, first.block, first.interleaved):
                raise Refusal(f"{node.op_type} '{node.name}' combines channels laid out differently")
            if lay is not first:
                effect.couplings.append((first, lay))
            continue
        if idx.is_constant(name):
            site = _per_channel_const(idx, node, name, first, out_rank)
            if site is not None:
                effect.sites.append(site)
            continue
        relaid = reshaped_param_sites(idx, node, name, first, out_rank)
        if relaid is not None:
            effect.sites.extend(relaid)
            continue
        shape = idx.dims(name)
        axis = first.axis - (out_rank - len(shape)) if shape is not None else None
        if shape is None or (axis is not None and axis >= 0 and shape[axis] != 1):
            source = idx.producer.get(name)
            origin = f" (output of {source.op_type} '{source.name}')" if source is not None else " (a model input)"
            raise Refusal(f"channels reach {node.op_type} node '{node.name}' together with '{name}'{origin}, "
                          "whose channels are not prunable")
    return effect


def _softmax(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    axis = attr(node, "axis", -1 if opset >= 13 else 1)
    axis = axis + layout.rank if axis < 0 else axis
    touches = layout.axis == axis if opset >= 13 else layout.axis >= axis
    if touches:
        raise Refusal(f"{node.op_type} '{node.name}' normalises across the channel axis")
    return _out(node, layout)


def _reduce(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    attr_until = 13 if node.op_type == "ReduceSum" else 18
    axes = _axes(idx, node, opset, attr_until, layout.rank)
    if not axes or layout.axis in axes or layout.block != 1:
        raise Refusal(f"{node.op_type} '{node.name}' reduces over the channel axis")
    keep = attr(node, "keepdims", 1)
    axis = layout.axis if keep else layout.axis - sum(a < layout.axis for a in axes)
    return _out(node, layout.with_axis(axis, layout.rank if keep else layout.rank - len(axes)))


def _flatten(idx, node, layouts, opset):
    return flatten_effect(idx, node, _only_input0(node, layouts))


def _reshape(idx, node, layouts, opset):
    return reshape_effect(idx, node, _only_input0(node, layouts))


def _shape(idx, node, layouts, opset):
    """Shape reads dimensions, not values: fine while nothing uses the channel count (every
    use, after any Casts, a Gather of constant indices (negative ones counted from the back)
    or a constant Slice, none of which picks the channel axis)."""
    layout = _only_input0(node, layouts)
    read = shape_range(node, layout.rank)
    channel = read.index(layout.axis) if layout.axis in read else None
    if not channel_count_unused(idx, node.output[0], len(read), channel, opset):
        raise Refusal(f"Shape '{node.name}' reads the channel count of a prunable tensor")
    return Effect()


def _transpose(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    perm = attr(node, "perm", list(range(layout.rank))[::-1])
    return _out(node, layout.with_axis(list(perm).index(layout.axis), layout.rank))


def _squeeze(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    axes = _axes(idx, node, opset, 13, layout.rank)
    if axes is None:
        dims = idx.dims(node.input[0])
        if dims is None or any(d is None for d in dims):
            raise Refusal(f"Squeeze '{node.name}' without axes on an input of unknown shape")
        axes = [i for i, d in enumerate(dims) if d == 1]
    if layout.axis in axes:
        raise Refusal(f"Squeeze '{node.name}' removes the channel axis")
    return _out(node, layout.with_axis(layout.axis - sum(x < layout.axis for x in axes), layout.rank - len(axes)))


def _unsqueeze(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    rank = layout.rank + len(attr(node, "axes", []) if opset < 13 else _const_ints(idx, node, node.input[1]))
    axes = sorted(a + rank if a < 0 else a for a in (attr(node, "axes") if opset < 13
                                                     else _const_ints(idx, node, node.input[1])))
    kept = [i for i in range(rank) if i not in axes]
    return _out(node, layout.with_axis(kept[layout.axis], rank))


def _slice(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    if opset < 10:
        starts, ends, axes = attr(node, "starts"), attr(node, "ends"), attr(node, "axes")
        steps = None
    else:
        starts, ends = (_const_ints(idx, node, node.input[i]) for i in (1, 2))
        axes = _const_ints(idx, node, node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = _const_ints(idx, node, node.input[4]) if len(node.input) > 4 and node.input[4] else None
    axes = list(range(len(starts))) if axes is None else [a + layout.rank if a < 0 else a for a in axes]
    steps = steps or [1] * len(axes)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if axis == layout.axis and not (start == 0 and end >= layout.positions * layout.block and step == 1):
            raise Refusal(f"Slice '{node.name}' cuts the channel axis")
    return _out(node, layout)


def _pad(idx, node, layouts, opset):
    return pad_effect(idx, node, _only_input0(node, layouts), opset)


def _concat(idx, node, layouts, opset):
    first = next(iter(layouts.values()))
    axis = attr(node, "axis")
    axis = axis + first.rank if axis < 0 else axis
    if axis != first.axis:
        effect = _out(node, first)
        for i, name in enumerate(node.input):
            if i not in layouts:
                raise Refusal(f"Concat '{node.name}' stacks prunable channels with '{name}', whose are not")
            if layouts[i] is not first:
                effect.couplings.append((first, layouts[i]))
        return effect
    parts = []
    for i, name in enumerate(node.input):
        if i in layouts:
            lay = layouts[i]
            if lay.axis != axis or lay.block != first.block or lay.interleaved:
                raise Refusal(f"Concat '{node.name}' joins channels laid out differently")
            parts.append(lay)
        else:
            dims = idx.dims(name)
            if dims is None or dims[axis] is None:
                raise Refusal(f"Concat '{node.name}' has an input of unknown width ('{name}')")
            if dims[axis] % first.block:
                raise Refusal(f"Concat '{node.name}' joins channels laid out differently")
            parts.append(Layout(axis, first.rank, (opaque(dims[axis] // first.block),), first.block))
    return _out(node, concat(parts, axis, first.rank))


def _split(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    axis = attr(node, "axis", 0)
    axis = axis + layout.rank if axis < 0 else axis
    if axis != layout.axis:
        return Effect(outputs={o: layout for o in node.output if o})
    width = layout.positions * layout.block
    sizes_name = None
    if opset < 13:
        sizes = attr(node, "split")
    elif len(node.input) > 1 and node.input[1]:
        sizes_name = node.input[1]
        sizes = _const_ints(idx, node, sizes_name)
    else:
        sizes = None
    if sizes is None:
        count = len(node.output)
        if width % count:
            raise Refusal(f"Split '{node.name}' splits unevenly without explicit sizes")
        sizes = [width // count] * count
    if any(s % layout.block for s in sizes) or layout.interleaved:
        raise Refusal(f"Split '{node.name}' cuts inside a channel's block")
    outputs, start = {}, 0
    out_layouts = []
    for name, size in zip(node.output, sizes):
        piece = cut(layout, start // layout.block, (start + size) // layout.block)
        out_layouts.append(piece)
        if name:
            outputs[name] = piece
        start += size
    return Effect(outputs=outputs, sites=[AttrSite(node.name, "split", tuple(out_layouts), name=sizes_name)])


def _resize(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    if layout.axis != 1 or layout.block != 1:
        raise Refusal(f"{node.op_type} '{node.name}' resizes a layout whose channel axis is not 1")
    if node.op_type == "Resize" and len(node.input) > 3 and node.input[3]:
        raise Refusal(f"Resize '{node.name}' gives explicit output sizes, which include the channel count")
    _constant_inputs(idx, node)
    if node.op_type == "Upsample" and opset < 9:
        scales = attr(node, "scales")
    else:
        at = 2 if (node.op_type == "Resize" and opset >= 11) else 1
        scales = idx.array(node.input[at]).reshape(-1) if len(node.input) > at and node.input[at] else None
    if scales is not None and len(scales) == layout.rank and scales[layout.axis] != 1:
        raise Refusal(f"{node.op_type} '{node.name}' rescales the channel axis")
    return _out(node, layout)


def _gather(idx, node, layouts, opset):
    layout = _only_input0(node, layouts)
    axis = attr(node, "axis", 0)
    axis = axis + layout.rank if axis < 0 else axis
    if axis == layout.axis or not idx.is_constant(node.input[1]):
        raise Refusal(f"Gather '{node.name}' picks along the channel axis or with computed indices")
    irank = np.asarray(idx.array(node.input[1])).ndim
    new_axis = layout.axis if axis > layout.axis else layout.axis - 1 + irank
    return _out(node, layout.with_axis(new_axis, layout.rank - 1 + irank))


_HANDLERS = {
    "BatchNormalization": _normalization,
    "InstanceNormalization": _normalization,
    "LayerNormalization": _layer_norm,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Pad": _pad,
    "Concat": _concat,
    "Split": _split,
    "Resize": _resize,
    "Upsample": _resize,
    "Gather": _gather,
    "Shape": _shape,
}
