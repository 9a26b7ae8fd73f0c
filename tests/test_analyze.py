import numpy as np
import pytest

import builders as B
from onnxprune import OnnxPruneError
from onnxprune import analyze


def names(analysis):
    return [g.name for g in analysis.groups]


def test_mlp_groups_and_last_layer_left_alone():
    a = analyze(B.mlp())
    assert names(a) == ["fc1", "fc2"]
    assert [s.node for s in a.skipped] == ["fc3"]
    assert "model output" in a.skipped[0].reason
    fc1 = a.group("fc1")
    assert fc1.channels == 16 and fc1.passthrough == ("relu2",) or fc1.passthrough[0].startswith("relu")
    assert [c.node for c in fc1.consumers] == ["fc2"]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_weight_axes_follow_transb(trans_b):
    a = analyze(B.mlp(trans_b=trans_b))
    fc1 = a.group("fc1")
    producer_axis = {p.name: p.axis for p in fc1.sites}
    weight = fc1.sites[0].name
    assert producer_axis[weight] == (0 if trans_b else 1)
    assert fc1.consumers[0].weight_axis == (1 if trans_b else 0)


def test_cnn_flatten_block_and_pass_through_params():
    a = analyze(B.cnn())
    assert names(a) == ["conv1", "conv2", "fc1"]
    conv1 = a.group("conv1")
    ops = [n.rstrip("0123456789") for n in conv1.passthrough]
    assert ops == ["batchnormalization", "relu", "maxpool"]
    # conv weight + bias, and the four BatchNormalization parameters, all on axis 0
    assert len(conv1.sites) == 6 and all(s.axis == 0 for s in conv1.sites)
    assert conv1.consumers[0].block == 9
    conv2 = a.group("conv2")
    fc1 = conv2.consumers[0]
    assert (fc1.op, fc1.layout.block, fc1.block) == ("Gemm", 16, 16)


def test_global_pool_gives_block_one():
    a = analyze(B.cnn(flatten=False))
    assert a.group("conv2").consumers[0].block == 1


def test_matmul_with_and_without_bias():
    with_bias = analyze(B.matmul_mlp(bias=True)).group("mm1")
    prod = with_bias.producers[0]
    assert prod.nodes[0] == "mm1" and prod.bias_node is not None and prod.weight_axis == 1
    assert with_bias.consumers[0].bias is not None
    without = analyze(B.matmul_mlp(bias=False)).group("mm1")
    assert without.producers[0].nodes == ("mm1",) and without.consumers[0].bias is None


def residual_block(head: bool):
    b = B.GraphBuilder()
    x = b.input("x", ["N", 4, 6, 6])
    stem = b.relu(b.conv(x, 4, 8, name="stem"))
    inner = b.relu(b.conv(stem, 8, 8, name="inner"))
    out = b.conv(inner, 8, 8, name="out")
    y = b.relu(b.node("Add", [out, stem], name="residual"))
    if head:
        y = b.conv(y, 8, 3, name="head")
    b.output(y)
    return b.model()


def test_residual_add_couples_its_producers_into_one_group():
    a = analyze(residual_block(head=True))
    assert names(a) == ["stem", "inner"]
    stream = a.group("stem")
    assert [p.node for p in stream.producers] == ["stem", "out"]
    assert [c.node for c in stream.consumers] == ["inner", "head"]
    assert "residual" in stream.passthrough


def test_coupled_group_reaching_the_output_is_refused_for_every_member():
    a = analyze(residual_block(head=False))
    assert names(a) == ["inner"]
    reasons = {s.node: s.reason for s in a.skipped}
    assert "model output" in reasons["out"]
    assert "coupled with 'out'" in reasons["stem"] and "model output" in reasons["stem"]


def test_shared_weight_is_refused():
    b = B.GraphBuilder()
    x = b.input("x", ["N", 6])
    w = b.const(b.randn(6, 6))
    h = b.relu(b.node("Gemm", [x, w], name="fc1", transB=1))
    h = b.relu(b.node("Gemm", [h, w], name="fc2", transB=1))
    b.output(b.gemm(h, 6, 2, name="fc3"))
    a = analyze(b.model())
    assert names(a) == []
    assert any("shared" in s.reason for s in a.skipped)


def test_unknown_pass_through_is_refused():
    b = B.GraphBuilder()
    x = b.input("x", ["N", 6])
    h = b.node("Softmax", [b.gemm(x, 6, 5, name="fc1")], axis=1)
    b.output(b.gemm(h, 5, 2, name="fc2"))
    a = analyze(b.model())
    assert names(a) == []
    assert "Softmax" in a.skipped[0].reason


def test_prelu_slope_and_per_channel_constants_are_sliced():
    b = B.GraphBuilder()
    x = b.input("x", ["N", 3, 5, 5])
    h = b.conv(x, 3, 4, name="conv1")
    h = b.node("PRelu", [h, b.const(np.full((4, 1, 1), 0.1))])
    h = b.node("Mul", [h, b.const(np.arange(1.0, 5.0).reshape(4, 1, 1))])
    h = b.node("Add", [b.const(np.array([0.5])), h])
    b.output(b.conv(h, 4, 2, name="conv2"))
    g = analyze(b.model()).group("conv1")
    sliced = {s.name: s.axis for s in g.sites}
    assert len(sliced) == 4                  # weight, bias, PRelu slope, Mul constant (scalar Add not)
    assert sorted(sliced.values()) == [0, 0, 0, 0]


def test_exclude_moves_group_to_skipped_and_unknown_name_errors():
    a = analyze(B.mlp(), exclude=["fc1"])
    assert names(a) == ["fc2"]
    assert any(s.node == "fc1" and "exclude" in s.reason for s in a.skipped)
    with pytest.raises(OnnxPruneError, match="nope"):
        analyze(B.mlp(), exclude=["nope"])
