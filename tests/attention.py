"""Unfused multi-head attention blocks built with onnx.helper, in the shapes exporters write.

`mha(...)`: x [N, T, hidden] -> Q, K, V projections (MatMul + Add) -> Reshape [N, T, H, Dh]
-> Transpose -> scores (QK^T, scaled) -> mask -> Softmax -> x V -> Transpose -> Reshape
[N, T, H*Dh] -> O projection -> LayerNorm-free output. The options select the variants the
head detector must follow (graph/headflow.py) or refuse.
"""
from __future__ import annotations

import numpy as np
import onnx

from builders import GraphBuilder


def mha(heads=4, dh=3, hidden=10, seq=None, count="const", merge="const", scale="div", mask="add",
        causal=False, seed=0, opset=17, packed=False, per_head_bias=False, softmax_axis=-1, out_dim=7):
    """One attention block. count: 'const' ([0, 0, H, Dh] initializer), 'concat' (Concat of
    Shape reads and constants, as torch exports BERT), 'minus1' ([0, 0, -1, Dh]); merge:
    'const' ([0, 0, H*Dh]) or 'concat' or 'minus1'; scale: 'div' | 'mul' | 'sqrt' (both Q
    and K scaled by Dh^-1/4, as SDPA decompositions do); mask: 'add' (additive [N,1,1,T]),
    'where' (boolean) or None; causal: an upper-triangular -inf [T, T] added too (needs a
    fixed seq); packed: one QKV MatMul then Split."""
    b = GraphBuilder(seed)
    t = seq if seq is not None else "T"
    x = b.input("x", ["N", t, hidden])
    width = heads * dh
    if packed:
        qkv = b.matmul(x, hidden, 3 * width, name="qkv")
        q, k, v = (f"split_out{i}" if i else "split_out" for i in range(3))
        if opset >= 18:
            b.node("Split", [qkv], name="split", outputs=3, axis=-1, num_outputs=3)
        else:
            b.node("Split", [qkv, b.const(np.array([width] * 3))], name="split", outputs=3, axis=-1)
    else:
        q, k, v = (b.matmul(x, hidden, width, name=n) for n in ("q", "k", "v"))
    q, k, v = (_split_heads(b, y, x, heads, dh, count) for y in (q, k, v))
    if per_head_bias:
        q = b.node("Add", [q, b.const(b.randn(1, heads, 1, 1, scale=0.1))])
    if scale == "sqrt":
        s = b.const(np.array(dh ** -0.25))
        q, k = b.node("Mul", [q, s]), b.node("Mul", [k, s])
    elif scale == "sdpa":           # torch 2.x decomposition: Dh read from Q's shape
        d = b.node("Slice", [b.node("Shape", [q]), b.const(np.array([-1])), b.const(np.array([2 ** 62]))])
        s = b.node("Sqrt", [b.node("Div", [b.const(np.array([1.0])), b.node("Sqrt", [b.node("Cast", [d], to=1)])])])
        q, k = b.node("Mul", [q, s]), b.node("Mul", [k, s])
    kt = b.node("Transpose", [k], perm=[0, 1, 3, 2])
    scores = b.node("MatMul", [q, kt], name="scores")
    if scale == "div":
        scores = b.node("Div", [scores, b.const(np.array(np.sqrt(dh)))])
    elif scale == "mul":
        scores = b.node("Mul", [scores, b.const(np.array(1 / np.sqrt(dh)))])
    if mask == "add":
        m = b.input("mask", ["N", t])
        m = b.node("Unsqueeze", [m, b.const(np.array([1, 2]))])
        scores = b.node("Add", [scores, b.node("Mul", [m, b.const(np.array(-1e4))])])
    elif mask == "where":
        m = b.input("keep", ["N", t], elem=9)
        m = b.node("Unsqueeze", [m, b.const(np.array([1, 2]))])
        scores = b.node("Where", [m, scores, b.const(np.array(-1e4))])
    if mask == "expand":            # [N, 1, 1, T] expanded to [N, 1, T, T] by a computed shape
        m = b.node("Unsqueeze", [b.input("mask", ["N", t]), b.const(np.array([1, 2]))])
        shape = b.node("Concat", [_dim(b, x, 0), b.const(np.array([1])), _dim(b, x, 1), _dim(b, x, 1)], axis=0)
        m = b.node("Expand", [m, shape])
        scores = b.node("Add", [scores, b.node("Mul", [m, b.const(np.array(-1e4))])])
    if causal == "buffer":          # GPT-2: a [1, 1, 16, 16] buffer sliced to the sequence length
        n = _dim(b, x, 1)
        buf = b.node("Cast", [b.const(np.tril(np.ones((1, 1, 16, 16))))], to=9)
        tri = b.node("Slice", [b.node("Slice", [buf, b.const(np.array([0])), n, b.const(np.array([2]))]),
                               b.const(np.array([0])), n, b.const(np.array([3]))])
        scores = b.node("Where", [tri, scores, b.const(np.array(-1e4))])
    elif causal:
        tri = np.triu(np.full((seq, seq), -1e4), 1)
        scores = b.node("Add", [scores, b.const(tri)])
    probs = b.node("Softmax", [scores], axis=softmax_axis)
    if scale == "sdpa":
        probs = b.node("Where", [b.node("IsNaN", [probs]), b.const(np.array(0.0)), probs])
    ctx = b.node("MatMul", [probs, v], name="context")
    ctx = b.node("Transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = _merge_heads(b, ctx, x, width, merge)
    y = b.matmul(ctx, width, out_dim, name="o")
    b.output(y)
    return b.model(opset=opset)


def _split_heads(b, y, x, heads, dh, count):
    if count == "const":
        shape = b.const(np.array([0, 0, heads, dh]), "shape")
    elif count == "minus1":
        shape = b.const(np.array([0, 0, -1, dh]), "shape")
    else:
        shape = b.node("Concat", [_dim(b, y, 0), _dim(b, x, 1), b.const(np.array([heads]), "heads"),
                                  b.const(np.array([dh]), "dh")], axis=0)
    y = b.node("Reshape", [y, shape])
    return b.node("Transpose", [y], perm=[0, 2, 1, 3])


def _dim(b, tensor, axis):
    shape = b.node("Shape", [tensor])
    d = b.node("Gather", [shape, b.const(np.array(axis))], axis=0)
    return b.node("Unsqueeze", [d, b.const(np.array([0]))])


def _merge_heads(b, ctx, x, width, merge):
    if merge == "const":
        shape = b.const(np.array([0, 0, width]), "merged")
    elif merge == "minus1":
        shape = b.node("Concat", [_dim(b, x, 0), _dim(b, x, 1), b.const(np.array([-1]))], axis=0)
    else:
        shape = b.node("Concat", [_dim(b, x, 0), _dim(b, x, 1), b.const(np.array([width]), "merged")], axis=0)
    return b.node("Reshape", [ctx, shape])


def gqa(heads=4, kv=2, dh=4, hidden=12, seq=6, rotary=True, repeat="expand", seed=0, out_dim=7):
    """Grouped-query attention as LLaMA code exports it: K/V with `kv` heads, rotary embedding
    on Q and K (Slice halves, Neg, Concat, Mul by cos/sin), repeat_kv as Unsqueeze -> Expand
    (to a shape torch computes through Where(Equal(shape, -1), 1, shape)) -> Reshape, causal
    mask, Softmax, x V, merge, O. repeat='tile' repeats with Tile instead (head h uses K/V
    head h % kv: refused)."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", seq, hidden])
    r = heads // kv
    q = _split_heads(b, b.matmul(x, hidden, heads * dh, bias=False, name="q"), x, heads, dh, "concat")
    k = _split_heads(b, b.matmul(x, hidden, kv * dh, bias=False, name="k"), x, kv, dh, "concat")
    v = _split_heads(b, b.matmul(x, hidden, kv * dh, bias=False, name="v"), x, kv, dh, "concat")
    if rotary:
        angles = np.arange(seq)[:, None] * (0.5 ** np.arange(dh // 2))[None, :]
        cos = b.const(np.cos(np.concatenate([angles, angles], 1))[None, None])
        sin = b.const(np.sin(np.concatenate([angles, angles], 1))[None, None])
        q, k = (_rotate(b, t, cos, sin, dh) for t in (q, k))
    k, v = (_repeat(b, t, x, kv, r, dh, repeat) for t in (k, v))
    scores = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = b.node("Div", [scores, b.const(np.array(np.sqrt(dh)))])
    scores = b.node("Add", [scores, b.const(np.triu(np.full((seq, seq), -1e4), 1))])
    ctx = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
    ctx = _merge_heads(b, b.node("Transpose", [ctx], perm=[0, 2, 1, 3]), x, heads * dh, "concat")
    b.output(b.matmul(ctx, heads * dh, out_dim, name="o"))
    return b.model()


def _rotate(b, t, cos, sin, dh):
    half = dh // 2
    lo = b.node("Slice", [t, b.const(np.array([0])), b.const(np.array([half])), b.const(np.array([3]))])
    hi = b.node("Slice", [t, b.const(np.array([half])), b.const(np.array([2 ** 62])), b.const(np.array([3]))])
    rot = b.node("Concat", [b.node("Neg", [hi]), lo], axis=-1)
    return b.node("Add", [b.node("Mul", [t, cos]), b.node("Mul", [rot, sin])])


def _repeat(b, t, x, kv, r, dh, repeat):
    if repeat == "tile":
        return b.node("Tile", [t, b.const(np.array([1, r, 1, 1]))])
    t = b.node("Unsqueeze", [t, b.const(np.array([2]))])
    shape = b.node("Reshape", [b.node("Concat", [_dim(b, x, 0), b.const(np.array([kv])), b.const(np.array([r])),
                                                 _dim(b, x, 1), b.const(np.array([dh]))], axis=0),
                               b.const(np.array([-1]))])
    ones = b.node("ConstantOfShape", [b.node("Shape", [shape])],
                  value=onnx.helper.make_tensor("one", onnx.TensorProto.INT64, [1], [1]))
    shape = b.node("Where", [b.node("Equal", [shape, b.node("Mul", [ones, b.const(np.array(-1))])]), ones, shape])
    t = b.node("Expand", [t, shape])
    target = b.node("Concat", [_dim(b, x, 0), b.const(np.array([kv * r]), "heads"), _dim(b, x, 1),
                               b.const(np.array([dh]))], axis=0)
    return b.node("Reshape", [t, target])
