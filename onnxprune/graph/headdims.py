"""Dimension facts the head detector (headflow.py) must prove before it follows heads.

Masks and scales meet the heads in element-wise ops; they are safe only when they broadcast
over the head axis (size 1 there, or no such axis). Exporters often leave those dims unknown
to shape inference (a causal mask sliced to the sequence length, a padding mask expanded to
[B, 1, S, S] by a computed shape), so `size_one_at` follows the few ops that build them.
Shapes read from head-carrying tensors are fine while they never read the head count
(`reads_axis`). Unknown is always "not proven".
"""
from __future__ import annotations

import numpy as np

from .index import GraphIndex, attr
from .shapes import Const, normalised, shape_entries, shape_range

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Where", "Cast", "Not", "Identity", "Neg", "Equal", "Less", "Greater",
               "And", "Or", "Sqrt", "Pow", "Max", "Min"}


def size_one_at(idx: GraphIndex, tensor: str, back: int, depth: int = 0) -> bool:
    """Whether `tensor` has size 1 (or no axis) at axis -`back` (counted from the end)."""
    dims = idx.shapes.get(tensor)
    if dims is not None:
        if back > len(dims):
            return True
        if dims[-back] is not None:
            return dims[-back] == 1
    node = idx.producer.get(tensor)
    if node is None or depth > 12 or dims is None:
        return False
    op = node.op_type
    if op in ELEMENTWISE:
        return all(size_one_at(idx, t, back, depth + 1) for t in node.input if t)
    if op == "Slice" and len(node.input) > 3 and node.input[3]:
        axes = idx.known_value(node.input[3])
        if axes is None:
            return False
        rank = len(dims)
        if any((int(a) + rank if int(a) < 0 else int(a)) == rank - back for a in np.asarray(axes).reshape(-1)):
            return False
        return size_one_at(idx, node.input[0], back, depth + 1)
    if op == "Expand":
        entry = entry_at(idx, node.input[1], len(dims) - back, depth + 1)
        return size_one_at(idx, node.input[0], back, depth + 1) and entry is not None and entry.value == 1
    return False


def entry_at(idx: GraphIndex, name: str, i: int, depth: int = 0):
    """Entry i of a small 1-D integer tensor as a Const (with the initializer holding it when
    there is one), when it can be proven; else None. Follows what torch writes for
    `expand(...)` targets: Where(Equal(shape, -1), ones, shape) over a Concat."""
    if depth > 12:
        return None
    entries = shape_entries(idx, name)
    if entries is not None:
        return entries[i] if i < len(entries) and isinstance(entries[i], Const) else None
    node = idx.producer.get(name)
    if node is None:
        return None
    op = node.op_type
    if op == "Where":
        cond = _condition(idx, node.input[0], i, depth + 1)
        return None if cond is None else entry_at(idx, node.input[1 if cond else 2], i, depth + 1)
    if op == "ConstantOfShape":
        value = attr(node, "value", None)
        return Const(int(np.asarray(_tensor_value(value)).reshape(-1)[0]) if value is not None else 0)
    if op == "Mul":
        a, b = (entry_at(idx, t, i, depth + 1) if idx.rank(t) == 1 else _scalar(idx, t) for t in node.input)
        return None if a is None or b is None else Const(a.value * b.value)
    if op in ("Reshape", "Identity", "Cast") and idx.rank(node.input[0]) == 1:
        return entry_at(idx, node.input[0], i, depth + 1)
    if op == "Concat":
        start = 0
        for part in node.input:
            size = (idx.shapes.get(part) or (None,))[0]
            if size is None:
                return None
            if i < start + size:
                return entry_at(idx, part, i - start, depth + 1)
            start += size
    return None


def _scalar(idx: GraphIndex, name: str):
    value = idx.known_value(name)
    return None if value is None or np.asarray(value).size != 1 else Const(int(np.asarray(value).reshape(-1)[0]))


def _condition(idx: GraphIndex, name: str, i: int, depth: int):
    """Entry i of a boolean Equal of two integer tensors, when both entries are known."""
    node = idx.producer.get(name)
    if node is None or node.op_type != "Equal":
        return None
    a, b = (entry_at(idx, t, i, depth) for t in node.input)
    return None if a is None or b is None else a.value == b.value


def _tensor_value(t):
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


def reads_axis(idx: GraphIndex, shape_node, rank: int, axis: int) -> bool:
    """Whether what Shape `shape_node` reads of a rank-`rank` tensor may include `axis`:
    only Gather and Slice of constant indices are followed."""
    axes = list(shape_range(shape_node, rank))
    if axis not in axes:
        return False
    target = axes.index(axis)
    for user, _ in idx.uses(shape_node.output[0]):
        picks = _picked(idx, user, len(axes))
        if picks is None or target in picks:
            return True
    return False


def _picked(idx: GraphIndex, user, size: int):
    """Positions of a 1-D shape tensor a Gather / Slice reads, or None when unknown."""
    if user.op_type == "Gather" and attr(user, "axis", 0) == 0 and len(user.input) > 1:
        picks = idx.known_value(user.input[1])
        return None if picks is None else normalised(picks, size)
    if user.op_type == "Slice" and len(user.input) >= 3:
        values = [idx.known_value(t) if t else None for t in user.input[1:5]]
        starts, ends = values[0], values[1]
        if starts is None or ends is None or any(v is not None and np.asarray(v).size != 1 for v in values):
            return None
        if (len(values) > 2 and values[2] is not None and int(np.asarray(values[2]).reshape(-1)[0]) not in (0, -1)) \
                or (len(values) > 3 and values[3] is not None and int(np.asarray(values[3]).reshape(-1)[0]) != 1):
            return None
        return list(range(size))[slice(int(np.asarray(starts).reshape(-1)[0]), int(np.asarray(ends).reshape(-1)[0]))]
    return None


def leading_kept(idx: GraphIndex, data: str, entries, allowzero: int, kept: int) -> bool:
    """Whether Reshape target entries reproduce `data`'s first `kept` dims one by one (so a -1
    after them is inferred from the remaining axes alone): a 0 copy, the same known size, or
    a dim read from a tensor whose dim has the same symbolic name."""
    din, sym = idx.shapes.get(data), idx.model_dims.get(data)
    if din is None or len(entries) != kept:
        return False
    for i, e in enumerate(entries):
        if isinstance(e, Const):
            ok = (e.value == 0 and not allowzero) or (e.value > 0 and din[i] == e.value)
        else:
            other = idx.model_dims.get(e.tensor)
            ok = (e.tensor == data and e.axis == i) or (
                sym is not None and other is not None and e.axis < len(other)
                and other[e.axis] is not None and other[e.axis] == sym[i])
        if not ok:
            return False
    return True
