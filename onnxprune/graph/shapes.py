"""Symbolic evaluation of the small integer subgraphs exporters build Reshape targets from.

PyTorch writes `x.reshape(x.shape[0], -1)` as Shape -> Gather -> Unsqueeze -> Concat(..., [-1]).
Each entry of such a shape tensor is either a constant (with the initializer it lives in, so
it can be rewritten) or a dimension read from some tensor. Unknown constructions give None:
the caller refuses rather than guesses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .index import GraphIndex, attr


@dataclass(frozen=True)
class Const:
    value: int
    initializer: str | None = None    # where the value is stored (None: computed/folded)
    index: int = 0


@dataclass(frozen=True)
class Dim:
    tensor: str
    axis: int


def shape_entries(idx: GraphIndex, name: str, depth: int = 0):
    """Entries of 1-D integer tensor `name`, or None when it cannot be followed."""
    if depth > 16:
        return None
    if name in idx.initializers:
        values = np.asarray(idx.array(name)).reshape(-1)
        return [Const(int(v), name, i) for i, v in enumerate(values)]
    node = idx.producer.get(name)
    if node is None:
        return None
    op = node.op_type
    if op == "Shape":
        rank = idx.rank(node.input[0])
        if rank is None:
            return None
        start, end = attr(node, "start", 0), attr(node, "end", rank)
        start, end = (s + rank if s < 0 else s for s in (start, end))
        return [Dim(node.input[0], a) for a in range(start, min(end, rank))]
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        return shape_entries(idx, node.input[0], depth + 1)
    if op == "Concat":
        out = []
        for part in node.input:
            entries = shape_entries(idx, part, depth + 1)
            if entries is None:
                return None
            out.extend(entries)
        return out
    if op == "Gather" and attr(node, "axis", 0) == 0:
        entries = shape_entries(idx, node.input[0], depth + 1)
        picks = idx.known_value(node.input[1])
        if entries is None or picks is None:
            return None
        return [entries[int(i)] for i in np.asarray(picks).reshape(-1)]
    folded = idx.known_value(name)
    if folded is not None:
        return [Const(int(v)) for v in np.asarray(folded).reshape(-1)]
    return None


def reshape_dims(idx: GraphIndex, data: str, entries: list):
    """Output dims of Reshape(data, entries): ints, None for the (shared) batch dimension."""
    din = idx.shapes.get(data)
    if din is None:
        return None
    out = []
    for i, e in enumerate(entries):
        if isinstance(e, Dim):
            dims = din if e.tensor == data else idx.shapes.get(e.tensor)
            if dims is None:
                return None
            d = dims[e.axis]
            if d is None and not (e.tensor == data and e.axis == 0):
                return None
            out.append(d)
        elif e.value == 0:
            out.append(din[i])
        else:
            out.append(e.value)
    known_in = [d for d in din if d is not None]
    batch_free = int(np.prod(known_in, dtype=np.int64))
    if din[0] is None and out and out[0] == -1 and None not in out \
            and int(np.prod(out[1:], dtype=np.int64)) == batch_free:
        out[0] = None                       # the -1 is the batch dimension
    if sum(d is None for d in din) != sum(d is None for d in out) or sum(d is None for d in din) > 1:
        return None
    if -1 in out:
        rest = int(np.prod([d for d in out if d not in (None, -1)], dtype=np.int64))
        out[out.index(-1)] = batch_free // rest
    return out
