"""Layers that end a residual branch: their output goes straight into an Add with the skip path.

Refitting such a layer to its own original output leaves the skip path's drift (everything
pruned or refitted upstream moved it) in the block's output. Refitted instead to the original
sum minus the current skip, `y ≈ y_orig + s_orig - s_cur`, the layer cancels that drift too,
so the residual stream is brought back to the original network's block by block. This module
only finds the skip operand; capture/ measures its drift and the refit uses it.
"""
from __future__ import annotations

from .groups import Consumer
from .index import GraphIndex, unknown_dim


def skip_partner(idx: GraphIndex, c: Consumer) -> str | None:
    """The Add operand beside `c`'s output when `c` ends a residual branch, else None.

    Only when the output (after a MatMul's bias Add) has that Add as its one reader and is
    not a model output, and the other operand is computed (not a constant) with exactly the
    same dims, symbolic names included: then its rows line up with the layer's output rows.
    """
    last = idx.nodes.get(c.bias_node or c.node)
    if last is None or not last.output or (c.bias_node and last.op_type != "Add"):
        return None     # a fused Skip*LayerNormalization adds the skip inside: no Add to target
    y = last.output[0]
    readers = idx.uses(y)
    if y in idx.graph_outputs or len(readers) != 1:
        return None
    add, _ = readers[0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None
    skip = add.input[1] if add.input[0] == y else add.input[0]
    if skip == y or not skip or idx.is_constant(skip):
        return None
    return skip if _same_dims(idx, y, skip) else None


def _same_dims(idx: GraphIndex, a: str, b: str) -> bool:
    da, db = idx.model_dims.get(a), idx.model_dims.get(b)
    if da is None or db is None or len(da) != len(db):
        return False
    return all(not unknown_dim(x) and x == y for x, y in zip(da, db))
