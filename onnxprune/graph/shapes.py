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
        return [Dim(node.input[0], a) for a in shape_range(node, rank)]
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
    if op == "Gather" and attr(node, "axis", 0) in (0, -1):      # shape tensors are 1-D
        entries = shape_entries(idx, node.input[0], depth + 1)
        picks = idx.known_value(node.input[1])
        picks = None if entries is None or picks is None else normalised(picks, len(entries))
        return None if picks is None else [entries[i] for i in picks]
    if op == "Slice":
        entries = shape_entries(idx, node.input[0], depth + 1)
        picks = None if entries is None else sliced_positions(idx, node, len(entries))
        return None if picks is None else [entries[i] for i in picks]
    folded = idx.known_value(name)
    if folded is not None:
        return [Const(int(v)) for v in np.asarray(folded).reshape(-1)]
    return None


def shape_range(node, rank: int) -> range:
    """The input axes a Shape node reads: `start`/`end` count from the back when negative and
    are clamped to [0, rank], as ONNX specifies."""
    start, end = attr(node, "start", 0), attr(node, "end", rank)
    start, end = (min(max(s + rank if s < 0 else s, 0), rank) for s in (start, end))
    return range(start, end)


def sliced_positions(idx: GraphIndex, node, size: int):
    """The positions of a 1-D tensor of `size` that Slice `node` (opset >= 10, constant
    starts/ends/axes/steps) keeps, in output order; None when they are not constants.

    Example: Paddle's batch read Slice(Cast(Shape(x)), starts [0], ends [1], axes [0]) -> [0]."""
    if len(node.input) < 3:
        return None
    values = [idx.known_value(node.input[i]) if len(node.input) > i and node.input[i] else None
              for i in range(1, 5)]
    if values[0] is None or values[1] is None or any(v is None for v, i in zip(values[2:], (3, 4))
                                                     if len(node.input) > i and node.input[i]):
        return None
    starts, ends = (np.asarray(v).reshape(-1) for v in values[:2])
    axes = np.asarray(values[2]).reshape(-1) if values[2] is not None else np.zeros(1, dtype=np.int64)
    steps = np.asarray(values[3]).reshape(-1) if values[3] is not None else np.ones(1, dtype=np.int64)
    if not (len(starts) == len(ends) == len(axes) == len(steps) == 1) or int(axes[0]) not in (0, -1) \
            or int(steps[0]) < 1:
        return None
    return list(range(size))[slice(int(starts[0]), int(ends[0]), int(steps[0]))]


def channel_count_unused(idx: GraphIndex, tensor: str, size: int, channel, opset: int, depth: int = 0) -> bool:
    """Whether no reader of 1-D shape tensor `tensor` (`size` entries, a Shape's output) can see
    entry `channel`: every use, after any Casts, is a Gather of constant indices or a constant
    Slice that leaves it out (Paddle reads the batch as Slice(Cast(Shape(x)), [0], [1]))."""
    if tensor in idx.graph_outputs or depth > 8:
        return False
    for user, _ in idx.uses(tensor):
        if user.op_type in ("Cast", "Identity"):
            if not channel_count_unused(idx, user.output[0], size, channel, opset, depth + 1):
                return False
            continue
        if user.op_type == "Gather" and len(user.input) > 1 and attr(user, "axis", 0) in (0, -1):
            picks = idx.known_value(user.input[1])
            picks = normalised(picks, size) if picks is not None else None
        elif user.op_type == "Slice" and opset >= 10:
            picks = sliced_positions(idx, user, size)
        else:
            picks = None
        if picks is None or channel in picks:
            return False
    return True


def normalised(indices, size: int):
    """Constant Gather indices into a 1-D tensor of `size` as non-negative ints (negative ones
    count from the back); None when one is out of range."""
    out = [int(i) for i in np.asarray(indices).reshape(-1)]
    out = [i + size if i < 0 else i for i in out]
    return out if all(0 <= i < size for i in out) else None


def reshape_dims(idx: GraphIndex, data: str, entries: list):
    """Output dims of Reshape(data, entries): ints, None for the (shared) batch dimension;
    None when they cannot be worked out.

    Each entry gives one dim (`entry_dim`); a leading -1 standing for the batch becomes None
    (`batch_wildcard`); at most one dynamic dim may pass through (`one_shared_batch`); a
    remaining -1 is inferred from the element count (`infer_wildcard`).
    """
    din = idx.shapes.get(data)
    if din is None:
        return None
    out = []
    for i, entry in enumerate(entries):
        dim = entry_dim(idx, data, din, i, entry)
        if dim is UNKNOWN:
            return None
        out.append(dim)
    batch_free = _prod([d for d in din if d is not None])
    if batch_wildcard(din, out, batch_free):
        out[0] = None
    if not one_shared_batch(din, out):
        return None
    return infer_wildcard(out, batch_free)


UNKNOWN = object()


def _prod(dims) -> int:
    return int(np.prod(dims, dtype=np.int64))


def entry_dim(idx: GraphIndex, data: str, din, i: int, entry):
    """The dim entry `i` asks for: read from a shape (Dim), copied from input dim i (0), or
    the value itself (-1 stays -1); UNKNOWN when a read dim is unknown (other than the
    data's own batch dim, which stays None).

    Example: data [N, 6, 2, 2], shape Concat(Unsqueeze(Gather(Shape(data), 0)), [6], [0], [-1])
    -> entries Dim(data, 0), 6, 0, -1 -> dims None, 6, 2, -1."""
    if isinstance(entry, Dim):
        dims = din if entry.tensor == data else idx.shapes.get(entry.tensor)
        if dims is None:
            return UNKNOWN
        d = dims[entry.axis]
        if d is None and not (entry.tensor == data and entry.axis == 0):
            return UNKNOWN
        return d
    if entry.value == 0:
        return din[i]
    return entry.value


def batch_wildcard(din, out, batch_free: int) -> bool:
    """Whether a leading -1 stands for the dynamic batch: every other output dim is known
    and they hold all the non-batch input elements.

    Example: data [N, 6, 2, 2] (24 elements a sample), target [-1, 24] -> yes ([N, 24]);
    target [-1, 6] -> no (the -1 would mix the batch with the spatial dims)."""
    return din[0] is None and bool(out) and out[0] == -1 and None not in out and _prod(out[1:]) == batch_free


def one_shared_batch(din, out) -> bool:
    """Whether input and output have the same number of dynamic dims, at most one.

    Example: [N, 6, 2, 2] -> [N, 24]: yes; [N, T, 8] -> [N, T, 2, 4] (T dynamic): no."""
    unknown = sum(d is None for d in din)
    return unknown == sum(d is None for d in out) and unknown <= 1


def infer_wildcard(out, batch_free: int) -> list:
    """`out` with its first -1 replaced by what the known dims leave of the sample's elements.

    Example: data [N, 6, 2, 2], out [None, 6, -1] -> [None, 6, 4]."""
    if -1 in out:
        rest = _prod([d for d in out if d not in (None, -1)])
        out[out.index(-1)] = batch_free // rest
    return out
