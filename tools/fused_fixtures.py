"""Fused-attention fixtures no exporter or optimizer writes for us, built with onnx.helper.

onnxruntime's transformer optimizer (1.31/1.32) fuses BERT/ViT attention into
``com.microsoft.Attention`` / ``MultiHeadAttention`` but never writes ``GroupQueryAttention``
for a model without a KV cache, and the torch exporter writes the opset-23 ``Attention`` only
with 4-D inputs (heads from a Reshape), never the 3-D form with ``q_num_heads`` /
``kv_num_heads``. Both are built here as one decoder layer on token embeddings:

    x = Gather(E, ids); h = LayerNorm(x); q, k, v = h @ Wq, h @ Wk, h @ Wv (+ biases)
    a = <fused attention>(q, k, v)     causal, 4 query heads and 2 KV heads of 8
    x = x + a @ Wo + bo; h = LayerNorm(x); x = x + (silu(h @ Wg) * (h @ Wu)) @ Wd
    logits = x @ Wlm

and the same computation in torch (``reference``) gives the expected outputs, so onnxruntime's
kernel is checked against an independent implementation. GroupQueryAttention needs a head
size that is a multiple of 8 on the CPU.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 32, 4, 2, 8, 64, 100
MS = "com.microsoft"


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or 1 / math.sqrt(shape[0]))).astype(np.float32)

    kv = KV_HEADS * HEAD_DIM
    return {
        "E": w(VOCAB, HIDDEN, scale=1.0), "ln1_g": (rng.random(HIDDEN) + 0.5).astype(np.float32),
        "ln1_b": w(HIDDEN, scale=0.1), "Wq": w(HIDDEN, HIDDEN), "bq": w(HIDDEN, scale=0.1),
        "Wk": w(HIDDEN, kv), "bk": w(kv, scale=0.1), "Wv": w(HIDDEN, kv), "bv": w(kv, scale=0.1),
        "Wo": w(HIDDEN, HIDDEN), "bo": w(HIDDEN, scale=0.1),
        "ln2_g": (rng.random(HIDDEN) + 0.5).astype(np.float32), "ln2_b": w(HIDDEN, scale=0.1),
        "Wg": w(HIDDEN, FFN), "Wu": w(HIDDEN, FFN), "Wd": w(FFN, HIDDEN), "Wlm": w(HIDDEN, VOCAB),
    }


def _projections(nodes: list) -> None:
    nodes += [
        helper.make_node("Gather", ["E", "input_ids"], ["x"], name="/embed/Gather"),
        helper.make_node("LayerNormalization", ["x", "ln1_g", "ln1_b"], ["h"], name="/ln1/LayerNorm", axis=-1),
    ]
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["h", f"W{p}"], [f"{p}_mm"], name=f"/attn/{p}_proj/MatMul"),
                  helper.make_node("Add", [f"{p}_mm", f"b{p}"], [p], name=f"/attn/{p}_proj/Add")]


def _rest(nodes: list) -> None:
    nodes += [
        helper.make_node("MatMul", ["attn", "Wo"], ["o_mm"], name="/attn/o_proj/MatMul"),
        helper.make_node("Add", ["o_mm", "bo"], ["o"], name="/attn/o_proj/Add"),
        helper.make_node("Add", ["x", "o"], ["x1"], name="/res1/Add"),
        helper.make_node("LayerNormalization", ["x1", "ln2_g", "ln2_b"], ["h2"], name="/ln2/LayerNorm", axis=-1),
        helper.make_node("MatMul", ["h2", "Wg"], ["g"], name="/mlp/gate_proj/MatMul"),
        helper.make_node("MatMul", ["h2", "Wu"], ["u"], name="/mlp/up_proj/MatMul"),
        helper.make_node("Sigmoid", ["g"], ["g_sig"], name="/mlp/act/Sigmoid"),
        helper.make_node("Mul", ["g", "g_sig"], ["g_act"], name="/mlp/act/Mul"),
        helper.make_node("Mul", ["g_act", "u"], ["gu"], name="/mlp/Mul"),
        helper.make_node("MatMul", ["gu", "Wd"], ["d"], name="/mlp/down_proj/MatMul"),
        helper.make_node("Add", ["x1", "d"], ["x2"], name="/res2/Add"),
        helper.make_node("MatMul", ["x2", "Wlm"], ["logits"], name="/lm_head/MatMul"),
    ]


def _model(nodes: list, ws: dict, opsets: list, ir: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "decoder_layer",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])],
        [numpy_helper.from_array(v, k) for k, v in ws.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                              producer_name="tools/fused_fixtures.py")
    model.ir_version = ir
    onnx.checker.check_model(model, full_check=True)
    return model


def gqa_model(ws: dict) -> onnx.ModelProto:
    """com.microsoft.GroupQueryAttention (prompt, no past): seqlens_k = T - 1, total = T."""
    nodes: list = []
    _projections(nodes)
    ws = {**ws, "one": np.array(1, np.int64), "zero1": np.array([0], np.int64), "one1": np.array([1], np.int64)}
    nodes += [
        helper.make_node("Shape", ["input_ids"], ["ids_shape"], name="/gqa/Shape"),
        helper.make_node("Gather", ["ids_shape", "one"], ["t64"], name="/gqa/seq_len", axis=0),
        helper.make_node("Slice", ["ids_shape", "zero1", "one1"], ["n1"], name="/gqa/batch"),
        helper.make_node("Cast", ["t64"], ["total"], name="/gqa/total_Cast", to=TensorProto.INT32),
        helper.make_node("Sub", ["t64", "one"], ["last64"], name="/gqa/Sub"),
        helper.make_node("Expand", ["last64", "n1"], ["seqlens64"], name="/gqa/Expand"),
        helper.make_node("Cast", ["seqlens64"], ["seqlens_k"], name="/gqa/seqlens_Cast", to=TensorProto.INT32),
        helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens_k", "total"],
                         ["attn", "present_key", "present_value"], name="/attn/GroupQueryAttention",
                         domain=MS, num_heads=HEADS, kv_num_heads=KV_HEADS),
    ]
    _rest(nodes)
    return _model(nodes, ws, [("", 17), (MS, 1)], 8)


def attention23_model(ws: dict) -> onnx.ModelProto:
    """ai.onnx Attention (opset 23) on 3-D q/k/v with q_num_heads / kv_num_heads, causal."""
    nodes: list = []
    _projections(nodes)
    nodes.append(helper.make_node("Attention", ["q", "k", "v"], ["attn"], name="/attn/Attention",
                                  q_num_heads=HEADS, kv_num_heads=KV_HEADS, is_causal=1))
    _rest(nodes)
    return _model(nodes, ws, [("", 23)], 11)


def reference(ws: dict, input_ids: np.ndarray) -> np.ndarray:
    """The decoder layer in torch: causal grouped-query attention, repeat_kv."""
    t = {k: torch.from_numpy(v) for k, v in ws.items()}
    with torch.no_grad():
        x = t["E"][torch.from_numpy(input_ids)]
        h = F.layer_norm(x, (HIDDEN,), t["ln1_g"], t["ln1_b"])
        n, s = input_ids.shape
        q = (h @ t["Wq"] + t["bq"]).view(n, s, HEADS, HEAD_DIM).transpose(1, 2)
        k = (h @ t["Wk"] + t["bk"]).view(n, s, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = (h @ t["Wv"] + t["bv"]).view(n, s, KV_HEADS, HEAD_DIM).transpose(1, 2)
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        w = q @ k.transpose(2, 3) / math.sqrt(HEAD_DIM)
        w = w.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf"))
        a = (torch.softmax(w, -1) @ v).transpose(1, 2).reshape(n, s, HIDDEN)
        x = x + a @ t["Wo"] + t["bo"]
        h = F.layer_norm(x, (HIDDEN,), t["ln2_g"], t["ln2_b"])
        x = x + (F.silu(h @ t["Wg"]) * (h @ t["Wu"])) @ t["Wd"]
        return (x @ t["Wlm"]).numpy()
