"""Bugs the property test (test_property.py) found, pinned as plain examples."""
import numpy as np
import onnx
import pytest

import builders as B
from onnxprune import prune
from onnxprune import analyze


@pytest.mark.parametrize("mode", ["layer", "seq", "asym"])
def test_nothing_left_to_capture_when_every_group_keeps_all_channels(mode):
    """keep=1 (or a fraction rounding back to every channel) used to crash layer mode."""
    model = B.mlp()
    data = B.random_inputs(model, 32)
    pruned, report = prune(model, data, keep=1.0, mode=mode)
    np.testing.assert_array_equal(B.run(pruned, data)[0], B.run(model, data)[0])


def biasless_chain(kind: str) -> onnx.ModelProto:
    """Three layers without biases: the middle one is first a consumer (refit adds a bias),
    then a producer whose new bias must be sliced with its channels."""
    b = B.GraphBuilder(seed=11)
    if kind == "Conv":
        x = b.input("x", ["N", 3, 6, 6])
        x = b.relu(b.conv(x, 3, 6, bias=False, name="l1"))
        x = b.relu(b.conv(x, 6, 5, bias=False, name="l2"))
        x = b.conv(x, 5, 2, bias=False, name="l3")
    else:
        x = b.input("x", ["N", 7])
        layer = b.gemm if kind == "Gemm" else b.matmul
        x = b.relu(layer(x, 7, 6, bias=False, name="l1"))
        x = b.relu(layer(x, 6, 5, bias=False, name="l2"))
        x = layer(x, 5, 2, bias=False, name="l3")
    b.output(x)
    return b.model()


@pytest.mark.parametrize("kind", ["Conv", "Gemm", "MatMul"])
@pytest.mark.parametrize("mode", ["layer", "seq", "asym"])
def test_bias_added_by_a_refit_is_sliced_when_that_layer_is_pruned(kind, mode):
    model = biasless_chain(kind)
    data = B.random_inputs(model, 40)
    pruned, report = prune(model, data, keep=0.5, mode=mode)
    onnx.checker.check_model(pruned, full_check=True)
    assert [g["channels_after"] for g in report.groups] == [3, 3]
    assert B.run(pruned, data)[0].shape == B.run(model, data)[0].shape


def test_scalar_matmul_bias():
    """MatMul + Add(scalar): analysed without crashing; when the refit widens the scalar to one
    value per output, the next pruning of that MatMul slices it."""
    b = B.GraphBuilder(seed=12)
    x = b.relu(b.matmul(b.input("x", ["N", 5]), 5, 6, name="l1"))
    x = b.node("Add", [b.node("MatMul", [x, b.const(b.randn(6, 4))], name="l2"), b.const(np.array(0.3))])
    b.output(b.matmul(b.relu(x), 4, 2, name="l3"))
    model = b.model()
    assert [g.name for g in analyze(model).groups] == ["l1", "l2"]
    data = B.random_inputs(model, 40)
    pruned, _ = prune(model, data, keep=0.5, mode="seq")
    onnx.checker.check_model(pruned, full_check=True)
    assert B.run(pruned, data)[0].shape == (40, 2)
