"""Budgets over heads and FFN units together: costs of a head (its Q, K, V columns and O rows,
and attention FLOPs), --heads-keep / --ffn-keep / --min-heads, error allocation, the CLI
and the report."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune import analyze, prune
from onnxprune.budget.allocation import Rules, Target
from onnxprune.budget.cost import flops_after, params_after
from onnxprune.budget.flops import flops_for_samples, model_flops, sample_index
from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.index import GraphIndex, float_param_count
from onnxprune.io.modelio import load_model

FIXTURES = Path(__file__).parent / "fixtures"
HEADS = ("/layers.0/attn/query/MatMul", "/layers.1/attn/query/MatMul")
FFN = ("/layers.0/ffn_in/MatMul", "/layers.1/ffn_in/MatMul")


@pytest.fixture(scope="module")
def bert():
    model = load_model(FIXTURES / "bert_tiny.onnx")
    data = dict(np.load(FIXTURES / "bert_tiny_calib.npz"))
    return model, data, analyze(model).groups


def test_rules_per_kind(bert):
    _, _, groups = bert
    g = {x.name: x for x in groups}
    rules = Rules(min_channels=100, round_to=8, min_heads=2)
    assert rules.allowed(g[HEADS[0]]).tolist() == [2, 3, 4]
    assert rules.allowed(g[FFN[0]]).tolist() == [104, 112, 120, 128]
    fixed = Rules(heads_keep=0.5, ffn_keep=0.25)
    assert fixed.allowed(g[HEADS[0]]).tolist() == [2] and fixed.allowed(g[FFN[0]]).tolist() == [32]


def test_a_heads_cost_is_its_qkv_columns_and_o_rows(bert):
    model, _, groups = bert
    idx = GraphIndex.build(model)
    full = {g.name: g.channels for g in groups}
    one_less = dict(full, **{HEADS[0]: 3})
    hidden, dh = 32, 8
    per_head = 3 * (hidden * dh + dh) + dh * hidden          # Q, K, V columns + biases, O rows
    assert params_after(idx, groups, full, False) - params_after(idx, groups, one_less, False) == per_head


def test_planned_flops_count_attention_and_match_the_pruned_model(bert):
    """QK^T and AV shrink with the heads; the plan's FLOPs equal the pruned model's, counted at
    the calibration's sequence length."""
    model, data, groups = bert
    dims = {k: v.shape[1:] for k, v in data.items()}
    assert model_flops(model) is None                        # dynamic sequence length
    static = sample_index(model, dims)
    pruned, report = prune(model, data, keep=1.0, heads_keep=0.5, reweight=False)
    counts = {g["name"]: g["channels_after"] for g in report.groups}
    assert flops_after(static, groups, counts) == flops_for_samples(pruned, None, dims) == report.flops_after
    scores = [n for n in static.model.graph.node if n.name == "/layers.0/attn/MatMul"][0]
    full = flops_after(static, groups, {g.name: g.channels for g in groups})
    no_attention_scale = model_flops(static.model, static,
                                     {}, {scores.name: 1.0})
    assert full == no_attention_scale == report.flops_before
    assert counts == {HEADS[0]: 2, HEADS[1]: 2, FFN[0]: 128, FFN[1]: 128}


def test_flops_target_uses_the_calibration_sequence_length(bert):
    model, data, groups = bert
    _, report = prune(model, data, compression=1.5, target="flops")
    assert report.flops_before / report.flops_after >= 1.5
    with pytest.raises(OnnxPruneError, match="static shapes"):
        Target(GraphIndex.build(model), groups, "flops", adds_bias=True)


def test_fixed_fractions_and_compression(bert):
    model, data, _ = bert
    _, report = prune(model, data, compression=1.3, ffn_keep=0.5)
    counts = {g["name"]: g["channels_after"] for g in report.groups}
    assert counts[FFN[0]] == counts[FFN[1]] == 64
    assert report.compression >= 1.3
    _, report = prune(model, data, keep=0.5, heads_keep=0.75)
    counts = {g["name"]: g["channels_after"] for g in report.groups}
    assert counts == {HEADS[0]: 3, HEADS[1]: 3, FFN[0]: 64, FFN[1]: 64}


def test_min_heads_and_error_allocation(bert):
    model, data, _ = bert
    _, report = prune(model, data, compression=1.6, min_heads=3, allocation="error")
    heads = [g["channels_after"] for g in report.groups if g.get("unit") == "head"]
    assert len(heads) == 2 and min(heads) >= 3 and report.compression >= 1.6
    with pytest.raises(OnnxPruneError, match="unreachable"):
        prune(model, data, compression=3, min_heads=4)


@pytest.mark.parametrize("opts, words", [
    (dict(heads_keep=0), "--heads-keep"), (dict(ffn_keep=1.5), "--ffn-keep"), (dict(keep=0.5, min_heads=0), "--min-heads"),
    (dict(compression=2, heads_keep=0.5, ffn_keep=0.5), "nothing left"),
])
def test_bad_head_budgets(bert, opts, words):
    model, data, _ = bert
    with pytest.raises(OnnxPruneError, match=words):
        prune(model, data, **opts)


def test_cli_report_lists_heads(tmp_path):
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    r = CliRunner().invoke(main, ["prune", str(FIXTURES / "bert_tiny.onnx"), "--calib",
                                  str(FIXTURES / "bert_tiny_calib.npz"), "--heads-keep", "0.5", "--ffn-keep", "0.5",
                                  "--min-heads", "1", "-o", str(out), "--report", str(rep)])
    assert r.exit_code == 0, r.output
    assert "heads kept per attention block 2/4 2/4" in r.stderr
    doc = json.loads(rep.read_text())
    heads = [g for g in doc["groups"] if g.get("unit") == "head"]
    assert [(g["channels_after"], g["head_dim"]) for g in heads] == [(2, 8), (2, 8)]
    assert doc["budget"]["heads_keep"] == 0.5 and doc["budget"]["ffn_keep"] == 0.5
    assert float_param_count(onnx.load(out)) == doc["params_after"]


def test_flops_of_a_model_whose_output_keeps_symbolic_dims():
    """A MatMul writing a model output declared [batch, seq, V] is counted from its inputs."""
    import builders as B
    b = B.GraphBuilder(0)
    x = b.input("x", ["N", "T", 6])
    y = b.node("MatMul", [x, b.const(b.randn(6, 5))], name="head")
    b.nodes[-1].output[0] = "logits"
    b.outputs.append(onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", "T", 5]))
    model = onnx.helper.make_model(onnx.helper.make_graph(b.nodes, "t", b.inputs, b.outputs, b.inits),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    assert y and model_flops(model) is None
    assert flops_for_samples(model, None, {"x": (7, 6)}) == 2 * 7 * 6 * 5
