"""Small fused-attention blocks built with onnx.helper (graph/fused_attention.py's tests).

x [N, T, 16] -> <fused attention> -> O MatMul [width, 8] (+ bias) -> y. Options add what the
detector must refuse (a KV cache, a per-head bias, rotary, a read `present` output) or accept
(qkv_hidden_sizes, a head-broadcast bias, an unpacked Q/K/V with bias Adds).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"
IN, OUT = 16, 8


def _rng(seed):
    return np.random.default_rng(seed)


def _model(nodes, inits, inputs, outputs, opsets=(("", 17), (MS, 1)), ir=8):
    graph = helper.make_graph(nodes, "fused", inputs, outputs,
                              [numpy_helper.from_array(v.astype(np.float32) if v.dtype == np.float64 else v, k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = ir
    return model


def _x(seq="T"):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, IN])


def _y():
    return helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None, OUT])


def _o(width, rng, inits, nodes, src="attn"):
    inits["Wo"] = rng.standard_normal((width, OUT)) / np.sqrt(width)
    inits["bo"] = rng.standard_normal(OUT) * 0.1
    nodes += [helper.make_node("MatMul", [src, "Wo"], ["o"], name="o"),
              helper.make_node("Add", ["o", "bo"], ["y"], name="o_bias")]


def ms_attention(heads=4, dh=4, seed=0, past=False, rotary=False, sizes=False, bias_per_head=False,
                 present_read=False, unidirectional=0):
    """com.microsoft.Attention with a packed [16, 3*heads*dh] weight and bias."""
    rng, width = _rng(seed), heads * dh
    inits = {"W": rng.standard_normal((IN, 3 * width)) / 4, "b": rng.standard_normal(3 * width) * 0.1}
    ins, outs = ["x", "W", "b", ""], ["attn"]
    inputs, attrs = [_x()], dict(num_heads=heads, unidirectional=unidirectional)
    if past:
        ins.append("past")
        inputs.append(helper.make_tensor_value_info("past", TensorProto.FLOAT, [2, "N", heads, "P", dh]))
    if bias_per_head:
        ins += [""] * (5 - len(ins)) + ["abias"]
        inits["abias"] = rng.standard_normal((1, heads, 5, 5)) * 0.1
    if rotary:
        attrs["do_rotary"] = 1
    if sizes:
        attrs["qkv_hidden_sizes"] = [width] * 3
    outputs = [_y()]
    if present_read:
        outs.append("present")
        outputs.append(helper.make_tensor_value_info("present", TensorProto.FLOAT, None))
    nodes = [helper.make_node("Attention", ins, outs, name="attn", domain=MS, **attrs)]
    _o(width, rng, inits, nodes)
    return _model(nodes, inits, inputs, outputs)


def _qkv(rng, inits, nodes, widths, biases=True, x="x", pre=""):
    for p, w in zip("qkv", widths):
        inits[f"{pre}W{p}"] = rng.standard_normal((IN, w)) / 4
        if biases:
            inits[f"{pre}b{p}"] = rng.standard_normal(w) * 0.1
            nodes += [helper.make_node("MatMul", [x, f"{pre}W{p}"], [f"{pre}{p}_mm"], name=f"{pre}{p}_proj"),
                      helper.make_node("Add", [f"{pre}{p}_mm", f"{pre}b{p}"], [pre + p], name=f"{pre}{p}_bias")]
        else:
            nodes.append(helper.make_node("MatMul", [x, f"{pre}W{p}"], [pre + p], name=f"{pre}{p}_proj"))


def ms_mha(heads=4, dh=4, seed=0, packed_bias=True, attention_bias=None, past=False):
    """com.microsoft.MultiHeadAttention on three MatMul projections; `packed_bias`: the Q/K/V
    biases as the op's bias input (as the onnxruntime optimizer writes it), else bias Adds.
    attention_bias: a shape ([1, heads, 5, 5] per head, [1, 1, 5, 5] broadcast) or None."""
    rng, width = _rng(seed), heads * dh
    inits, nodes = {}, []
    _qkv(rng, inits, nodes, [width] * 3, biases=not packed_bias)
    ins = ["q", "k", "v", ""]
    if packed_bias:
        inits["bqkv"] = rng.standard_normal(3 * width) * 0.1
        ins[3] = "bqkv"
    if attention_bias is not None:
        inits["abias"] = rng.standard_normal(attention_bias) * 0.1
        ins += ["", "abias"]
    inputs = [_x(5 if attention_bias is not None else "T")]
    if past:
        ins += [""] * (6 - len(ins)) + ["past_key", "past_value"]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", heads, "P", dh])
                   for n in ("past_key", "past_value")]
    nodes.append(helper.make_node("MultiHeadAttention", ins, ["attn"], name="mha", domain=MS, num_heads=heads))
    _o(width, rng, inits, nodes)
    return _model(nodes, inits, inputs, [_y()])


def ms_gqa(heads=4, kv=2, dh=8, seed=0, present_read=False, packed=False, rotary=False):
    """com.microsoft.GroupQueryAttention (no past) on three MatMul + Add projections."""
    rng = _rng(seed)
    inits, nodes = {}, []
    _qkv(rng, inits, nodes, [heads * dh, kv * dh, kv * dh])
    inits.update({"one": np.array(1, np.int64), "zero1": np.array([0], np.int64), "one1": np.array([1], np.int64)})
    nodes += [
        helper.make_node("Shape", ["x"], ["xs"], name="shape"),
        helper.make_node("Gather", ["xs", "one"], ["t"], name="seq", axis=0),
        helper.make_node("Slice", ["xs", "zero1", "one1"], ["n1"], name="batch"),
        helper.make_node("Cast", ["t"], ["total"], name="total", to=TensorProto.INT32),
        helper.make_node("Sub", ["t", "one"], ["last"], name="last"),
        helper.make_node("Expand", ["last", "n1"], ["lens64"], name="lens"),
        helper.make_node("Cast", ["lens64"], ["lens"], name="lens32", to=TensorProto.INT32),
    ]
    ins = ["q", "k", "v", "", "", "lens", "total"]
    attrs = dict(num_heads=heads, kv_num_heads=kv)
    if packed:
        ins[1:3] = ["", ""]
    if rotary:
        attrs["do_rotary"] = 1
        inits["cos"] = rng.standard_normal((16, dh // 2))
        inits["sin"] = rng.standard_normal((16, dh // 2))
        ins += ["cos", "sin"]
    outputs = [_y()]
    if present_read:
        outputs.append(helper.make_tensor_value_info("present_key", TensorProto.FLOAT, None))
    nodes.append(helper.make_node("GroupQueryAttention", ins, ["attn", "present_key", "present_value"],
                                  name="gqa", domain=MS, **attrs))
    _o(heads * dh, rng, inits, nodes)
    return _model(nodes, inits, [_x()], outputs)


def onnx_attention(heads=4, kv=2, dh=4, seed=0, mask=None, causal=1):
    """ai.onnx Attention (opset 23), 3-D Q/K/V with q_num_heads / kv_num_heads; mask: a
    constant additive mask shape, or None."""
    rng = _rng(seed)
    inits, nodes = {}, []
    _qkv(rng, inits, nodes, [heads * dh, kv * dh, kv * dh])
    ins = ["q", "k", "v"]
    if mask is not None:
        inits["mask"] = rng.standard_normal(mask) * 0.1
        ins.append("mask")
    nodes.append(helper.make_node("Attention", ins, ["attn"], name="attention", q_num_heads=heads,
                                  kv_num_heads=kv, is_causal=causal))
    _o(heads * dh, rng, inits, nodes)
    return _model(nodes, inits, [_x(5 if mask is not None else "T")], [_y()], opsets=(("", 23),), ir=11)


def onnx_attention_4d(heads=4, kv=2, dh=4, seed=0, mask=None, causal=1, present_read=False, num_heads_attr=False):
    """ai.onnx Attention (opset 23) on 4-D Q/K/V [N, heads, T, dh], as the torch exporter writes
    it: each projection Reshaped to [N, T, heads, dh] and Transposed; the output [N, heads, T, dh]
    Transposed and Reshaped back to [N, T, heads*dh] for O. mask: a constant additive mask
    shape, or None; present_read: present_key is a model output."""
    rng = _rng(seed)
    inits, nodes = {}, []
    _qkv(rng, inits, nodes, [heads * dh, kv * dh, kv * dh])
    for p, h in zip("qkv", (heads, kv, kv)):
        inits[f"shape_{p}"] = np.array([0, 0, h, dh], dtype=np.int64)
        nodes += [helper.make_node("Reshape", [p, f"shape_{p}"], [f"{p}4"], name=f"{p}_split"),
                  helper.make_node("Transpose", [f"{p}4"], [f"{p}t"], name=f"{p}_heads", perm=[0, 2, 1, 3])]
    ins, outs = ["qt", "kt", "vt"], ["attn4"]
    if mask is not None:
        inits["mask"] = rng.standard_normal(mask) * 0.1
        ins.append("mask")
    outputs = [_y()]
    if present_read:
        outs += ["present_key"]
        outputs.append(helper.make_tensor_value_info("present_key", TensorProto.FLOAT, None))
    extra = dict(q_num_heads=heads, kv_num_heads=kv) if num_heads_attr else {}
    nodes += [helper.make_node("Attention", ins, outs, name="attention", is_causal=causal, **extra),
              helper.make_node("Transpose", ["attn4"], ["attn_t"], name="merge_t", perm=[0, 2, 1, 3])]
    inits["shape_o"] = np.array([0, 0, heads * dh], dtype=np.int64)
    nodes.append(helper.make_node("Reshape", ["attn_t", "shape_o"], ["attn"], name="merge"))
    _o(heads * dh, rng, inits, nodes)
    return _model(nodes, inits, [_x(5 if mask is not None else "T")], outputs, opsets=(("", 23),), ir=11)


def two_layers(op="gqa", heads=4, kv=2, dh=8, seed=0, biases=True):
    """Two blocks in a row (block 2 reads block 1's output + x): a refit of block 2's
    projections (their input drifted once block 1 is pruned) adds biases a later head
    pruning must slice. op: 'gqa' (com.microsoft) or 'attention23' (ai.onnx)."""
    rng = _rng(seed)
    inits, nodes, src = {}, [], "x"
    for layer in (1, 2):
        pre = f"l{layer}_"
        _qkv(rng, inits, nodes, [heads * dh, kv * dh, kv * dh], x=src, pre=pre, biases=biases)
        if op == "gqa":
            if layer == 1:
                inits.update({"one": np.array(1, np.int64), "zero1": np.array([0], np.int64),
                              "one1": np.array([1], np.int64)})
                nodes += [helper.make_node("Shape", ["x"], ["xs"], name="shape"),
                          helper.make_node("Gather", ["xs", "one"], ["t"], name="seq", axis=0),
                          helper.make_node("Slice", ["xs", "zero1", "one1"], ["n1"], name="batch"),
                          helper.make_node("Cast", ["t"], ["total"], name="total", to=TensorProto.INT32),
                          helper.make_node("Sub", ["t", "one"], ["last"], name="last"),
                          helper.make_node("Expand", ["last", "n1"], ["lens64"], name="lens"),
                          helper.make_node("Cast", ["lens64"], ["lens"], name="lens32", to=TensorProto.INT32)]
            nodes.append(helper.make_node("GroupQueryAttention", [pre + "q", pre + "k", pre + "v", "", "", "lens", "total"],
                                          [pre + "attn", pre + "pk", pre + "pv"], name=pre + "gqa", domain=MS,
                                          num_heads=heads, kv_num_heads=kv))
        else:
            nodes.append(helper.make_node("Attention", [pre + "q", pre + "k", pre + "v"], [pre + "attn"],
                                          name=pre + "attention", q_num_heads=heads, kv_num_heads=kv, is_causal=1))
        width = OUT if layer == 2 else IN
        inits[pre + "Wo"] = rng.standard_normal((heads * dh, width)) / np.sqrt(heads * dh)
        out = "y" if layer == 2 else pre + "out"
        nodes.append(helper.make_node("MatMul", [pre + "attn", pre + "Wo"], [pre + "o"], name=pre + "o"))
        nodes.append(helper.make_node("Add", [pre + "o", src], [out], name=pre + "residual") if layer == 1 else
                     helper.make_node("Identity", [pre + "o"], [out], name=pre + "out"))
        src = out
    if op == "gqa":
        return _model(nodes, inits, [_x()], [_y()])
    return _model(nodes, inits, [_x()], [_y()], opsets=(("", 23),), ir=11)


def inputs(model, n, seed, seq=5):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    t = dims[1].dim_value or seq
    return {"x": _rng(seed).standard_normal((n, t, IN)).astype(np.float32)}
