"""Attention heads (graph/heads.py, graph/headflow.py): which blocks are found, which are
refused and why, and the masked equivalence of head pruning: without refit the pruned model
equals the original whose O rows of the removed heads are zero."""
from pathlib import Path

import numpy as np
import onnx
import pytest

import attention as A
import builders as B
from onnxprune import analyze, prune
from onnxprune.io.modelio import load_model, normalize
from onnxprune.rewrite.masked import masked_original
from test_masked_equivalence import assert_masked_equivalent

FIXTURES = Path(__file__).parent / "fixtures"

VARIANTS = {
    "const": {},
    "concat_counts": dict(count="concat", merge="concat"),
    "minus1": dict(count="minus1", merge="minus1"),
    "sdpa_scale_bool_mask": dict(scale="sqrt", mask="where"),
    "causal": dict(seq=5, causal=True, scale="mul"),
    "no_mask": dict(mask=None),
    "opset13": dict(opset=13),
    "packed_qkv": dict(packed=True),
    "sdpa_decomposition": dict(scale="sdpa", mask="expand", count="concat", merge="minus1"),
    "gpt2_causal_buffer": dict(packed=True, causal="buffer", count="concat", merge="concat"),
    "packed_qkv_opset18": dict(packed=True, opset=18, count="concat"),
}


def inputs(model, n, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        seq = t.shape.dim[1].dim_value or 5
        if vi.name == "x":
            out["x"] = rng.standard_normal((n, seq, t.shape.dim[2].dim_value)).astype(np.float32)
        elif vi.name == "mask":
            out["mask"] = (rng.random((n, seq)) < 0.3).astype(np.float32)
        else:
            out[vi.name] = rng.random((n, seq)) > 0.3
    return out


def head_group(model):
    groups = [g for g in analyze(normalize(model)).groups if g.unit == "head"]
    assert len(groups) == 1
    return groups[0]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_block_is_found(name):
    g = head_group(A.mha(**VARIANTS[name]))
    assert g.channels == 4 and g.heads.head_dim == 3 and g.heads.num_heads == 4
    assert [c.node for c in g.consumers] == ["o"]
    if VARIANTS[name].get("packed"):
        assert [p.node for p in g.producers] == ["qkv"] and g.heads.streams == (("qkv", "qkv"),)
        assert [a.kind for a in g.attr_sites].count("split") == 1
        return
    assert {p.node for p in g.producers} == {"q", "k", "v"}
    assert dict((n, r) for r, n in g.heads.streams) == {"q": "q", "k": "k", "v": "v"}


@pytest.mark.parametrize("keep", (0.3, 0.6))
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_masked_equivalence(name, keep):
    model = A.mha(**VARIANTS[name])
    _, groups, kept = assert_masked_equivalent(model, inputs(model, 24, 1), inputs(model, 5, 7), keep)
    assert 0 < len(kept[groups[0].name]) < 4


@pytest.mark.parametrize("method", ["weight-norm", "random"])
def test_masked_equivalence_other_methods(method):
    model = A.mha(count="concat", merge="concat")
    assert_masked_equivalent(model, inputs(model, 24, 1), inputs(model, 5, 7), 0.5, method=method, mode="layer")


def test_pruned_shapes_and_counts():
    """Two of four heads: Q/K/V lose 2 x 3 columns, O 6 rows, the Reshape constants say 2 and 6."""
    model = A.mha()
    pruned, report = prune(model, inputs(model, 24, 1), keep=0.5, reweight=False)
    w = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    nodes = {n.name: n for n in pruned.graph.node}
    assert w[nodes["q"].input[1]].shape == (10, 6) and w[nodes["o"].input[1]].shape == (6, 7)
    shapes = sorted(tuple(v) for k, v in w.items() if v.dtype == np.int64 and v.ndim == 1 and len(v) in (3, 4))
    assert shapes == [(0, 0, 2, 3)] * 3 + [(0, 0, 6)]
    group = next(g for g in report.groups if g["name"] == "q")
    assert group["channels_after"] == 2


def test_keep_all_is_exact():
    model = A.mha(count="concat", merge="concat")
    data = inputs(model, 6, 2)
    pruned, _ = prune(model, data, keep=1.0)
    for a, b in zip(B.run(model, data), B.run(pruned, data)):
        np.testing.assert_array_equal(a, b)


def test_wrong_heads_are_caught():
    """The check is not vacuous: another kept set of heads gives another model."""
    model = normalize(A.mha())
    data = inputs(model, 24, 1)
    groups = analyze(model).groups
    pruned, report = prune(model, data, keep=0.5, reweight=False)
    kept = report.groups[0]["kept"]
    other = sorted(set(range(4)) - set(kept))
    wrong = masked_original(model, groups, {"q": other})
    check = inputs(model, 5, 7)
    assert np.abs(B.run(wrong, check)[0] - B.run(pruned, check)[0]).max() > 1e-3


@pytest.mark.parametrize("kw, reason", [
    (dict(per_head_bias=True), "does not broadcast over the head axis"),
    (dict(softmax_axis=1), "normalises across heads"),
])
def test_refusals(kw, reason):
    a = analyze(normalize(A.mha(**kw)))
    assert not [g for g in a.groups if g.unit == "head"]
    reasons = {s.node: s.reason for s in a.skipped}
    assert reason in reasons["q"] and reasons["q"].startswith("attention heads:")


def test_head_count_read_from_shape_is_refused():
    """A Shape of the split heads read at the head axis would stay 4 after pruning."""
    b = B.GraphBuilder(0)
    x = b.input("x", ["N", 5, 8])
    qs = [b.node("Transpose", [b.node("Reshape", [b.matmul(x, 8, 8, name=n), b.const(np.array([0, 0, 2, 4]))])],
                 perm=[0, 2, 1, 3]) for n in ("q", "k", "v")]
    probs = b.node("Softmax", [b.node("MatMul", [qs[0], b.node("Transpose", [qs[1]], perm=[0, 1, 3, 2])])])
    ctx = b.node("Transpose", [b.node("MatMul", [probs, qs[2]])], perm=[0, 2, 1, 3])
    heads = b.node("Gather", [b.node("Shape", [ctx]), b.const(np.array(2))], axis=0)
    b.output(b.matmul(b.node("Reshape", [ctx, b.const(np.array([0, 0, 8]))]), 8, 3, name="o"))
    b.output(heads, name="h", elem=onnx.TensorProto.INT64)
    a = analyze(normalize(b.model()))
    assert "reads the head count" in {s.node: s.reason for s in a.skipped}["q"]


def test_bert_tiny_heads():
    model = load_model(FIXTURES / "bert_tiny.onnx")
    heads = [g for g in analyze(model).groups if g.unit == "head"]
    assert [(g.name, g.channels, g.heads.head_dim) for g in heads] == [
        ("/layers.0/attn/query/MatMul", 4, 8), ("/layers.1/attn/query/MatMul", 4, 8)]
    assert [c.node for c in heads[0].consumers] == ["/layers.0/attn/out/MatMul"]
    data = dict(np.load(FIXTURES / "bert_tiny_calib.npz"))
    _, _, kept = assert_masked_equivalent(model, {k: v[:16] for k, v in data.items()},
                                          {k: v[16:20] for k, v in data.items()}, 0.5, mode="layer")
    assert len(kept["/layers.0/attn/query/MatMul"]) == 2


# -- the torch exports of tools/fixture_transformers.py (tests/fixtures/transformers) ----------

TRANSFORMERS = FIXTURES / "transformers"
EXPORTS = {"bert_hf": "qkv", "vit_tiny": "qkv", "gpt2_tiny": "packed", "sdpa_encoder": "qkv", "llama_tiny": "gqa"}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_torch_exports(name):
    """Every layer's heads are one group; keep-all is exact; half the heads pass the masked check."""
    path = TRANSFORMERS / f"{name}.onnx"
    model = load_model(path)
    heads = [g for g in analyze(model).groups if g.unit == "head"]
    units = 2 if EXPORTS[name] == "gqa" else 4                # llama_tiny: 4 query heads on 2 K/V heads
    assert len(heads) == 2 and all(g.channels == units and g.heads.head_dim == 8 for g in heads)
    assert all(g.heads.num_heads == 4 for g in heads)
    assert all(len(g.producers) == (1 if EXPORTS[name] == "packed" else 3) for g in heads)
    names = {i.name for i in model.graph.input}
    data = {k: v for k, v in np.load(TRANSFORMERS / f"{name}_calib.npz").items() if k in names}
    check = {k: v[-4:] for k, v in data.items()}
    pruned, _ = prune(model, data, keep=1.0)
    for a, b in zip(B.run(model, check), B.run(pruned, check)):
        np.testing.assert_array_equal(a, b)
    _, _, kept = assert_masked_equivalent(model, {k: v[:12] for k, v in data.items()}, check, 0.5, mode="layer")
    assert all(len(kept[g.name]) == units // 2 for g in heads)


# -- grouped-query attention: a unit is one K/V head with its query heads -----------------------

def test_gqa_units_are_kv_groups():
    g = head_group(A.gqa(heads=6, kv=3))
    assert g.channels == 3 and g.heads.queries_per_unit == 2 and g.heads.num_heads == 6
    blocks = {s.name: s.layout.block for s in g.sites}
    q, k, v = (next(p.weight for p in g.producers if p.node == n) for n in "qkv")
    assert (blocks[q], blocks[k], blocks[v]) == (8, 4, 4)     # Q: 2 query heads x 4 per unit
    assert g.consumers[0].layout.block == 8


@pytest.mark.parametrize("keep", (0.3, 0.6))
@pytest.mark.parametrize("rotary", (True, False))
def test_gqa_masked_equivalence(keep, rotary):
    model = A.gqa(heads=6, kv=3, rotary=rotary)
    _, _, kept = assert_masked_equivalent(model, inputs(model, 24, 1), inputs(model, 5, 7), keep)
    assert 0 < len(kept["q"]) < 3


def test_gqa_keep_all_and_refit_all():
    """Keep-all is exact; seq mode with --refit all (which may give K/V a bias before their
    heads are pruned) gives a valid, close model."""
    model = A.gqa()
    data = inputs(model, 32, 1)
    pruned, _ = prune(model, data, keep=1.0)
    for a, b in zip(B.run(model, data), B.run(pruned, data)):
        np.testing.assert_array_equal(a, b)
    pruned, report = prune(model, data, keep=0.5, mode="seq", refit="all")
    assert [g["channels_after"] for g in report.groups if g.get("unit") == "head"] == [1]
    assert B.run(pruned, data)[0].shape == B.run(model, data)[0].shape


def test_gqa_repeated_with_tile_is_refused():
    a = analyze(normalize(A.gqa(repeat="tile")))
    assert not [g for g in a.groups if g.unit == "head"]
    assert "Tile" in {s.node: s.reason for s in a.skipped}["k"]
