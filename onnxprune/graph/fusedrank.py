"""Ranks through the com.microsoft ops ONNX shape inference does not know.

ONNX inference stops at a com.microsoft op, and onnxruntime's symbolic inference can stop
earlier (GPT-2's sliced causal mask). Analysis often needs only a tensor's rank (a MatMul's
channels are its last axis), which these ops keep or fix: the normalisations and activations
the transformer optimizer fuses return their input 0's rank, the fused attention and
embedding ops a [batch, sequence, hidden] tensor. Pure graph work.
"""
from __future__ import annotations

from .index import GraphIndex

MS = "com.microsoft"

# ops whose output 0 has the rank of their input 0 (the normalisations and activations the
# onnxruntime optimizer fuses), and ops whose output 0 is [batch, sequence, hidden]
SAME_RANK = {(MS, "SkipLayerNormalization"), (MS, "SkipSimplifiedLayerNormalization"), (MS, "BiasGelu"),
             (MS, "FastGelu"), (MS, "Gelu"), (MS, "QuickGelu"), (MS, "BiasAdd"), ("", "LayerNormalization"),
             ("", "Cast"), ("", "Identity"), ("", "Relu")}
THREE_D = {"EmbedLayerNormalization", "Attention", "MultiHeadAttention", "GroupQueryAttention"}


def proven_rank(idx: GraphIndex, tensor: str, depth: int = 0):
    """A tensor's rank: from shape inference, or through the fused ops it stops at (ONNX
    shape inference does not know com.microsoft ops); None when not provable."""
    rank = idx.rank(tensor)
    node = idx.producer.get(tensor)
    if rank is not None or node is None or depth > 32 or tensor != node.output[0]:
        return rank
    if node.op_type in THREE_D and node.domain == MS:
        return 3
    if node.op_type == "MatMul" and idx.is_constant(node.input[1]) and len(idx.shapes[node.input[1]]) == 2:
        return proven_rank(idx, node.input[0], depth + 1)
    if node.op_type in ("Add", "Mul") and node.domain in ("", "ai.onnx"):     # broadcasting: the larger rank
        ranks = [proven_rank(idx, t, depth + 1) for t in node.input]
        return None if None in ranks else max(ranks)
    if (node.domain.replace("ai.onnx", ""), node.op_type) in SAME_RANK:
        return proven_rank(idx, node.input[0], depth + 1)
    return None
