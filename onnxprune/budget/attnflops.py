"""Multiply-accumulates of the fused attention ops for one sample (flops.py counts the rest).

An attention op computes, per query head, scores = Q K^T ([S, Dh] x [Dh, T]) and the output
scores x V ([S, T] x [T, Dv]): S*T*(Dh + Dv) MACs per query head, so all heads together
S*T*(Hq*Dh + Hq*Dv) whatever the K/V grouping (a K/V head is read by each of its query heads).
S is the query length, T the key length (past + new tokens with a KV cache). Causal ops are
counted in full (the kernels compute the masked scores too). com.microsoft Attention also
projects its input with its packed [in, Wq+Wk+Wv] weight (`projection_macs`).

Each function returns None when a dim it needs is unknown or the input form is one it does not
count (packed QKV / KV layouts of MultiHeadAttention): the model's FLOPs are then unknown, and
`--target flops` is refused rather than counted wrong.
"""
from __future__ import annotations

import math

from ..graph.index import GraphIndex, attr

MS = "com.microsoft"


def is_attention(node) -> bool:
    """Whether `node` is an attention op whose QK^T and AV products this module counts."""
    key = (node.domain or "", node.op_type)
    return key in {(MS, "Attention"), (MS, "MultiHeadAttention"), (MS, "GroupQueryAttention"),
                   ("", "Attention"), ("ai.onnx", "Attention")}


def attention_macs(idx: GraphIndex, node) -> int | None:
    """MACs of QK^T and AV of one attention node for one sample."""
    if node.domain == MS:
        return {"Attention": _ms_attention, "MultiHeadAttention": _ms_mha,
                "GroupQueryAttention": _ms_gqa}[node.op_type](idx, node)
    return _onnx_attention(idx, node)


def projection_macs(idx: GraphIndex, node) -> int | None:
    """com.microsoft Attention's input projection: S x (weight elements); 0 for the other ops."""
    if node.domain != MS or node.op_type != "Attention":
        return 0
    x, w = _dims(idx, node, 0), _dims(idx, node, 1)
    return None if x is None or w is None else x[1] * math.prod(w)


def _dims(idx: GraphIndex, node, i: int):
    return idx.dims(node.input[i], batch=1) if len(node.input) > i and node.input[i] else None


def _past_length(idx: GraphIndex, node, i: int, axis: int) -> int | None:
    """Length of the KV cache at input i (0 when absent)."""
    if len(node.input) <= i or not node.input[i]:
        return 0
    past = _dims(idx, node, i)
    return None if past is None else past[axis]


def _ms_attention(idx, node):
    x, w = _dims(idx, node, 0), _dims(idx, node, 1)
    past = _past_length(idx, node, 4, 3)         # past [2, batch, heads, past, head_size]
    if x is None or w is None or past is None:
        return None
    sizes = list(attr(node, "qkv_hidden_sizes") or [w[1] // 3] * 3)
    s = x[1]
    return s * (s + past) * (sizes[0] + sizes[2])


def _ms_mha(idx, node):
    q, k, v = (_dims(idx, node, i) for i in range(3))
    past = _past_length(idx, node, 6, 2)         # past_key [batch, heads, past, head_size]
    if q is None or k is None or v is None or past is None or len(q) != 3:
        return None                              # packed QKV / KV forms are not counted
    if len(k) == 3 and len(v) == 3:
        t, vw = k[1], v[2]
    elif len(k) == 4 and len(v) == 4:            # [batch, heads, kv length, head_size]: cross attention
        t, vw = k[2], v[1] * v[3]
    else:
        return None
    return q[1] * (t + past) * (q[2] + vw)


def _ms_gqa(idx, node):
    q = _dims(idx, node, 0)
    heads, kv = attr(node, "num_heads"), attr(node, "kv_num_heads")
    past = _past_length(idx, node, 3, 2)         # past_key [batch, kv heads, past, head_size]
    if q is None or past is None or len(q) != 3 or not heads or not kv:
        return None
    packed = len(node.input) < 2 or not node.input[1]
    dh = q[2] // (heads + 2 * kv) if packed else q[2] // heads
    # GroupQueryAttention attends over past + new tokens (its present buffer)
    return q[1] * (q[1] + past) * 2 * heads * dh


def _onnx_attention(idx, node):
    q, k, v = (_dims(idx, node, i) for i in range(3))
    past = _past_length(idx, node, 4, 2)         # past_key [batch, kv heads, past, head_size]
    if q is None or k is None or v is None or past is None:
        return None
    if len(q) == 4:                              # [batch, heads, sequence, head_size]
        hq, s, dh, t, dv = q[1], q[2], q[3], k[2], v[3]
    else:
        hq, hv = attr(node, "q_num_heads"), attr(node, "kv_num_heads")
        if not hq or not hv:
            return None
        s, dh, t, dv = q[1], q[2] // hq, k[1], v[2] // hv
    return s * (t + past) * hq * (dh + dv)
