"""How a Reshape (or a Flatten) moves a channel layout: one named case per kind of shape change.

`reshape_effect` first works out the input and output dims (shapes.reshape_dims), then finds
the output layout with the first layout case that applies (`reshaped_layout`), then checks the
shape entry that sets the channel axis's width (`channel_width_sites`). Anything else is
refused with a reason. In the examples N is the dynamic batch, `C` a layout with `block`
elements per channel position.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .groups import AttrSite
from .index import GraphIndex, attr
from .layout import Layout
from .roles import Effect, Refusal
from .shapes import Const, Dim, reshape_dims, shape_entries


def reshape_effect(idx: GraphIndex, node, layout: Layout) -> Effect:
    """The Effect of Reshape `node` on channels laid out as `layout` on its data input."""
    din = idx.dims(node.input[0])
    entries = shape_entries(idx, node.input[1])
    dout = reshape_dims(idx, node.input[0], entries) if entries is not None else None
    if dout is None:
        refuse_head_split(node, layout, din, entries)
    require_followable(node, din, dout)
    new = reshaped_layout(layout, din, dout)
    if new is None:
        raise Refusal(f"Reshape '{node.name}' splits or scatters the channel axis")
    effect = Effect(outputs={node.output[0]: new})
    effect.sites.extend(channel_width_sites(node, layout, new, entries[new.axis], dout))
    return effect


def flatten_effect(idx: GraphIndex, node, layout: Layout) -> Effect:
    """The Effect of Flatten `node`: its dims from `axis` on merge into the columns.

    Example: Conv output [N, 6, 2, 2], Flatten(axis=1) -> [N, 24], C on axis 1, block 4."""
    dims = idx.dims(node.input[0])
    axis = attr(node, "axis", 1)
    axis = axis + layout.rank if axis < 0 else axis
    return Effect(outputs={node.output[0]: _merge_into_columns(node, layout, dims, axis, layout.rank,
                                                              out_axis=1, out_rank=2)})


def _merge_into_columns(node, layout: Layout, dims, first: int, last: int, out_axis: int, out_rank: int):
    """Layout after dims [first, last) (holding the channel axis) merge into one axis."""
    if layout.axis < first or layout.axis >= last:
        raise Refusal(f"{node.op_type} '{node.name}' folds the channel axis into the rows")
    if layout.block != 1:
        raise Refusal(f"{node.op_type} '{node.name}' flattens channels that are already flattened")
    if dims is None or any(d is None for d in dims[first:last]):
        raise Refusal(f"{node.op_type} '{node.name}' has an input of unknown shape")
    before = int(np.prod(dims[first:layout.axis], dtype=np.int64))
    after = int(np.prod(dims[layout.axis + 1:last], dtype=np.int64))
    if before == 1:
        return Layout(out_axis, out_rank, layout.segments, block=after)
    if after == 1:
        return Layout(out_axis, out_rank, layout.segments, block=before, interleaved=True)
    raise Refusal(f"{node.op_type} '{node.name}' interleaves the channels with axes on both sides")


# -- refusals before any layout is computed ---------------------------------------------------

def refuse_head_split(node, layout: Layout, din, entries) -> None:
    """Refuse a split of the last (channel) axis into attention heads, when the output dims
    are unknown (dynamic sequence length).

    Example: MatMul output [N, T, 8] (T dynamic), channels on axis 2, Reshape to [0, 0, 2, 4]
    -> refused: "splits the channel axis into 2 heads of 4". (Attention heads are found and
    pruned as whole blocks by graph/headflow.py, which then gives its own reason.)
    """
    if entries is None or din is None or layout.axis != len(din) - 1 or din[-1] is None or len(entries) < 2:
        return
    heads, width = entries[-2:]
    if isinstance(heads, Const) and isinstance(width, Const) and heads.value * width.value == din[-1]:
        raise Refusal(f"Reshape '{node.name}' splits the channel axis into {heads.value} heads of "
                      f"{width.value}")


def require_followable(node, din, dout) -> None:
    """Refuse unless input and output dims are all known, except one shared dynamic batch dim.

    Example: [N, 4, 8] (channels on axis 2), Reshape to [-1, 8] -> refused: the batch is
    merged with the 4 tokens ("shapes onnxprune cannot follow (dynamic or batch-mixing)").
    """
    if din is None or dout is None or any(d is None for d in din[1:]) or any(d is None for d in dout[1:]) \
            or (din[0] is None) != (dout[0] is None) or (din[0] is not None and din[0] != dout[0]):
        raise Refusal(f"Reshape '{node.name}' has shapes onnxprune cannot follow (dynamic or batch-mixing)")


# -- layout cases -------------------------------------------------------------------------------

def reshaped_layout(layout: Layout, din, dout):
    """The layout after a Reshape from dims `din` to `dout`, or None when it is scattered.

    Output axis b is the first whose preceding dims hold as many elements as the dims before
    the channel axis; the cases are tried in order: kept whole, merged into a flattened
    NCHW block, un-flattened, then NHWC interleaved flatten (which needs no such b)."""
    b = _matching_axis(layout.axis, din, dout)
    if b is not None:
        for case in (channel_axis_kept, merged_into_block, unflattened):
            new = case(layout, din, dout, b)
            if new is not None:
                return new
    return nhwc_interleaved(layout, din, dout)


def _matching_axis(a: int, din, dout):
    prefix = _prod(din[1:a])
    return next((b for b in range(1, len(dout)) if _prod(dout[1:b]) == prefix), None)


def _prod(dims) -> int:
    return int(np.prod(dims, dtype=np.int64))


def channel_axis_kept(layout: Layout, din, dout, b: int):
    """The channel axis survives whole (same width, same elements after it) as output axis b.

    Example: Conv output [N, 8, 4, 4], C on axis 1, Reshape to [0, -1, 2, 8] -> [N, 8, 2, 8],
    C on axis 1 (block and interleaving unchanged)."""
    a = layout.axis
    if dout[b] == din[a] and _prod(dout[b + 1:]) == _prod(din[a + 1:]):
        return replace(layout, axis=b, rank=len(dout))
    return None


def merged_into_block(layout: Layout, din, dout, b: int):
    """The channel axis is merged with the dims after it (an NCHW flatten): each channel
    owns a contiguous block of output elements.

    Example: Conv output [N, 6, 2, 2], C on axis 1, Reshape to [0, -1] -> [N, 24], C on axis 1
    with block 4 (channel c owns elements 4c .. 4c+3)."""
    a = layout.axis
    if layout.block == 1 and not layout.interleaved and dout[b] % din[a] == 0 \
            and dout[b] * _prod(dout[b + 1:]) == din[a] * _prod(din[a + 1:]):
        return Layout(b, len(dout), layout.segments, block=dout[b] // din[a])
    return None


def unflattened(layout: Layout, din, dout, b: int):
    """A flattened block layout is split back into one axis of channel positions.

    Example: [N, 24] with C of 6 positions in blocks of 4 (after an NCHW flatten), Reshape to
    [0, 6, 2, 2] -> [N, 6, 2, 2], C on axis 1 with block 1."""
    a = layout.axis
    if layout.block > 1 and not layout.interleaved and dout[b] == layout.positions \
            and dout[b] * _prod(dout[b + 1:]) == din[a] * _prod(din[a + 1:]):
        return Layout(b, len(dout), layout.segments)
    return None


def nhwc_interleaved(layout: Layout, din, dout):
    """The channel axis is the last of several merged dims (an NHWC flatten): channel c owns
    every positions-th element, starting at c.

    Example: Conv output transposed to [N, 2, 2, 6], C on axis 3, Reshape to [0, -1] ->
    [N, 24], C on axis 1, block 4, interleaved (channel c owns elements c, c+6, c+12, c+18)."""
    if layout.block != 1:
        return None
    a = layout.axis
    for start in range(1, a):
        merged = _prod(din[start:a + 1])
        rest_in = _prod(din[a + 1:])
        pre = _prod(din[1:start])
        for b in range(1, len(dout)):
            if _prod(dout[1:b]) == pre and dout[b] == merged and _prod(dout[b + 1:]) == rest_in and rest_in == 1:
                return Layout(b, len(dout), layout.segments, block=merged // din[a], interleaved=True)
    return None


# -- the entry that sets the channel axis's width ------------------------------------------------

def channel_width_sites(node, layout: Layout, new: Layout, entry, dout) -> list:
    """Sites for the shape entry giving output axis `new.axis` (the channels) its width.

    -1 (inferred) and 0 on the unchanged axis follow the pruned input by themselves; the
    other kinds are handled by `width_from_shape`, `width_copied` and `width_written`."""
    if isinstance(entry, Dim):
        return width_from_shape(node, layout, new, entry)
    if entry.value == 0:
        return width_copied(node, layout, new)
    if entry.value > 0:
        return width_written(node, new, entry, dout)
    return []


def width_from_shape(node, layout: Layout, new: Layout, entry: Dim) -> list:
    """The width is read from a tensor's shape (Shape -> Gather -> Concat): fine only when it
    is the channel axis of the Reshape's own input, with the channels kept whole (and then
    the Shape rule has already refused reading the channel count, so in practice only the
    refusal is reached).

    Example: h = Conv output [N, 6, 2, 2], x = model input [N, 6, 2, 2],
    Reshape(h, Concat(Shape(h)[0], Shape(x)[1], [-1])) -> [N, 6, 4], C on axis 1, width
    read from x: refused, "sets its channel axis from another dimension"."""
    if not (entry.tensor == node.input[0] and entry.axis == layout.axis and new.block == layout.block):
        raise Refusal(f"Reshape '{node.name}' sets its channel axis from another dimension")
    return []


def width_copied(node, layout: Layout, new: Layout) -> list:
    """A 0 entry copies the input dim at the same index: fine when that is the channel axis.

    Example: Conv output [N, 8, 4, 4], Reshape to [0, 0, -1] -> [N, 8, 16], C on axis 1.
    When the channels land on another axis whose 0 copies some other input dim, e.g.
    [N, 4, 8, 8] (C on axis 2) to [0, 2, 2, 0, -1], it is refused: "copies a dimension across
    the channel axis"."""
    if new.axis != layout.axis:
        raise Refusal(f"Reshape '{node.name}' copies a dimension across the channel axis")
    return []


def width_written(node, new: Layout, entry, dout) -> list:
    """An explicit width in an initializer is rewritten to the kept channels x the block.

    Example: Conv output [N, 5, 4, 4], Reshape to [0, 80] -> [N, 80], C block 16: pruning to
    3 channels rewrites 80 to 48. A width from a computed constant (a Constant node, folded
    arithmetic) cannot be rewritten and is refused."""
    if entry.initializer is None:
        raise Refusal(f"Reshape '{node.name}' takes its channel width from a computed constant")
    return [AttrSite(node.name, "reshape", (new,), name=entry.initializer, index=entry.index,
                     factor=dout[new.axis] // new.positions)]
