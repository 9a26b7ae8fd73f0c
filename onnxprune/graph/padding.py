"""Pad on the channel axis: zeros become *zero sources* that coupled channels can remove.

An option-A ResNet shortcut pads the previous stage with zero channels before and after, and
adds the result to the stage's conv output. The padded positions hold zeros: removing one of
them together with the channel it is added to changes nothing else, so each run of padded
zeros is a source of its own (no producer, no parameters) that couples like any other; the
Pad's amounts on the channel axis become an AttrSite (kind 'pad'). Zeros coupled with no
real channel are never removed. A Pad of any other value, or in another mode, stays opaque.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .groups import AttrSite
from .index import attr
from .layout import Layout, Segment, opaque
from .roles import Effect, Refusal

# Zero sources are off for now, so padded zeros stay opaque and the streams they join stay
# whole, as before: measured on ResNet-56 (option-A shortcuts, greedy asym, 8x, uniform
# allocation), pruning the streams lowered top-1 from 0.2935 to 0.2573 and more than doubled
# capture time (a stream group has up to 28 consumers), because the uniform budget takes the
# same share from the streams as from the block-internal convs. The mechanism is tested with
# it switched on (tests/test_graphs_part2.py) until the budget handles stream groups.
ZERO_SOURCES = False


def pad_effect(idx, node, layout: Layout, opset: int) -> Effect:
    mode = attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads_name = None
    if opset < 11:
        pads = attr(node, "pads")
    else:
        pads_name = node.input[1]
        pads = _ints(idx, node, pads_name)
    rank = layout.rank
    if opset >= 18 and len(node.input) > 3 and node.input[3]:
        axes = [a + rank if a < 0 else a for a in _ints(idx, node, node.input[3])]
    else:
        axes = list(range(rank))
    n = len(axes)
    before = dict(zip(axes, pads[:n]))
    after = dict(zip(axes, pads[n:]))
    p0, p1 = before.get(layout.axis, 0), after.get(layout.axis, 0)
    if p0 == 0 and p1 == 0:
        return Effect(outputs={node.output[0]: layout})
    if mode != "constant" or p0 < 0 or p1 < 0 or layout.block != 1:
        raise Refusal(f"Pad '{node.name}' pads the channel axis in a way onnxprune cannot follow")
    zero = _zero_value(idx, node, opset)
    if zero and not ZERO_SOURCES:
        raise Refusal(f"Pad '{node.name}' pads the channel axis with zeros (an option-A shortcut); zero-padded "
                      "streams are not pruned yet")
    if not zero:
        segments = ((opaque(p0),) if p0 else ()) + layout.segments + ((opaque(p1),) if p1 else ())
        return Effect(outputs={node.output[0]: replace(layout, segments=segments)})
    zeros, sides = {}, []
    for side, size in (("before", p0), ("after", p1)):
        zid = f"{node.name}#zeros_{side}"
        segs = (Segment(zid, 0, size),) if size else ()
        if size:
            zeros[zid] = size
        sides.append(Layout(layout.axis, rank, segs))
    segments = sides[0].segments + layout.segments + sides[1].segments
    site = AttrSite(node.name, "pad", tuple(sides), name=pads_name, index=axes.index(layout.axis), factor=n,
                    values=tuple(int(p) for p in pads))
    return Effect(outputs={node.output[0]: replace(layout, segments=segments)}, sites=[site], zeros=zeros)


def _ints(idx, node, name: str) -> list:
    value = idx.known_value(name)
    if value is None:
        raise Refusal(f"{node.op_type} node '{node.name}' takes '{name}' from a computation, not a constant")
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _zero_value(idx, node, opset: int) -> bool:
    if opset < 11:
        return float(attr(node, "value", 0.0)) == 0.0
    if len(node.input) < 3 or not node.input[2]:
        return True
    value = idx.known_value(node.input[2])
    return value is not None and np.asarray(value).size == 1 and float(np.asarray(value).reshape(-1)[0]) == 0.0
