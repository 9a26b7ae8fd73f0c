"""`--residual-target sum`: a layer ending a residual branch is refitted to the original sum at
its Add minus the current skip, checked against onnxruntime's values on tiny models."""
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import helper

import builders as B
from onnxprune import OnnxPruneError, prune
from onnxprune.capture.features import im2col
from onnxprune.graph.groups import ConvGeometry
from onnxprune.graph.index import GraphIndex
from onnxprune.graph.residual import skip_partner
from test_refit_all import calib, residual_chain, tensor


def skip_of(model, name):
    return next(n for n in model.graph.node if n.op_type == "Add" and any(
        i == name for i in n.input))


def design(model, node_name, feeds, kind):
    """The layer's input in `model` as rows x (features + 1), like its least-squares refit."""
    node = next(n for n in model.graph.node if n.name == node_name)
    x = tensor(model, node.input[0], feeds)
    if kind == "conv":
        return im2col(x, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), np, np.float64, intercept=True)
    return np.hstack([x, np.ones((x.shape[0], 1))])


def rows(y, kind):
    return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1]) if kind == "conv" else y


def normal_residual(x, fitted, target):
    """How far `fitted` is from the least-squares fit of `target` on x: the normal equations'
    residual x^T (fitted - target), relative to the sizes involved (0 at the optimum)."""
    return float(np.linalg.norm(x.T @ (fitted - target)) / (np.linalg.norm(x) * np.linalg.norm(target)))


@pytest.mark.parametrize("kind", ["gemm", "matmul", "conv"])
def test_the_last_layer_of_a_branch_fits_the_original_sum_minus_the_current_skip(kind):
    model, outs = residual_chain(kind)
    data = calib(model)
    y3 = outs["layer3"]
    skip = next(i for i in skip_of(model, y3).input if i != y3)
    sums, branches = {}, {}
    for target in ("sum", "branch"):
        pruned, report = prune(model, data, keep=0.5, refit="all", residual_target=target, ridge=0.0)
        x = design(pruned, "layer3", data, kind)
        fitted = rows(tensor(pruned, y3, data), kind)
        drift = rows(tensor(model, skip, data) - tensor(pruned, skip, data), kind)
        original = rows(tensor(model, y3, data), kind)
        sums[target] = normal_residual(x, fitted, original + drift)
        branches[target] = normal_residual(x, fitted, original)
        assert np.abs(drift).max() > 1e-3          # the skip did drift: the two targets differ
        if target == "sum":
            assert any("residual branch" in n for n in report.notes)
    assert sums["sum"] < 1e-6 and branches["branch"] < 1e-6
    assert branches["sum"] > 1e-3 and sums["branch"] > 1e-3


def test_the_sum_brings_the_block_outputs_closer_to_the_original():
    model, outs = residual_chain("conv")
    data = calib(model)
    add = skip_of(model, outs["layer3"]).output[0]
    errors = {}
    for target in ("sum", "branch"):
        pruned, _ = prune(model, data, keep=0.5, refit="all", residual_target=target)
        ref = tensor(model, add, data)
        errors[target] = float(np.sum((tensor(pruned, add, data) - ref) ** 2) / np.sum(ref ** 2))
    assert errors["sum"] < errors["branch"]


def test_sum_is_the_default_with_refit_all_in_asym_only():
    model, _ = residual_chain("gemm")
    data = calib(model)
    for opts, expected in (({}, True), ({"refit": "consumers"}, False), ({"mode": "seq"}, False)):
        _, report = prune(model, data, keep=0.5, **opts)
        assert any("residual branch" in n for n in report.notes) is expected, opts
    a, _ = prune(model, data, keep=0.5)
    b, _ = prune(model, data, keep=0.5, residual_target="sum")
    assert a.SerializeToString() == b.SerializeToString()
    with pytest.raises(OnnxPruneError, match="--residual-target sum needs --mode asym"):
        prune(model, data, keep=0.5, mode="seq", residual_target="sum")


def _index(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return GraphIndex.build(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _vi(name, dims):
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)


@pytest.mark.parametrize("case, expected", [
    ("add", "s"), ("relu_between", None), ("read_twice", None), ("other_shape", None), ("constant", None),
    ("model_output", None),
])
def test_skip_partner_only_for_an_add_of_equal_shape(case, expected):
    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    c = onnx.numpy_helper.from_array(np.ones((1, 4), np.float32), "c")
    mm = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    inputs = [_vi("x", ["N", 4]), _vi("s", ["N", 4]), _vi("t", ["N", 1])]
    outputs = [_vi("out", ["N", 4])]
    nodes = [mm, helper.make_node("Add", ["y", "s"], ["out"], name="add")]
    if case == "relu_between":
        nodes = [mm, helper.make_node("Relu", ["y"], ["r"]), helper.make_node("Add", ["r", "s"], ["out"])]
    elif case == "read_twice":
        nodes.append(helper.make_node("Relu", ["y"], ["r2"]))
        outputs.append(_vi("r2", ["N", 4]))
    elif case == "other_shape":
        nodes = [mm, helper.make_node("Add", ["y", "t"], ["out"])]
    elif case == "constant":
        nodes = [mm, helper.make_node("Add", ["y", "c"], ["out"])]
    elif case == "model_output":
        outputs.append(_vi("y", ["N", 4]))
    idx = _index(nodes, inputs, outputs, [w, c])
    consumer = next(k for k in idx_consumers(idx) if k.node == "mm")
    assert skip_partner(idx, consumer) == expected


def idx_consumers(idx):
    """A stand-in Consumer for each MatMul of `idx` (skip_partner reads only its node names)."""
    return [SimpleNamespace(node=n.name, bias_node=None) for n in idx.model.graph.node if n.op_type == "MatMul"]
