"""Coreset points of attention heads (coreset.py's `point_norms` for a head group).

A head group's unit (a head, or a K/V group with its query heads) owns a block of columns in
each of its Q, K and V projections, and with a packed projection (one [in, 3*H*Dh] weight, or
a fused op's packed Q/K/V bias) those blocks lie in three separate segments of one tensor.
Reading the weight as `channels` consecutive row blocks (what a plain channel's point is)
would give unit u the columns [u*3*Dh, (u+1)*3*Dh) - other heads' Q/K/V mixed. Here each
unit's columns come from the group's parameter sites, segment by segment, and the unit's
point norm is the sum over its Q, K, V pieces of ||[W piece, b piece]|| (coreset.py's rule
for coupled producers: |w1.x1 + w2.x2| <= (||w1|| + ||w2||) beta). No activation or affine
op sits between a projection and the heads' product, so phi is the identity.
"""
from __future__ import annotations

import numpy as np

from ..graph.groups import Group
from ..graph.index import GraphIndex
from ..graph.layout import Alive, element_indices


def head_point_norms(idx: GraphIndex, group: Group, alive: Alive) -> np.ndarray:
    """Per unit: the sum over its Q, K, V pieces of the norm of the piece's weight columns and
    bias entries (pieces keyed by projection and segment, so a weight and its bias pair up)."""
    sources = set(group.sources)
    squares = {}        # (projection, segment ordinal) -> per-unit sum of squares
    for site in group.sites:
        array = np.moveaxis(idx.array(site.name).astype(np.float64), site.axis, 0)
        index = alive.current_index(site.layout)
        total = alive.current_positions(site.layout)
        start, seen = 0, {}
        for seg in site.layout.segments:
            if seg.source in sources:
                ordinal = seen.setdefault(seg.source, 0)
                seen[seg.source] += 1
                acc = squares.setdefault((seg.source, ordinal), np.zeros(group.channels))
                for j in range(seg.size):
                    current = index[start + j]
                    if current >= 0:
                        cols = element_indices([current], site.layout, total)
                        acc[seg.lo + j] += float(np.sum(array[cols] ** 2))
            start += seg.size
    return sum((np.sqrt(s) for s in squares.values()), np.zeros(group.channels))
