"""Data-free channel sensitivities of Mussay et al., "Data-Independent Structured Pruning of
Neural Networks via Coresets":

    s(p) = max_i |W_{l+1}[i, p]| * |phi(beta * ||point_p||)|

point_p is channel p's producer row [W_l[p, :], b_l[p]] (a Conv filter flattened, plus its
bias) after the per-channel affine ops between producer and consumer (BatchNormalization,
Mul/Div/Add/Sub by constants), so an unfolded BN counts as it acts. phi is the group's first
activation (identity if none; for ReLU-like activations beta cancels out). |W_{l+1}[i, p]|
is the l1 norm of channel p's rows feeding output i (a Conv kernel, a Flatten block),
maximised over every output of every consumer.

Coupled groups (several producers whose channels are added or multiplied) sum the norms of
their points: |w1.x1 + w2.x2| <= (||w1|| + ||w2||) beta, the same bound for every member.
Weights are read from the current model, so with groups pruned first to last each layer sees
the already-compressed (and importance-weighted) previous one, as in the paper. A head's point
is its own Q, K and V columns, also where they are packed in one weight (coreset_heads.py).
"""
from __future__ import annotations

import math

import numpy as np

from ..graph.index import GraphIndex, attr
from ..graph.groups import Group
from ..graph.layout import Alive
from ..graph.roles import matmul_bias
from . import importance
from .base import Method, SelectContext, Selection
from .coreset_heads import head_point_norms


class Coreset(Method):
    """Data-free: scores from the current weights; without data an unset --reweight is off."""
    name = "coreset"
    data_free = True

    def select(self, k: int, ctx: SelectContext) -> Selection:
        s = sensitivities(ctx.idx, ctx.group, ctx.alive, ctx.weight_rows(), ctx.coreset_beta)
        kept, scales = importance.draw(s, k, ctx.rng, ctx.draw)
        return Selection(kept, scales=scales)


def sensitivities(idx: GraphIndex, group: Group, alive: Alive, consumer_rows: list, beta: float) -> np.ndarray:
    """s(p) for every channel of `group`; `consumer_rows` holds each consumer's weight rows of
    the group's channels, channel by channel (channels x block rows, outputs columns)."""
    outgoing = np.zeros(group.channels)
    for rows in consumer_rows:
        r = np.abs(np.asarray(rows, dtype=np.float64)).reshape(group.channels, -1, rows.shape[-1])
        outgoing = np.maximum(outgoing, r.sum(axis=1).max(axis=1))
    if group.unit == "head":                 # Q, K, V columns of each head (coreset_heads.py)
        return outgoing * beta * head_point_norms(idx, group, alive)
    phi = activation(idx, group)
    return outgoing * phi(beta * point_norms(idx, group, alive))


def point_norms(idx: GraphIndex, group: Group, alive: Alive) -> np.ndarray:
    """sum over producers of ||scale_p [W[p, :], b[p]] + [0, shift_p]|| per channel p."""
    scale, shift = channel_affine(idx, group, alive)
    total = np.zeros(group.channels)
    for p in group.producers:
        node = idx.nodes[p.node]
        w = np.moveaxis(idx.array(p.weight).astype(np.float64), p.weight_axis, 0).reshape(group.channels, -1)
        b = _producer_bias(idx, p, node, group.channels)
        if p.op == "Gemm":
            w, b = w * attr(node, "alpha", 1.0), b * attr(node, "beta", 1.0)
        w, b = w * scale[:, None], b * scale + shift
        total += np.sqrt(np.sum(w * w, axis=1) + b * b)
    return total


def _producer_bias(idx: GraphIndex, p, node, channels: int) -> np.ndarray:
    name = p.bias
    # a bias onnxprune added when it refitted this node earlier (p comes from the original graph)
    if name is None and p.op in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
        name = node.input[2]
    elif name is None and p.op == "MatMul":
        name, _ = matmul_bias(idx, node)
    if name is None:
        return np.zeros(channels)
    b = idx.array(name).astype(np.float64).reshape(-1)
    return np.broadcast_to(b if b.size == channels else b[:1], (channels,)).copy()


def channel_affine(idx: GraphIndex, group: Group, alive: Alive) -> tuple:
    """(scale, shift) per channel of the affine pass-through ops, composed in graph order.

    Exact for affine ops before the activation (and positive scales after a ReLU); other
    pass-through ops are ignored. Ops mixing two branches (coupled groups) are skipped.
    """
    scale, shift = np.ones(group.channels), np.zeros(group.channels)
    sites = {s.name: s for s in group.sites}
    for name in group.passthrough:
        node = idx.nodes.get(name)
        if node is None:
            continue
        if node.op_type == "BatchNormalization":
            g, beta, mean, var = (_per_channel(idx, group, alive, sites, n) for n in node.input[1:5])
            if any(v is None for v in (g, beta, mean, var)):
                continue
            s = g / np.sqrt(var + attr(node, "epsilon", 1e-5))
            scale, shift = scale * s, shift * s + beta - mean * s
        elif node.op_type in ("Mul", "Div", "Add", "Sub"):
            const = [i for i in node.input if idx.is_constant(i)]
            if len(const) != 1:
                continue
            v = _per_channel(idx, group, alive, sites, const[0])
            if v is None:
                continue
            if node.op_type == "Mul":
                scale, shift = scale * v, shift * v
            elif node.op_type == "Div":
                scale, shift = scale / v, shift / v
            elif node.op_type == "Add":
                shift = shift + v
            elif node.input[0] == const[0]:            # c - x
                scale, shift = -scale, v - shift
            else:
                shift = shift - v
    return scale, shift


def _per_channel(idx, group, alive, sites, name):
    """A constant's value for each channel: a scalar broadcast, a site's entries, or None."""
    if not idx.is_constant(name):
        return None
    a = idx.array(name).astype(np.float64)
    if a.size == 1:
        return np.full(group.channels, float(a.reshape(-1)[0]))
    site = sites.get(name)
    if site is None or site.layout.block != 1:
        return None
    positions = alive.channel_positions(site.layout, set(group.sources), group.channels)
    if any(not p for p in positions):
        return None
    values = np.take(a, [p[0] for p in positions], axis=site.axis)
    return values.reshape(-1) if values.size == group.channels else None


def activation(idx: GraphIndex, group: Group):
    """|phi| bound on [-r, r] of the group's first activation: max(|phi(r)|, |phi(-r)|)."""
    for name in group.passthrough:
        node = idx.nodes.get(name)
        fn = _activation_fn(idx, node) if node is not None else None
        if fn is not None:
            return lambda r: np.maximum(np.abs(fn(r)), np.abs(fn(-r)))
    return np.abs


def _activation_fn(idx: GraphIndex, node):
    op = node.op_type
    alpha = attr(node, "alpha", None)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))          # noqa: E731
    softplus = lambda x: np.logaddexp(0, x)            # noqa: E731
    table = {
        "Relu": lambda x: np.maximum(x, 0),
        "LeakyRelu": lambda x: np.where(x > 0, x, (0.01 if alpha is None else alpha) * x),
        "Elu": lambda x: np.where(x > 0, x, (1.0 if alpha is None else alpha) * np.expm1(np.minimum(x, 0))),
        "Celu": lambda x: np.where(x > 0, x, (1.0 if alpha is None else alpha) * np.expm1(np.minimum(x, 0))),
        "Selu": lambda x: attr(node, "gamma", 1.0507) * np.where(
            x > 0, x, (1.6733 if alpha is None else alpha) * np.expm1(np.minimum(x, 0))),
        "ThresholdedRelu": lambda x: np.where(x > (1.0 if alpha is None else alpha), x, 0.0),
        "Sigmoid": sigmoid,
        "HardSigmoid": lambda x: np.clip((0.2 if alpha is None else alpha) * x + attr(node, "beta", 0.5), 0, 1),
        "HardSwish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
        "Tanh": np.tanh,
        "Softplus": softplus,
        "Softsign": lambda x: x / (1 + np.abs(x)),
        "Mish": lambda x: x * np.tanh(softplus(x)),
        "Gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
        "Swish": lambda x: x * sigmoid(x),
        "Erf": np.vectorize(math.erf),
    }
    if op == "Clip":
        lo, hi = _clip_bounds(idx, node)
        return lambda x: np.clip(x, lo, hi)
    return table.get(op)


def _clip_bounds(idx: GraphIndex, node) -> tuple:
    lo, hi = attr(node, "min", -np.inf), attr(node, "max", np.inf)
    for i, name in ((1, "min"), (2, "max")):
        if len(node.input) > i and node.input[i] and idx.is_constant(node.input[i]):
            value = float(idx.array(node.input[i]).reshape(-1)[0])
            lo, hi = (value, hi) if name == "min" else (lo, value)
    return lo, hi
