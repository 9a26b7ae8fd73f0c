"""Fused attention ops as head groups (graph/fused_attention.py): com.microsoft Attention,
MultiHeadAttention, GroupQueryAttention and ai.onnx Attention (opset 23).

Removing heads without refit must equal the original with the removed heads' O rows zeroed
(masked equivalence), keeping every head must change nothing, the counts in the attributes
must follow, and whatever lays values out per head that is not sliced is refused by name."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders as B
import fused_ops as F
from onnxprune import analyze, prune
from onnxprune.graph.index import attr
from onnxprune.io.modelio import load_model, normalize
from test_fixtures_transformers import arrays, calib_and_check
from test_masked_equivalence import assert_masked_equivalent

HERE = Path(__file__).parent / "fixtures" / "transformers"

BLOCKS = {   # name -> (builder, pattern, units, query heads per unit)
    "attention": (F.ms_attention, "com.microsoft.Attention", 4, 1),
    "attention_qkv_sizes": (lambda: F.ms_attention(sizes=True), "com.microsoft.Attention", 4, 1),
    "attention_causal": (lambda: F.ms_attention(unidirectional=1), "com.microsoft.Attention", 4, 1),
    "mha_packed_bias": (F.ms_mha, "com.microsoft.MultiHeadAttention", 4, 1),
    "mha_bias_adds": (lambda: F.ms_mha(packed_bias=False), "com.microsoft.MultiHeadAttention", 4, 1),
    "mha_broadcast_bias": (lambda: F.ms_mha(attention_bias=(1, 1, 5, 5)), "com.microsoft.MultiHeadAttention", 4, 1),
    "gqa": (F.ms_gqa, "com.microsoft.GroupQueryAttention", 2, 2),
    "gqa_mha": (lambda: F.ms_gqa(kv=4), "com.microsoft.GroupQueryAttention", 4, 1),
    # rotary inside the op: cos/sin caches shared by every head (the CPU kernel wants head size 16)
    "gqa_rotary": (lambda: F.ms_gqa(rotary=True, dh=16), "com.microsoft.GroupQueryAttention", 2, 2),
    "onnx_attention_gqa": (F.onnx_attention, "ai.onnx.Attention", 2, 2),
    "onnx_attention_mha": (lambda: F.onnx_attention(kv=4), "ai.onnx.Attention", 4, 1),
    "onnx_attention_2d_mask": (lambda: F.onnx_attention(mask=(5, 5), causal=0), "ai.onnx.Attention", 2, 2),
    # 4-D Q/K/V [N, heads, T, dh] from Reshape + Transpose of the projections (graph/headattn.py)
    "onnx_attention_4d_gqa": (F.onnx_attention_4d, "ai.onnx.Attention (4-D)", 2, 2),
    "onnx_attention_4d_mha": (lambda: F.onnx_attention_4d(kv=4), "ai.onnx.Attention (4-D)", 4, 1),
    "onnx_attention_4d_mask": (lambda: F.onnx_attention_4d(mask=(1, 1, 5, 5), causal=0), "ai.onnx.Attention (4-D)",
                               2, 2),
    "onnx_attention_4d_2d_mask": (lambda: F.onnx_attention_4d(mask=(5, 5)), "ai.onnx.Attention (4-D)", 2, 2),
}

REFUSED = {  # name -> (builder, reason fragment, node carrying the reason)
    "attention_past": (lambda: F.ms_attention(past=True), "KV cache (past)", "attn"),
    "attention_rotary": (lambda: F.ms_attention(rotary=True), "rotary", "attn"),
    "attention_bias_per_head": (lambda: F.ms_attention(bias_per_head=True), "one slice per head", "attn"),
    "attention_present_read": (lambda: F.ms_attention(present_read=True), "present is read", "attn"),
    "mha_bias_per_head": (lambda: F.ms_mha(attention_bias=(1, 4, 5, 5)), "one slice per head", "q_proj"),
    "mha_past": (lambda: F.ms_mha(past=True), "KV cache (past_key)", "q_proj"),
    "gqa_present_read": (lambda: F.ms_gqa(present_read=True), "present_key is read", "q_proj"),
    "gqa_packed": (lambda: F.ms_gqa(packed=True), "packed QKV", "q_proj"),
    "onnx_attention_mask_per_head": (lambda: F.onnx_attention(mask=(1, 4, 5, 5)), "one slice per head", "q_proj"),
    "onnx_attention_4d_mask_per_head": (lambda: F.onnx_attention_4d(mask=(1, 4, 5, 5)), "one slice per head",
                                        "q_proj"),
    "onnx_attention_4d_present_read": (lambda: F.onnx_attention_4d(present_read=True), "present_key is read",
                                       "q_proj"),
    "onnx_attention_4d_head_attrs": (lambda: F.onnx_attention_4d(num_heads_attr=True), "q_num_heads", "q_proj"),
}

FIXTURES = {  # fused fixture -> {group: (pattern, units)}
    "bert_hf_attention": {"Attention_0": ("com.microsoft.Attention", 4), "Attention_1": ("com.microsoft.Attention", 4)},
    "bert_hf_mha": {"/layers.0/attention/query/MatMul": ("com.microsoft.MultiHeadAttention", 4),
                    "/layers.1/attention/query/MatMul": ("com.microsoft.MultiHeadAttention", 4)},
    "vit_tiny_fused": {"Attention_0": ("com.microsoft.Attention", 4)},
    "gqa_tiny": {"/attn/q_proj/MatMul": ("com.microsoft.GroupQueryAttention", 2)},
    "attention23_gqa": {"/attn/q_proj/MatMul": ("ai.onnx.Attention", 2)},
}


def heads_of(model):
    return [g for g in analyze(normalize(model)).groups if g.unit == "head"]


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_is_a_head_group(name):
    build, pattern, units, per = BLOCKS[name]
    (g,) = heads_of(build())
    assert (g.heads.pattern, g.channels, g.heads.queries_per_unit) == (pattern, units, per)
    assert [c.node for c in g.consumers] == ["o"]


@pytest.mark.parametrize("keep", (0.3, 0.6))
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_masked_equivalence(name, keep):
    model = BLOCKS[name][0]()
    _, groups, kept = assert_masked_equivalent(model, F.inputs(model, 24, 1), F.inputs(model, 5, 7), keep)
    (g,) = [g for g in groups if g.unit == "head"]
    assert 0 < len(kept[g.name]) < g.channels


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_keeping_every_head_changes_nothing(name):
    model = BLOCKS[name][0]()
    data = F.inputs(model, 6, 3)
    pruned, _ = prune(model, data, keep=1.0)
    np.testing.assert_array_equal(B.run(model, data)[0], B.run(pruned, data)[0])


def _node(model, op):
    return next(n for n in model.graph.node if n.op_type == op)


def _shape(model, name):
    return list(next(t.dims for t in model.graph.initializer if t.name == name))


def test_counts_and_weights_after_pruning():
    model = F.ms_attention(sizes=True)
    data = F.inputs(model, 24, 1)
    pruned, report = prune(model, data, keep=0.5, reweight=False)
    node = _node(pruned, "Attention")
    assert attr(node, "num_heads") == 2 and list(attr(node, "qkv_hidden_sizes")) == [8, 8, 8]
    assert _shape(pruned, "W") == [16, 24] and _shape(pruned, "b") == [24] and _shape(pruned, "Wo") == [8, 8]
    model = F.ms_gqa()
    pruned, _ = prune(model, F.inputs(model, 24, 1), keep=0.5, reweight=False)
    node = _node(pruned, "GroupQueryAttention")
    assert (attr(node, "num_heads"), attr(node, "kv_num_heads")) == (2, 1)
    assert _shape(pruned, "Wq") == [16, 16] and _shape(pruned, "Wk") == [16, 8] and _shape(pruned, "Wo") == [16, 8]
    model = F.onnx_attention()
    pruned, _ = prune(model, F.inputs(model, 24, 1), keep=0.5, reweight=False)
    node = _node(pruned, "Attention")
    assert (attr(node, "q_num_heads"), attr(node, "kv_num_heads")) == (2, 1)
    model = F.ms_mha()
    pruned, _ = prune(model, F.inputs(model, 24, 1), keep=0.5, reweight=False)
    assert attr(_node(pruned, "MultiHeadAttention"), "num_heads") == 2 and _shape(pruned, "bqkv") == [24]


def test_gqa_keeps_whole_kv_groups():
    """The kept unit's query heads are the ones that read its KV head (j // 2)."""
    model = F.ms_gqa()
    pruned, report = prune(model, F.inputs(model, 24, 1), keep=0.5, reweight=False)
    (kept,) = [g["kept"] for g in report.groups]
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    u = kept[0]
    np.testing.assert_array_equal(got["Wq"], w["Wq"][:, u * 16:(u + 1) * 16])
    np.testing.assert_array_equal(got["Wk"], w["Wk"][:, u * 8:(u + 1) * 8])


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_name_the_reason(name):
    build, fragment, node = REFUSED[name]
    analysis = analyze(normalize(build()))
    assert not [g for g in analysis.groups if g.unit == "head"]
    reasons = {s.node: s.reason for s in analysis.skipped}
    assert fragment in reasons[node], reasons


def test_four_d_onnx_attention_heads_follow_the_reshapes():
    """The dynamo export's Attention on 4-D q/k/v: the head flow follows the Reshape + Transpose
    of each projection through the op (graph/headattn.py) to O; masked-equivalent when pruned."""
    groups = {g.name: g for g in heads_of(load_model(HERE / "sdpa_attention23.onnx"))}
    assert {k: (g.heads.pattern, g.channels) for k, g in groups.items()} == {
        "node_MatMul_30": ("ai.onnx.Attention (4-D)", 4), "node_MatMul_65": ("ai.onnx.Attention (4-D)", 4)}
    calib, check = calib_and_check("sdpa_attention23")
    _, _, kept = assert_masked_equivalent(load_model(HERE / "sdpa_attention23.onnx"), calib, check, 0.5,
                                          mode="layer")
    assert len(kept["node_MatMul_30"]) < 4 and len(kept["node_MatMul_65"]) < 4


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fused_fixture_head_groups(name):
    groups = {g.name: (g.heads.pattern, g.channels) for g in heads_of(load_model(HERE / f"{name}.onnx"))}
    want = FIXTURES[name]
    assert {k: v for k, v in groups.items() if k in want} == want
    assert all(p == "unfused" for k, (p, _) in groups.items() if k not in want)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fused_fixture_masked_equivalence(name):
    calib, check = calib_and_check(name)
    _, groups, kept = assert_masked_equivalent(load_model(HERE / f"{name}.onnx"), calib, check, 0.5, mode="layer")
    assert all(len(kept[g]) < FIXTURES[name][g][1] for g in FIXTURES[name])


def test_fused_and_unfused_bert_prune_alike():
    """The optimizer's Attention / MultiHeadAttention and BiasGelu compute what the export
    computes: half the heads and half the FFN units pruned with the refit of O and of the FFN's
    second MatMul pick the same heads and units and give the same outputs on held-out samples
    in all three graphs."""
    data, _ = arrays("bert_hf")
    calib, check = {k: v[:24] for k, v in data.items()}, {k: v[24:] for k, v in data.items()}
    query = [f"/layers.{i}/attention/query/MatMul" for i in (0, 1)]
    ffn = [f"/layers.{i}/intermediate/MatMul" for i in (0, 1)]
    picks, outputs = [], []
    for name, heads in (("bert_hf", query), ("bert_hf_attention", ["Attention_0", "Attention_1"]),
                        ("bert_hf_mha", query)):
        pruned, report = prune(load_model(HERE / f"{name}.onnx"), calib, refit="consumers", keep=0.5)
        kept = {g["name"]: g["kept"] for g in report.groups}
        picks.append([kept[h] for h in heads + ffn])
        outputs.append(B.run(pruned, check)[0])
    assert picks[0] == picks[1] == picks[2]
    assert [len(k) for k in picks[0]] == [2, 2, 32, 32]
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
    np.testing.assert_allclose(outputs[2], outputs[0], atol=1e-5)


@pytest.mark.parametrize("method", ["weight-norm", "random"])
@pytest.mark.parametrize("name", ["attention", "mha_packed_bias", "gqa", "onnx_attention_gqa", "onnx_attention_4d_gqa"])
def test_masked_equivalence_other_methods(name, method):
    model = BLOCKS[name][0]()
    assert_masked_equivalent(model, F.inputs(model, 24, 1), F.inputs(model, 5, 7), 0.5, method=method, mode="layer")


@pytest.mark.parametrize("biases", [True, False])
@pytest.mark.parametrize("op", ["gqa", "attention23"])
def test_two_blocks(op, biases):
    """Both blocks are head groups, masked-equivalent together; with --refit all the second
    block's projections are refitted first (their input drifted) and may get a bias, which its
    head pruning must slice like the weight's columns."""
    model = F.two_layers(op, biases=biases)
    assert [g.name for g in heads_of(model)] == ["l1_q_proj", "l2_q_proj"]
    assert_masked_equivalent(model, F.inputs(model, 32, 1), F.inputs(model, 5, 7), 0.5)
    data = F.inputs(model, 32, 1)
    pruned, report = prune(model, data, keep=0.5, refit="all")
    onnx.checker.check_model(pruned, full_check=True)
    assert [len(g["kept"]) for g in report.groups] == [1, 1]
    assert report.verify["output_rel_error"]["y"] < 0.5
