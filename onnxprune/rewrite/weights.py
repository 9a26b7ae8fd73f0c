"""A consumer's weights as one (features + 1) x outputs matrix, and back.

Every consumer kind (Conv, ConvTranspose, Gemm with alpha/beta/transB, MatMul + Add) is turned into the same
form: rows are input features in channel-block order, the last row is the bias (the
intercept). Selection and least squares only ever see that matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..graph.index import GraphIndex, attr
from ..graph.groups import Consumer


@dataclass(frozen=True)
class ConsumerUpdate:
    """New values for a consumer after pruning its input channels."""

    consumer: Consumer
    weight: np.ndarray
    bias: np.ndarray | None          # None: keep whatever bias there is (unchanged)
    attrs: dict = field(default_factory=dict)


def consumer_matrix(idx: GraphIndex, c: Consumer) -> np.ndarray:
    """(features + 1, outputs) float64: effective weights, then the effective bias row."""
    w = idx.array(c.weight).astype(np.float64)
    alpha, beta = gemm_scales(idx, c)
    if c.op == "Conv":
        m = w.reshape(w.shape[0], -1).T
    elif c.op == "ConvTranspose":            # [C_in, C_out, k...]: row c*K + k is W[c, :, k]
        m = np.moveaxis(w, 1, -1).reshape(-1, w.shape[1])
    elif c.op == "Gemm":
        m = alpha * (w.T if c.trans_b else w)
    else:
        m = w
    outputs = m.shape[1]
    bias = np.zeros(outputs)
    if c.bias is not None:
        b = idx.array(c.bias).astype(np.float64)
        bias = np.broadcast_to(b.reshape(-1) if b.size == outputs else b.reshape(-1)[:1], (outputs,)).copy()
        if c.op == "Gemm":
            bias *= beta
    return np.vstack([m, bias[None, :]])


def gemm_scales(idx: GraphIndex, c: Consumer) -> tuple:
    """(alpha, beta) of a Gemm as the node in `idx` has them now: a Gemm that reads two groups
    is rewritten twice, and the first rewrite already folded them into the values (and set
    them to 1), so the analysed values would fold them a second time."""
    if c.op != "Gemm":
        return 1.0, 1.0
    node = idx.nodes[c.node]
    return float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))


def consumer_update(idx: GraphIndex, c: Consumer, matrix: np.ndarray) -> ConsumerUpdate:
    """Turn a pruned (kept features + 1, outputs) matrix back into the consumer's arrays.

    Gemm alpha/beta are folded into the stored values (and reset to 1); a consumer without a
    bias gets one only when the refitted intercept is non-zero.
    """
    w_old = idx.array(c.weight)
    rows, bias = matrix[:-1], matrix[-1]
    attrs = {}
    if c.op == "Conv":
        weight = rows.T.reshape(w_old.shape[0], -1, *w_old.shape[2:])
    elif c.op == "ConvTranspose":
        weight = np.moveaxis(rows.reshape(-1, *w_old.shape[2:], w_old.shape[1]), -1, 1)
    elif c.op == "Gemm":
        weight = rows.T if c.trans_b else rows
        attrs = {k: 1.0 for k, v in zip(("alpha", "beta"), gemm_scales(idx, c)) if v != 1.0}
    else:
        weight = rows
    new_bias = None
    if c.bias is not None:
        old = idx.array(c.bias)
        new_bias = bias.reshape(old.shape if old.size == bias.size else (bias.size,)).astype(old.dtype)
    elif np.any(bias != 0):
        new_bias = bias.astype(w_old.dtype)
    return ConsumerUpdate(c, weight.astype(w_old.dtype), new_bias, attrs)
