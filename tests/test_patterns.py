"""Graph patterns of real networks: analysis finds the right groups, pruning stays valid."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders as B
import patterns as P
from onnxprune import prune
from onnxprune import analyze

# builder -> {group name: (producers, consumers)}
EXPECTED = {
    "residual_projection": (P.residual_projection, {
        "stem": (["stem"], ["conv1", "proj"]),
        "conv1": (["conv1"], ["conv2"]),
        "conv2": (["conv2", "proj"], ["head"]),
        "head": (["head"], ["fc"]),
    }),
    "depthwise": (P.depthwise, {"conv1": (["conv1"], ["conv2"]), "conv2": (["conv2"], ["fc"])}),
    "concat": (P.concat, {"conv_a": (["conv_a"], ["conv_c"]), "conv_b": (["conv_b"], ["conv_c"]),
                          "conv_c": (["conv_c"], ["fc"])}),
    "split": (P.split, {"conv": (["conv"], ["conv_x", "conv_y"])}),
    "split_opset11": (lambda: P.split(opset=11), {"conv": (["conv"], ["conv_x", "conv_y"])}),
    "fan_out": (P.fan_out, {"conv": (["conv"], ["left", "right"])}),
    "erf_gelu_ffn": (P.erf_gelu_ffn, {"up": (["up"], ["down"])}),
    "swiglu": (P.swiglu, {"gate": (["gate", "up"], ["down"])}),
    "nhwc_flatten": (P.nhwc_flatten, {"conv": (["conv"], ["fc1"]), "fc1": (["fc1"], ["fc2"])}),
    "nhwc_flatten_dynamic": (lambda: P.nhwc_flatten(explicit=False),
                             {"conv": (["conv"], ["fc1"]), "fc1": (["fc1"], ["fc2"])}),
    "nchw_reshape": (P.nchw_reshape, {"conv": (["conv"], ["fc"])}),
    "layernorm_stream": (P.layernorm_stream, {"up": (["up"], ["down"])}),
}


def groups_of(model):
    return {g.name: ([p.node for p in g.producers], [c.node for c in g.consumers]) for g in analyze(model).groups}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_analysis_finds_the_expected_groups(name):
    build, expected = EXPECTED[name]
    assert groups_of(build()) == expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_keep_one_is_exact(name):
    model = EXPECTED[name][0]()
    data = B.random_inputs(model, 16)
    pruned, _ = prune(model, data, keep=1.0)
    for a, b in zip(B.run(model, data), B.run(pruned, data)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("mode", ["layer", "seq", "asym"])
def test_half_keep_is_valid_and_smaller(name, mode):
    model = EXPECTED[name][0]()
    data = B.random_inputs(model, 48)
    pruned, report = prune(model, data, keep=0.5, mode=mode)
    onnx.checker.check_model(pruned, full_check=True)
    before, after = B.run(model, data), B.run(pruned, data)
    assert [a.shape for a in before] == [b.shape for b in after]
    assert report.params_after < report.params_before
    for g in report.groups:
        assert g["channels_after"] == max(1, int(np.floor(g["channels_before"] * 0.5 + 0.5)))
        assert 0 <= g["rel_error"] <= 1 + 1e-9


def test_coupled_group_removes_the_same_channels_from_every_producer():
    model = P.residual_projection()
    data = B.random_inputs(model, 48)
    pruned, report = prune(model, data, keep=0.5)
    kept = next(g["kept"] for g in report.groups if g["name"] == "conv2")
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for producer in ("conv2", "proj"):
        w = nodes[producer].input[1]
        assert new[w].shape[0] == len(kept)
    # the projection is not a consumer of this group: its filters are the originals, sliced
    stem_kept = next(g["kept"] for g in report.groups if g["name"] == "stem")
    proj_w = weights[nodes["proj"].input[1]]
    assert new[nodes["proj"].input[1]].shape == (len(kept), len(stem_kept), 1, 1)
    assert proj_w.shape[0] == 10


def test_depthwise_filters_and_group_follow_the_channels():
    model = P.depthwise()
    pruned, report = prune(model, B.random_inputs(model, 32), keep=0.5)
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    group = next(a.i for a in dw.attribute if a.name == "group")
    kept = next(g["channels_after"] for g in report.groups if g["name"] == "conv1")
    assert group == kept
    w = next(t for t in pruned.graph.initializer if t.name == dw.input[1])
    assert list(w.dims) == [kept, 1, 3, 3]


@pytest.mark.parametrize("opset", [11, 17])
def test_split_sizes_follow_the_kept_channels(opset):
    model = P.split(opset=opset)
    pruned, report = prune(model, B.random_inputs(model, 32), keep=0.5)
    kept = np.array(report.groups[0]["kept"])
    want = [int((kept < 3).sum()), int((kept >= 3).sum())]
    node = next(n for n in pruned.graph.node if n.op_type == "Split")
    if opset >= 13:
        sizes = numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == node.input[1]))
    else:
        sizes = next(a.ints for a in node.attribute if a.name == "split")
    assert list(sizes) == want


def test_concat_groups_keep_the_opaque_input_channels():
    model = P.concat()
    pruned, report = prune(model, B.random_inputs(model, 32), keep=0.5)
    kept = {g["name"]: g["channels_after"] for g in report.groups}
    conv_c = next(n for n in pruned.graph.node if n.name == "conv_c")
    w = next(t for t in pruned.graph.initializer if t.name == conv_c.input[1])
    assert w.dims[1] == kept["conv_a"] + 3 + kept["conv_b"]


def test_explicit_reshape_width_is_rewritten():
    model = P.nchw_reshape()
    pruned, report = prune(model, B.random_inputs(model, 32), keep=0.4)
    shape = numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name.startswith("shape")))
    assert list(shape) == [0, report.groups[0]["channels_after"] * 16]


def test_layernorm_over_the_stream_is_refused_with_reason():
    reasons = {s.node: s.reason for s in analyze(P.layernorm_stream()).skipped}
    assert "LayerNormalization" in reasons["proj"] and "statistics" in reasons["proj"]


def test_swiglu_gate_and_up_lose_the_same_channels():
    """The gated pair is one group: gate and up lose the same columns, down those rows."""
    model = P.swiglu()
    pruned, report = prune(model, B.random_inputs(model, 32), keep=0.5)
    init = {t.name: t for t in pruned.graph.initializer}
    nodes = {n.name: n for n in pruned.graph.node}
    assert list(init[nodes["gate"].input[1]].dims) == [8, 8]
    assert list(init[nodes["up"].input[1]].dims) == [8, 8]
    assert list(init[nodes["down"].input[1]].dims) == [8, 8]


def test_coverage_counts_depthwise_channels_with_their_group():
    from onnxprune.graph.index import GraphIndex

    model = P.depthwise()
    idx = GraphIndex.build(model)
    cov = analyze(model, index=idx).coverage(idx)
    assert cov == {"prunable_channels": 8 + 8 + 6, "total_channels": 8 + 8 + 6 + 3, "share": round(22 / 25, 4)}


def masked_ffn():
    """An FFN on [N, T, 6] token vectors with an int64 mask input (unused by the math)."""
    from onnx import TensorProto

    b = B.GraphBuilder(3)
    x = b.input("x", ["N", 5, 6])
    b.input("mask", ["N", 5], elem=TensorProto.INT64)
    h = b.relu(b.matmul(x, 6, 10, name="up"))
    y = b.matmul(h, 10, 6, name="down")
    b.output(b.node("Mul", [y, b.node("Cast", [b.node("Unsqueeze", ["mask", b.const(np.array([2]))])], to=1)]))
    return b.model()


def test_row_mask_drops_padding_tokens_from_the_statistics():
    """Padding rows must not influence the fit: garbage in padded positions changes nothing."""
    model = masked_ffn()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5, 6)).astype(np.float32)
    mask = (np.arange(5)[None, :] < rng.integers(2, 6, size=40)[:, None]).astype(np.int64)
    noisy = x.copy()
    noisy[mask == 0] = 100 * rng.standard_normal(noisy[mask == 0].shape)
    kept = []
    for data in (x, noisy):
        pruned, report = prune(model, {"x": data, "mask": mask}, keep=0.5, row_mask="mask")
        kept.append(report.groups[0]["kept"])
        assert report.calibration["masked_consumers"] == ["down"]
    assert kept[0] == kept[1]
    # without the mask the padded garbage dominates and the choice changes
    _, plain = prune(model, {"x": noisy, "mask": mask}, keep=0.5)
    assert plain.groups[0]["kept"] != kept[0]


def test_row_mask_must_name_a_two_dimensional_input():
    from onnxprune import OnnxPruneError

    model = masked_ffn()
    data = {"x": np.zeros((4, 5, 6), np.float32), "mask": np.ones((4, 5), np.int64)}
    with pytest.raises(OnnxPruneError, match="--row-mask nope"):
        prune(model, data, keep=0.5, row_mask="nope")
