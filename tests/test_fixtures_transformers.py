"""Transformer fixtures (tests/fixtures/transformers, made by tools/fixture_transformers.py).

Each file is what it claims to be (its attention ops and the fusions the onnxruntime optimizer
produced), runs in onnxruntime and reproduces the torch output saved at build time, and
analysis runs on it. What analysis finds prunable today (FFN units, a BERT pooler, attention
heads) is checked by values: pruned without refit == the original with the removed units'
consumer rows zeroed.
"""
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders as B
from onnxprune import analyze
from onnxprune.io.modelio import load_model
from test_masked_equivalence import assert_masked_equivalent

HERE = Path(__file__).parent / "fixtures" / "transformers"

# fixture -> calibration file (the optimized variants share their export's)
CALIB = {
    "bert_hf": "bert_hf", "bert_hf_attention": "bert_hf", "bert_hf_mha": "bert_hf",
    "vit_tiny": "vit_tiny", "vit_tiny_fused": "vit_tiny",
    "gpt2_tiny": "gpt2_tiny", "gpt2_tiny_fused": "gpt2_tiny",
    "llama_tiny": "llama_tiny", "sdpa_encoder": "sdpa_encoder", "sdpa_attention23": "sdpa_encoder",
    "gqa_tiny": "gqa_tiny", "attention23_gqa": "gqa_tiny",
}

# fixture -> {op (domain.op for com.microsoft): count} it must contain
OPS = {
    "bert_hf": {"Softmax": 2, "MatMul": 16, "Erf": 2},
    "bert_hf_attention": {"com.microsoft.Attention": 2, "com.microsoft.EmbedLayerNormalization": 1,
                          "com.microsoft.SkipLayerNormalization": 4, "com.microsoft.BiasGelu": 2, "Softmax": 0},
    "bert_hf_mha": {"com.microsoft.MultiHeadAttention": 2, "com.microsoft.EmbedLayerNormalization": 1,
                    "com.microsoft.SkipLayerNormalization": 4, "com.microsoft.BiasGelu": 2, "Softmax": 0},
    "vit_tiny": {"Conv": 1, "Softmax": 2},
    # the optimizer fuses the attention of the second layer only
    "vit_tiny_fused": {"com.microsoft.Attention": 1, "Softmax": 1, "com.microsoft.SkipLayerNormalization": 4,
                       "com.microsoft.BiasGelu": 2},
    "gpt2_tiny": {"Split": 2, "Where": 2, "Softmax": 2, "Tanh": 2},
    # no attention fusion for a GPT-2 without past inputs: only the norms and the tanh GELU
    "gpt2_tiny_fused": {"com.microsoft.SkipLayerNormalization": 4, "com.microsoft.FastGelu": 2, "Softmax": 2},
    "llama_tiny": {"Softmax": 2, "Sin": 1, "Cos": 1, "Expand": 4, "Sigmoid": 2},
    "sdpa_encoder": {"Softmax": 2, "Attention": 0},
    "sdpa_attention23": {"Attention": 2, "Softmax": 0},
    "gqa_tiny": {"com.microsoft.GroupQueryAttention": 1},
    "attention23_gqa": {"Attention": 1},
}

# fixture -> {group name: channels} analysis finds today: FFN units (and a BERT pooler), and
# attention heads (channels = heads, or KV groups) of the unfused exports graph/headflow.py
# follows and of the fused ops graph/fused_attention.py knows
Q = "/layers.{}/attention/query/MatMul"
FF = "/layers.{}/intermediate/MatMul"
GROUPS = {
    "bert_hf": {"/layers.0/intermediate/MatMul": 64, "/layers.1/intermediate/MatMul": 64, "/pooler/Gemm": 32,
                Q.format(0): 4, Q.format(1): 4},
    # the optimizer's FFNs (BiasGelu / FastGelu) found without data: ranks through its fused ops
    "bert_hf_attention": {"Attention_0": 4, "Attention_1": 4, FF.format(0): 64, FF.format(1): 64},
    "bert_hf_mha": {Q.format(0): 4, Q.format(1): 4, FF.format(0): 64, FF.format(1): 64},
    "vit_tiny": {"/layers.0/fc1/MatMul": 64, "/layers.1/fc1/MatMul": 64, Q.format(0): 4, Q.format(1): 4},
    "vit_tiny_fused": {Q.format(0): 4, "Attention_0": 4, "/layers.0/fc1/MatMul": 64, "/layers.1/fc1/MatMul": 64},
    "gpt2_tiny": {"/h.0/c_fc/MatMul": 64, "/h.1/c_fc/MatMul": 64, "/h.0/attn/c_attn/MatMul": 4,
                  "/h.1/attn/c_attn/MatMul": 4},
    "gpt2_tiny_fused": {"/h.0/attn/c_attn/MatMul": 4, "/h.0/c_fc/MatMul": 64, "/h.1/c_fc/MatMul": 64},
    "llama_tiny": {"/layers.0/gate_proj/MatMul": 64, "/layers.1/gate_proj/MatMul": 64,
                   "/layers.0/self_attn/q_proj/MatMul": 2, "/layers.1/self_attn/q_proj/MatMul": 2},   # KV groups
    "sdpa_encoder": {"/layers.0/fc1/MatMul": 64, "/layers.1/fc1/MatMul": 64, "/layers.0/q/MatMul": 4,
                     "/layers.1/q/MatMul": 4},
    "sdpa_attention23": {"node_MatMul_61": 64, "node_MatMul_96": 64, "node_MatMul_30": 4, "node_MatMul_65": 4},
    "gqa_tiny": {"/attn/q_proj/MatMul": 2, "/mlp/gate_proj/MatMul": 64},
    "attention23_gqa": {"/attn/q_proj/MatMul": 2, "/mlp/gate_proj/MatMul": 64},
}
NAMES = sorted(CALIB)


def arrays(name):
    data = dict(np.load(HERE / f"{CALIB[name]}_calib.npz"))
    expected = data.pop("expected_logits")
    return data, expected


def calib_and_check(name) -> tuple:
    """(calibration, held-out check) feeds: up to 16 samples, then 4 (vit_tiny has 16 images)."""
    data, _ = arrays(name)
    n = min(16, len(next(iter(data.values()))) - 4)
    return {k: v[:n] for k, v in data.items()}, {k: v[n:n + 4] for k, v in data.items()}


def op_counts(model):
    out = {}
    for n in model.graph.node:
        key = f"{n.domain}.{n.op_type}" if n.domain else n.op_type
        out[key] = out.get(key, 0) + 1
    return out


def test_every_fixture_is_listed():
    assert sorted(p.stem for p in HERE.glob("*.onnx")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_fixture_has_its_ops(name):
    model = onnx.load(str(HERE / f"{name}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    counts = op_counts(model)
    for op, n in OPS[name].items():
        assert counts.get(op, 0) == n, (op, counts)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_matches_torch(name):
    data, expected = arrays(name)
    first = {k: v[: len(expected)] for k, v in data.items()}
    got = B.run(load_model(HERE / f"{name}.onnx"), first)[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_analysis_of_fixture(name):
    analysis = analyze(load_model(HERE / f"{name}.onnx"))
    assert {g.name: g.channels for g in analysis.groups} == GROUPS.get(name, {})
    assert analysis.skipped, "every fixture leaves layers alone (the residual stream reaches the output)"


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_pruning_is_masked_equivalent(name):
    calib, check = calib_and_check(name)
    assert_masked_equivalent(load_model(HERE / f"{name}.onnx"), calib, check, 0.5, mode="layer")
