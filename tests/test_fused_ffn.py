"""FFN hidden units through the com.microsoft activations onnxruntime's optimizer writes
(graph/msrules.py): BiasGelu, FastGelu (with or without bias), Gelu, QuickGelu.

Checked against onnxruntime: keeping every unit reproduces the model bit for bit, pruning
without refit equals the original with the removed units' W2 rows zeroed (masked
equivalence), and the pruned model with the refit runs and its bias input is sliced with the
units; SkipLayerNormalization / BiasAdd read the hidden size and are refused by name."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import builders as B
import fused_ffn as F
from onnxprune import analyze, prune
from onnxprune.capture.shapes import infer_symbolic
from onnxprune.cli import main
from onnxprune.graph.index import GraphIndex
from onnxprune.io.modelio import load_model, normalize
from test_fixtures_transformers import calib_and_check
from test_masked_equivalence import assert_masked_equivalent

HERE = Path(__file__).parent / "fixtures" / "transformers"


def _ffn_group(model):
    (g,) = [g for g in analyze(normalize(model)).groups if g.name == "fc1"]
    return g


@pytest.mark.parametrize("act", F.ACTIVATIONS)
def test_ffn_units_are_a_group(act):
    g = _ffn_group(F.ffn(act))
    assert g.channels == F.HIDDEN and [c.node for c in g.consumers] == ["fc2"]
    assert "act" in g.passthrough
    assert ("b1" in {s.name for s in g.sites}) == (act in ("BiasGelu", "FastGelu"))


@pytest.mark.parametrize("act", F.ACTIVATIONS)
def test_keeping_every_unit_changes_nothing(act):
    model, data = F.ffn(act), F.inputs(6, 3)
    pruned, _ = prune(model, data, keep=1.0)
    np.testing.assert_array_equal(B.run(model, data)[0], B.run(pruned, data)[0])


@pytest.mark.parametrize("keep", (0.3, 0.6))
@pytest.mark.parametrize("act", F.ACTIVATIONS)
def test_masked_equivalence(act, keep):
    _, groups, kept = assert_masked_equivalent(F.ffn(act), F.inputs(40, 1), F.inputs(5, 7), keep)
    assert 0 < len(kept["fc1"]) < F.HIDDEN


@pytest.mark.parametrize("act", ("BiasGelu", "FastGelu"))
def test_bias_is_sliced_and_refit_runs(act):
    model, calib, check = F.ffn(act), F.inputs(40, 1), F.inputs(8, 7)
    pruned, report = prune(model, calib, keep=0.5)
    (kept,) = [g["kept"] for g in report.groups if g["name"] == "fc1"]
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    np.testing.assert_array_equal(got["b1"], w["b1"][kept])
    np.testing.assert_array_equal(got["W1"], w["W1"][:, kept])
    want, out = B.run(model, check)[0], B.run(pruned, check)[0]
    assert out.shape == want.shape and np.isfinite(out).all()
    # the refit of W2 makes the half-width block close to the original on held-out inputs
    assert np.linalg.norm(out - want) < 0.5 * np.linalg.norm(want)


@pytest.mark.parametrize("kw, fragment", [
    (dict(shared_bias=True), "shares its bias 'b1'"),
    (dict(computed_bias=True), "computed bias"),
])
def test_bias_refusals(kw, fragment):
    analysis = analyze(normalize(F.ffn("BiasGelu", **kw)))
    assert not [g for g in analysis.groups if g.name == "fc1"]
    assert fragment in {s.node: s.reason for s in analysis.skipped}["fc1"]


def test_skip_layer_norm_reads_the_hidden_size():
    """With the shapes `onnxprune analyze` fills by symbolic inference, fc2's output is known
    and its refusal is SkipLayerNormalization's."""
    model = normalize(F.ffn())
    index = GraphIndex.build(model)
    infer_symbolic(model, index)
    reasons = {s.node: s.reason for s in analyze(model, index=index).skipped}
    assert "SkipLayerNormalization 'skip_ln', which normalises over the hidden axis" in reasons["fc2"]


FIXTURES = {"bert_hf_attention": ["/layers.0/intermediate/MatMul", "/layers.1/intermediate/MatMul"],
            "bert_hf_mha": ["/layers.0/intermediate/MatMul", "/layers.1/intermediate/MatMul"],
            "vit_tiny_fused": ["/layers.0/fc1/MatMul", "/layers.1/fc1/MatMul"],
            "gpt2_tiny_fused": ["/h.0/c_fc/MatMul", "/h.1/c_fc/MatMul"]}       # FastGelu


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_optimizer_fixture_ffn_masked_equivalence(name):
    """The optimizer's BiasGelu FFNs are groups; pruned with the heads they stay masked-equivalent."""
    calib, check = calib_and_check(name)
    _, groups, kept = assert_masked_equivalent(load_model(HERE / f"{name}.onnx"), calib, check, 0.5, mode="layer")
    groups = {g.name: g for g in groups}
    assert all(groups[n].channels == 64 and groups[n].unit != "head" for n in FIXTURES[name])
    assert all(len(kept[n]) < 64 for n in FIXTURES[name])


# `onnxprune analyze` (symbolic shapes, no data): prunable / total output channels
COVERAGE = {"bert_hf_attention": (352, 482), "bert_hf_mha": (352, 482), "vit_tiny_fused": (345, 515),
            "gqa_tiny": (192, 356),     # the same as attention23_gqa, its ai.onnx twin
            "gpt2_tiny_fused": (232, 564)}   # FFNs by rank; layer 1's heads need measured shapes


@pytest.mark.parametrize("name", sorted(COVERAGE))
def test_analyze_coverage_of_optimizer_fixtures(name):
    """The fused BERT graphs report what the unfused export reports: heads of the packed
    com.microsoft Attention weight and FFN units through BiasGelu (11% / 46% / 29% before);
    gqa_tiny's layers after GroupQueryAttention typed by static inference from the symbolic
    shapes (GraphIndex.fill_shapes propagates; 64/164 before); gpt2_tiny_fused's FastGelu FFNs
    through ranks proven across its fused ops (graph/fusedrank.py; 104/276 before)."""
    result = CliRunner().invoke(main, ["analyze", str(HERE / f"{name}.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    cov = json.loads(result.output[result.output.index("{"):])["coverage"]
    assert (cov["prunable_channels"], cov["total_channels"]) == COVERAGE[name]


def _bias_before_skip_ln(model):
    """The same model with every SkipLayerNormalization's bias input moved into a MatMul + Add
    before it (the form before onnxruntime's optimizer folded it)."""
    import copy
    from onnx import helper
    m = copy.deepcopy(model)
    nodes = []
    for node in m.graph.node:
        if node.op_type == "SkipLayerNormalization" and len(node.input) > 4 and node.input[4]:
            added = f"{node.name}_bias_out"
            nodes.append(helper.make_node("Add", [node.input[0], node.input[4]], [added], name=f"{node.name}_bias"))
            node.input[0] = added
            del node.input[4]
        nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


@pytest.mark.parametrize("refit", ["all", "consumers"])
def test_skip_layer_norm_bias_takes_the_refit_intercept(refit):
    """A MatMul read only by a SkipLayerNormalization has that op's bias input as its bias: the
    refitted intercept is written there (no extra Add), and the pruned model computes what the
    same prune computes on the graph with the bias as a plain MatMul + Add before the op."""
    from test_fixtures_transformers import calib_and_check
    model = load_model(HERE / "bert_hf_attention.onnx")
    moved = _bias_before_skip_ln(model)
    calib, check = calib_and_check("bert_hf_attention")
    want0, got0 = B.run(model, check), B.run(moved, check)
    np.testing.assert_allclose(got0[0], want0[0], rtol=1e-4, atol=1e-5)
    consumers = {c.node: c for g in analyze(normalize(model)).groups for c in g.consumers}
    assert consumers["/layers.0/output/MatMul"].bias == "layers.0.output.bias"
    assert consumers["/layers.0/output/MatMul"].bias_node == "SkipLayerNorm_AddBias_1"
    a, ra = prune(model, calib, keep=0.5, refit=refit, mode="asym")
    b, rb = prune(moved, calib, keep=0.5, refit=refit, mode="asym")
    assert [g["kept"] for g in ra.groups] == [g["kept"] for g in rb.groups]
    assert len(a.graph.node) == len(model.graph.node)          # no Add for the intercepts
    bias = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}["layers.0.output.bias"]
    old = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["layers.0.output.bias"]
    assert not np.allclose(bias, old)                           # the intercept went there
    np.testing.assert_allclose(B.run(a, check)[0], B.run(b, check)[0], rtol=1e-3, atol=1e-4)
