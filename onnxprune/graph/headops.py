"""Per-op rules of the head flow (headflow.py): how each op moves a head axis, or why not.

A `Tag` says where a tensor holds heads. Each rule maps the tags of a node's inputs to the
tags of its outputs, or raises Refusal where head h's values could depend on another head's
inputs (an op across the head axis, an operand that does not broadcast over it) or where a
head count it writes could not be rewritten. Counts a rule must rewrite (a merge Reshape's
width, an Expand target's head entry) are handed to `flow.count`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .headattn import attention_4d
from .headdims import entry_at, size_one_at
from .index import attr
from .roles import Refusal
from .shapes import Const, Dim, shape_entries

UNARY = {"IsNaN", "Not", "Cast", "Neg", "Identity", "Dropout", "Exp", "Tanh", "Relu", "Sigmoid", "Sqrt", "Abs",
         "Erf", "Softplus", "Reciprocal", "Log"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Clip", "Equal", "Less", "Greater"}


@dataclass(frozen=True)
class Tag:
    """A tensor carrying heads: `heads` positions on `axis`, position p belonging to unit
    p // `group` (grouped-query attention repeats each K/V head `group` times); head features
    on `dh` (None once contracted); `dims` what each axis is (int, symbolic name or None);
    `rep_axis`: a size-1 axis right after the heads that an Expand may repeat them along."""

    axis: int
    rank: int
    heads: int
    dh: int | None
    root: str
    dims: tuple = ()
    group: int = 1
    rep_axis: int | None = None
    rep: int = 1


def effect(flow, node, tagged: dict) -> dict:
    """Output tags of `node`, or Refusal."""
    op, t0 = node.op_type, next(iter(tagged.values()))
    if op in UNARY:
        if set(tagged) != {0}:
            raise Refusal(f"heads enter {op} '{node.name}' as a parameter")
        return {node.output[0]: t0}
    if op in BROADCAST:
        return {node.output[0]: broadcast(flow, node, tagged)}
    if op == "Transpose":
        perm = list(attr(node, "perm", list(range(t0.rank))[::-1]))
        if t0.rep_axis is not None:
            raise Refusal(f"Transpose '{node.name}' moves the axis heads are repeated along")
        return {node.output[0]: replace(t0, axis=perm.index(t0.axis), dh=None if t0.dh is None else perm.index(t0.dh),
                                        dims=tuple(t0.dims[p] for p in perm) if t0.dims else ())}
    if op in ("Softmax", "LogSoftmax"):
        axis = attr(node, "axis", -1 if flow.opset >= 13 else 1)
        axis = axis + t0.rank if axis < 0 else axis
        if axis == t0.axis or (flow.opset < 13 and axis < t0.axis):
            raise Refusal(f"{op} '{node.name}' normalises across heads")
        return {node.output[0]: t0}
    if op == "MatMul":
        return {node.output[0]: matmul(flow, node, tagged)}
    if op == "Unsqueeze":
        return {node.output[0]: unsqueeze(flow, node, tagged)}
    if op == "Expand":
        return {node.output[0]: expand(flow, node, tagged)}
    if op == "Reshape":
        if set(tagged) != {0}:
            raise Refusal(f"Reshape '{node.name}' takes heads as its shape")
        if t0.rep_axis is not None and t0.rep > 1:
            return {node.output[0]: merge_repeat(flow, node, t0)}
        flow.merge(node, t0)
        return {}
    if op in ("Slice", "Split", "Concat"):
        return along_other_axis(flow, node, tagged)
    if op == "Attention":
        return {node.output[0]: attention_4d(flow, node, tagged)}
    raise Refusal(f"heads reach {op} '{node.name}', which onnxprune does not follow for heads")


def broadcast(flow, node, tagged: dict) -> Tag:
    """Element-wise: tagged operands align on one head axis; the others broadcast over it."""
    idx = flow.idx
    ranks = [idx.rank(t) if i not in tagged else tagged[i].rank for i, t in enumerate(node.input) if t]
    if any(r is None for r in ranks):
        raise Refusal(f"{node.op_type} '{node.name}' has an operand of unknown rank")
    out_rank = max(ranks)
    tags = list(tagged.values())
    axes = {out_rank - t.rank + t.axis for t in tags}
    if len(axes) != 1 or len({t.heads for t in tags}) != 1 or any(t.rep_axis is not None for t in tags):
        raise Refusal(f"{node.op_type} '{node.name}' combines heads on different axes")
    axis = axes.pop()
    for i, t in enumerate(node.input):
        if t and i not in tagged and not size_one_at(idx, t, out_rank - axis):
            raise Refusal(f"{node.op_type} '{node.name}' combines the heads with '{t}', which does not "
                          "broadcast over the head axis")
    dhs = {None if t.dh is None else out_rank - t.rank + t.dh for t in tags}
    t0 = max(tags, key=lambda t: t.rank)
    return Tag(axis, out_rank, t0.heads, dhs.pop() if len(dhs) == 1 else None, t0.root,
               t0.dims if t0.rank == out_rank else (), max(t.group for t in tags))


def matmul(flow, node, tagged: dict) -> Tag:
    """A batched MatMul of two head-carrying tensors on the same head axis (QK^T, scores x V)."""
    if set(tagged) != {0, 1}:
        raise Refusal(f"MatMul '{node.name}' multiplies heads with a tensor that has none")
    a, b = tagged[0], tagged[1]
    r = a.rank
    if b.rank != r or a.axis != b.axis or a.axis >= r - 2 or a.heads != b.heads or a.rep_axis or b.rep_axis:
        raise Refusal(f"MatMul '{node.name}' mixes heads (they are not one batch axis of both operands)")
    if b.dh == r - 1:
        flow.role(b.root, "v")
        dh = r - 1
    else:
        if a.dh == r - 1 and b.dh == r - 2:
            flow.role(a.root, "q")
            flow.role(b.root, "k")
        dh = r - 2 if a.dh == r - 2 else None
    dims = a.dims[:-1] + b.dims[-1:] if a.dims and b.dims else ()
    return Tag(a.axis, r, a.heads, dh, b.root if b.dh == r - 1 else a.root, dims, max(a.group, b.group))


def unsqueeze(flow, node, tagged: dict) -> Tag:
    """New size-1 axes; one right after the heads may later repeat them (repeat_kv)."""
    t = tagged.get(0)
    if t is None or set(tagged) != {0}:
        raise Refusal(f"Unsqueeze '{node.name}' takes heads as its axes")
    axes = attr(node, "axes") if len(node.input) < 2 else flow.idx.known_value(node.input[1])
    if axes is None:
        raise Refusal(f"Unsqueeze '{node.name}' has no constant axes")
    rank = t.rank + int(np.asarray(axes).size)
    new = sorted(int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1))
    old = [i for i in range(rank) if i not in new]           # old axis j sits at old[j]
    dims = [1] * rank
    for j, i in enumerate(old):
        dims[i] = t.dims[j] if t.dims else None
    axis = old[t.axis]
    rep_axis = axis + 1 if axis + 1 in new and t.rep_axis is None else None
    return Tag(axis, rank, t.heads, None if t.dh is None else old[t.dh], t.root, tuple(dims), t.group, rep_axis)


def expand(flow, node, tagged: dict) -> Tag:
    """Broadcast to a computed shape: the head entry stays (rewritten with the kept heads), the
    axis after the heads may repeat each of them."""
    t = tagged.get(0)
    if t is None or set(tagged) != {0}:
        raise Refusal(f"Expand '{node.name}' takes heads as its shape")
    size = (flow.idx.shapes.get(node.input[1]) or (None,))[0]
    if size != t.rank:
        raise Refusal(f"Expand '{node.name}' changes the rank of the heads")
    head = entry_at(flow.idx, node.input[1], t.axis)
    if head is None or head.value not in (1, t.heads):
        raise Refusal(f"Expand '{node.name}' sets the head axis to a size onnxprune cannot follow")
    if head.value == t.heads and t.heads > 1:
        flow.count(t.root, node, head, "Expand target")
    dims = list(t.dims) if t.dims else [None] * t.rank
    rep = 1
    if t.rep_axis is not None:
        entry = entry_at(flow.idx, node.input[1], t.rep_axis)
        if entry is None or entry.value < 1:
            raise Refusal(f"Expand '{node.name}' repeats the heads by a count onnxprune cannot follow")
        rep = entry.value
        dims[t.rep_axis] = rep
    return replace(t, dims=tuple(dims), rep=rep)


def merge_repeat(flow, node, t: Tag) -> Tag:
    """[.., G, r, ..] -> [.., G*r, ..]: each K/V head repeated r times in a row (repeat_kv)."""
    entries = shape_entries(flow.idx, node.input[1])
    if entries is None or len(entries) != t.rank - 1 or t.rep_axis != t.axis + 1:
        raise Refusal(f"Reshape '{node.name}' merges repeated heads by a shape onnxprune cannot follow")
    heads = t.heads * t.rep
    entry = entries[t.axis]
    sources = list(range(t.axis)) + list(range(t.axis + 2, t.rank))
    others = [e for i, e in enumerate(entries) if i != t.axis]
    unproven = sum(not _same_dim(flow.idx, e, t, j, i) for i, (e, j) in enumerate(zip(others, sources)))
    if not (isinstance(entry, Const) and entry.value == heads and unproven <= 1) and not (
            isinstance(entry, Const) and entry.value == -1 and unproven == 0):
        raise Refusal(f"Reshape '{node.name}' does not merge the {t.heads} repeated heads into {heads}")
    if entry.value > 0:
        flow.count(t.root, node, entry, "Reshape target")
    dims = [t.dims[j] if t.dims else None for j in sources]
    dims.insert(t.axis, heads)
    return Tag(t.axis, t.rank - 1, heads, None if t.dh is None else t.dh - 1, t.root, tuple(dims),
               t.group * t.rep)


def _same_dim(idx, entry, t: Tag, j: int, i: int) -> bool:
    """Whether target entry (output index i) gives input axis j its own size."""
    d = t.dims[j] if t.dims else None
    if isinstance(entry, Const):
        return (entry.value == 0 and i == j) or (isinstance(d, int) and entry.value == d)
    if isinstance(entry, Dim):
        other = idx.model_dims.get(entry.tensor)
        return other is not None and entry.axis < len(other) and other[entry.axis] is not None and \
            other[entry.axis] == d
    return False


def along_other_axis(flow, node, tagged: dict) -> dict:
    """Slice / Split / Concat along an axis that is not the heads' (rotary halves, Dh pieces)."""
    op, t0 = node.op_type, next(iter(tagged.values()))
    if t0.rep_axis is not None:
        raise Refusal(f"{op} '{node.name}' cuts heads that are being repeated")
    if op == "Concat":
        axis = attr(node, "axis")
        if len(tagged) != len([t for t in node.input if t]) or \
                len({(t.axis, t.rank, t.heads) for t in tagged.values()}) != 1:
            raise Refusal(f"Concat '{node.name}' joins heads with a tensor that has none")
        t0 = replace(t0, group=max(t.group for t in tagged.values()))
    elif op == "Split":
        axis = attr(node, "axis", 0)
        if set(tagged) != {0}:
            raise Refusal(f"Split '{node.name}' takes heads as its sizes")
    else:
        if set(tagged) != {0}:
            raise Refusal(f"Slice '{node.name}' takes heads as a parameter")
        axes = flow.idx.known_value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if axes is None:
            raise Refusal(f"Slice '{node.name}' may cut the head axis (no constant axes)")
        axes = [int(a) + t0.rank if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1)]
        if t0.axis in axes:
            raise Refusal(f"Slice '{node.name}' cuts the head axis")
        return {node.output[0]: _unknown(t0, axes)}
    axis = axis + t0.rank if axis < 0 else axis
    if axis == t0.axis:
        raise Refusal(f"{op} '{node.name}' cuts or joins the head axis")
    return {o: _unknown(t0, [axis]) for o in node.output if o}


def _unknown(t: Tag, axes) -> Tag:
    """`t` with the sizes of `axes` no longer known."""
    if not t.dims:
        return t
    return replace(t, dims=tuple(None if i in axes else d for i, d in enumerate(t.dims)))
