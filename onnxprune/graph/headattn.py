"""ai.onnx Attention (opset 23) on 4-D Q, K, V [batch, heads, sequence, head_dim] as one op of
the head flow (headflow.py / headops.py).

The op computes softmax(Q K^T * scale + mask) V head by head; with fewer K/V heads than query
heads, query head j reads K/V head j // (query heads / K/V heads). Its head counts come from
the inputs' shapes (q_num_heads / kv_num_heads are only read for 3-D inputs), so once the
Reshapes that split the projections into heads are rewritten, nothing in the node needs a new
count. What keeps head h of the output a function of head h's Q, K, V (else Refusal):

- Q, K, V all carry heads on axis 1 with their features on axis 3 (the Reshape + Transpose
  of the projections the exporters write); K and V have the same heads, Q a multiple of them;
- the mask (input 3), when present, carries no heads and has size 1 on the head axis;
- no KV cache (past_key / past_value), no non-padded KV length, and the extra outputs
  (present_key / present_value / qk_matmul_output, all per head) are unused;
- q_num_heads / kv_num_heads are unset (they would be stale after pruning).
"""
from __future__ import annotations

from dataclasses import replace

from .headdims import size_one_at
from .index import attr
from .roles import Refusal

EXTRA_INPUTS = {4: "a KV cache (past_key)", 5: "a KV cache (past_value)", 6: "a non-padded KV length"}
EXTRA_OUTPUTS = {1: "present_key", 2: "present_value", 3: "qk_matmul_output"}


def attention_4d(flow, node, tagged: dict):
    """The output Tag (headops.Tag) of a 4-D ai.onnx Attention reading heads on Q, K and V:
    Q's, with V's head features and the K/V grouping."""
    name = f"Attention '{node.name}'"
    if not {0, 1, 2} <= set(tagged) or set(tagged) - {0, 1, 2}:
        raise Refusal(f"heads enter {name} other than as its Q, K and V")
    q, k, v = tagged[0], tagged[1], tagged[2]
    for role, t in zip("qkv", (q, k, v)):
        if (t.rank, t.axis, t.dh) != (4, 1, 3) or t.rep_axis is not None:
            raise Refusal(f"{name} reads its {role.upper()} with heads not laid out [batch, heads, sequence, "
                          "head_dim]")
    for i, what in EXTRA_INPUTS.items():
        if len(node.input) > i and node.input[i]:
            raise Refusal(f"{name} reads {what}")
    for i, what in EXTRA_OUTPUTS.items():
        out = node.output[i] if len(node.output) > i else ""
        if out and (flow.idx.uses(out) or out in flow.idx.graph_outputs):
            raise Refusal(f"{name}'s output {what} is read (it holds every head)")
    if attr(node, "q_num_heads") or attr(node, "kv_num_heads"):
        raise Refusal(f"{name} sets q_num_heads / kv_num_heads on 4-D inputs")
    if len(node.input) > 3 and node.input[3]:
        mask = node.input[3]
        rank = flow.idx.rank(mask)
        if rank is None or (rank >= 3 and not size_one_at(flow.idx, mask, 3)):
            raise Refusal(f"{name}'s mask '{mask}' may hold one slice per head")
    if k.heads != v.heads or q.heads % k.heads:
        raise Refusal(f"{name}: {q.heads} query heads do not split over {k.heads} K and {v.heads} V heads")
    ratio = q.heads // k.heads
    flow.role(q.root, "q")
    flow.role(k.root, "k")
    flow.role(v.root, "v")
    dims = q.dims[:3] + v.dims[3:] if q.dims and v.dims else ()
    return replace(q, root=v.root, dims=dims, group=max(q.group, ratio * k.group, ratio * v.group))
