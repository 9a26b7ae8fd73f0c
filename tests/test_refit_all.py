"""`--refit all`: every Conv/Gemm/MatMul whose input drifted is refitted to the original
layer's output (seq/asym), checked against onnxruntime on tiny models."""
import numpy as np
import pytest

import builders as B
from onnxprune import OnnxPruneError, prune
from onnxprune.capture.stream import submodel
from onnxprune.solve.refit import whole_problem
from onnxprune.solve.reweight import least_squares
from onnxprune.solve.ridge import GRID


def residual_chain(kind: str, seed=0):
    """layer1 -> relu -> layer2 (+ input) -> relu -> layer3 (+ its input) -> relu -> head -> y.
    Only layer1's channels are prunable (the residual Adds tie the rest to the graph input), so
    layer3 and head read drifted inputs without being consumers of a pruned group.
    Returns (model, {layer3 name, head name} -> tensor holding that layer's output)."""
    b = B.GraphBuilder(seed)
    if kind in ("conv", "conv_nobias", "conv_bn", "depthwise"):
        x = b.input("x", ["N", 4, 6, 6])
        h = b.relu(b.conv(x, 4, 8, name="layer1"))
        h = b.relu(b.node("Add", [b.conv(h, 8, 4, name="layer2"), x]))
        if kind == "depthwise":
            w = b.const(b.randn(4, 1, 3, 3))
            y3 = b.node("Conv", [h, w], name="layer3", group=4, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        elif kind == "conv_bn":
            y3 = b.bn(b.conv(h, 4, 4, bias=False, name="layer3"), 4)
        else:
            y3 = b.conv(h, 4, 4, bias=kind == "conv", name="layer3")
        h = b.relu(b.node("Add", [y3, h]))
        h = b.node("Flatten", [h], axis=1)
        y = b.gemm(h, 4 * 36, 3, name="head")
        b.output(y)
        return b.model(), {"layer3": y3, "head": y}
    x = b.input("x", ["N", 6])
    if kind.startswith("matmul"):
        bias = kind == "matmul"
        layer = lambda t, i, o, name: b.matmul(t, i, o, bias=bias, name=name)     # noqa: E731
    else:
        trans_b = int(kind == "gemm_t")
        layer = lambda t, i, o, name: b.gemm(t, i, o, trans_b=trans_b, name=name)     # noqa: E731
    h = b.relu(layer(x, 6, 10, "layer1"))
    h = b.relu(b.node("Add", [layer(h, 10, 6, "layer2"), x]))
    y3 = layer(h, 6, 6, "layer3")
    h = b.relu(b.node("Add", [y3, h]))
    y = layer(h, 6, 3, "head")
    b.output(y)
    return b.model(), {"layer3": y3, "head": y}


def calib(model, n=128, seed=1):
    return B.random_inputs(model, n, seed)


def tensor(model, name, feeds):
    return B.run(submodel(model, [name]), feeds)[0].astype(np.float64)


def rel(a, b):
    return float(np.sum((a - b) ** 2) / np.sum(a ** 2))


KINDS = ["gemm", "gemm_t", "matmul", "matmul_nobias", "conv", "conv_nobias", "conv_bn"]


@pytest.mark.parametrize("kind", KINDS)
def test_drifted_layers_are_refitted_and_their_error_drops(kind):
    model, outs = residual_chain(kind)
    data = calib(model)
    # each layer's own original output is the target here (tests/test_residual_target.py has the sum)
    before, rb = prune(model, data, keep=0.5, refit="consumers")
    after, ra = prune(model, data, keep=0.5, refit="all", residual_target="branch")
    assert "refits" not in rb.to_dict()
    entries = {e["node"]: e for e in ra.to_dict()["refits"]}
    assert set(entries) == {"layer3", "head"}          # layer1 reads the graph input: unchanged
    assert set(entries["layer3"]) == {"node", "rel_error_before", "rel_error_after", "rows", "features", "ridge"}
    assert all(e["ridge"] in GRID for e in entries.values())      # --ridge auto: a value of its grid
    # the first refitted layer's numbers are the measured output errors on the calibration data
    ref = tensor(model, outs["layer3"], data)
    e = entries["layer3"]
    if kind == "conv_bn":      # outs["layer3"] is the BN's output, and the intercept moved into its mean
        assert rel(ref, tensor(after, outs["layer3"], data)) < rel(ref, tensor(before, outs["layer3"], data))
    else:
        assert rel(ref, tensor(before, outs["layer3"], data)) == pytest.approx(e["rel_error_before"], rel=1e-3,
                                                                              abs=1e-9)
        assert rel(ref, tensor(after, outs["layer3"], data)) == pytest.approx(e["rel_error_after"], rel=1e-3,
                                                                             abs=1e-9)
    assert e["rel_error_after"] < e["rel_error_before"]
    assert entries["head"]["rel_error_after"] < entries["head"]["rel_error_before"]
    final = outs["head"]
    assert rel(tensor(model, final, data), tensor(after, final, data)) < rel(tensor(model, final, data),
                                                                            tensor(before, final, data))
    # the groups are pruned exactly as with --refit consumers (no refit precedes layer1's step)
    assert [g["kept"] for g in ra.groups] == [g["kept"] for g in rb.groups]


def test_refit_is_the_default_in_asym_and_seq_with_data():
    model, _ = residual_chain("gemm")
    data = calib(model)
    for mode in ("asym", "seq"):
        _, report = prune(model, data, keep=0.5, mode=mode)
        assert {e["node"] for e in report.to_dict()["refits"]} == {"layer3", "head"}
    _, report = prune(model, data, keep=0.5, mode="layer")
    assert "refits" not in report.to_dict()
    with pytest.raises(OnnxPruneError, match="--refit all needs --mode seq or asym"):
        prune(model, data, keep=0.5, mode="layer", refit="all")


def test_refit_consumers_gives_identical_models_to_the_unset_layer_mode():
    model, _ = residual_chain("conv")
    data = calib(model)
    a, _ = prune(model, data, keep=0.5, mode="layer")
    b, _ = prune(model, data, keep=0.5, mode="layer", refit="consumers")
    assert a.SerializeToString() == b.SerializeToString()


def test_keep_one_reproduces_outputs_exactly_and_refits_nothing():
    model, outs = residual_chain("conv")
    data = calib(model)
    pruned, report = prune(model, data, keep=1.0, refit="all")
    assert report.to_dict()["refits"] == []
    np.testing.assert_array_equal(B.run(model, data)[0], B.run(pruned, data)[0])


def test_grouped_conv_is_refused_with_a_reason():
    model, _ = residual_chain("depthwise")
    _, report = prune(model, calib(model), keep=0.5, refit="all")
    assert {e["node"] for e in report.to_dict()["refits"]} == {"head"}
    assert any("layer3 not refitted" in n and "grouped" in n for n in report.notes)


def test_data_free_method_without_data_does_not_refit():
    model, _ = residual_chain("gemm")
    _, report = prune(model, None, keep=0.5, method="weight-norm", reweight=False)
    assert "refits" not in report.to_dict()


@pytest.mark.parametrize("method", ["weight-norm", "random", "sampling", "coreset"])
def test_every_method_refits_with_data(method):
    model, _ = residual_chain("gemm")
    _, report = prune(model, calib(model), keep=0.5, method=method)
    assert {e["node"] for e in report.to_dict()["refits"]} == {"layer3", "head"}


def test_fewer_rows_than_features_is_reported():
    model, _ = residual_chain("conv")
    _, report = prune(model, calib(model, n=3), keep=0.5, refit="all", batch_size=3)
    entries = {e["node"]: e for e in report.to_dict()["refits"]}
    assert entries["head"]["rows"] == 3 and entries["head"]["features"] == 4 * 36 + 1
    assert any("fewer calibration rows than input features" in n and "head" in n for n in report.notes)


def test_ridge_toward_w0_is_the_closed_form():
    rng = np.random.default_rng(0)
    n, d, m = 50, 7, 4
    x = np.hstack([rng.standard_normal((n, d)), np.ones((n, 1))])
    xa = x + 0.1 * rng.standard_normal(x.shape)
    xa[:, -1] = 1
    wt = rng.standard_normal((d + 1, m))
    w0 = rng.standard_normal((d + 1, m))
    gram, cross = x.T @ x, x.T @ xa
    target = float(np.sum((xa @ wt) ** 2))
    problem = whole_problem(gram, cross @ wt, target, w0, np)
    ridge = 0.3
    lam = ridge * np.mean(np.diag(gram)[:d])
    penalty = lam * np.eye(d + 1)
    penalty[d, d] = 0.0                         # the intercept is not penalised
    expected = np.linalg.solve(gram + penalty, cross @ wt + penalty @ w0)
    got = least_squares(problem, [], ridge, np, w0=w0)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    # its objective is the closed form's: ||X W - Xa Wt||² + λ||W - W0||² (features only)
    err = problem.error([], got, np)
    assert err == pytest.approx(float(np.sum((x @ got - xa @ wt) ** 2)), rel=1e-8)
    np.testing.assert_allclose(least_squares(problem, [], 0.0, np, w0=w0), np.linalg.solve(gram, cross @ wt), rtol=1e-8)


def test_fp16_model_is_refitted_in_its_own_dtype():
    from onnx import TensorProto

    b = B.GraphBuilder(0, dtype=np.float16)
    x = b.input("x", ["N", 6], elem=TensorProto.FLOAT16)
    h = b.relu(b.matmul(x, 6, 10, name="layer1"))
    h = b.relu(b.node("Add", [b.matmul(h, 10, 6, name="layer2"), x]))
    y = b.matmul(h, 6, 3, bias=False, name="head")
    b.output(y, elem=TensorProto.FLOAT16)
    model = b.model()
    data = {"x": np.random.default_rng(1).standard_normal((64, 6)).astype(np.float16)}
    pruned, report = prune(model, data, keep=0.5, refit="all")
    assert [e["node"] for e in report.to_dict()["refits"]] == ["head"]
    dtypes = {t.data_type for t in pruned.graph.initializer if t.name != "sizes"}
    assert dtypes <= {TensorProto.FLOAT16, TensorProto.INT64}
    assert B.run(pruned, data)[0].dtype == np.float16


def test_tied_weights_are_not_refitted():
    b = B.GraphBuilder(0)
    x = b.input("x", ["N", 6])
    h = b.relu(b.gemm(x, 6, 10, name="layer1"))
    h = b.relu(b.node("Add", [b.gemm(h, 10, 6, name="layer2"), x]))
    w = b.const(b.randn(6, 6))
    h = b.relu(b.node("Add", [b.node("Gemm", [h, w], name="layer3", transB=1), h]))
    y = b.node("Gemm", [h, w], name="layer4", transB=1)        # the same weight again
    b.output(b.gemm(y, 6, 3, name="head"))
    model = b.model()
    _, report = prune(model, calib(model), keep=0.5, refit="all")
    assert {e["node"] for e in report.to_dict()["refits"]} == {"head"}
    assert any("layer3 not refitted" in n and "tied" in n for n in report.notes)


def test_intercept_of_a_conv_before_batchnorm_moves_into_its_mean():
    from onnxprune.graph.index import float_param_count

    model, _ = residual_chain("conv_bn")
    data = calib(model)
    before, _ = prune(model, data, keep=0.5, refit="consumers")
    after, report = prune(model, data, keep=0.5, refit="all")
    assert "layer3" in {e["node"] for e in report.to_dict()["refits"]}
    assert float_param_count(after) == float_param_count(before)      # no bias added: the budget holds
    conv = next(n for n in after.graph.node if n.name == "layer3")
    assert len(conv.input) == 2


def test_ridge_without_intercept_is_the_closed_form_on_the_features():
    rng = np.random.default_rng(1)
    n, d, m = 40, 5, 3
    x = np.hstack([rng.standard_normal((n, d)) + 2.0, np.ones((n, 1))])   # offset: an intercept would help
    wt, w0 = rng.standard_normal((d + 1, m)), rng.standard_normal((d + 1, m))
    problem = whole_problem(x.T @ x, x.T @ x @ wt, float(np.sum((x @ wt) ** 2)), w0, np)
    ridge = 0.2
    g = x[:, :d].T @ x[:, :d]
    lam = ridge * np.mean(np.diag(g))
    expected = np.linalg.solve(g + lam * np.eye(d), x[:, :d].T @ (x @ wt) + lam * w0[:d])
    got = least_squares(problem, [], ridge, np, w0=w0, intercept=False)
    np.testing.assert_allclose(got[:d], expected, rtol=1e-10, atol=1e-12)
    assert not got[d].any()


@pytest.mark.parametrize("kind", ["conv_nobias", "matmul_nobias"])
def test_a_layer_without_bias_is_refitted_without_one(kind):
    """The budget counts no bias for a layer that is not a consumer, so its refit adds none:
    the parameter count is --refit consumers', and the refitted layer still reads two inputs."""
    from onnxprune.graph.index import float_param_count

    model, _ = residual_chain(kind)
    data = calib(model)
    before, _ = prune(model, data, keep=0.5, refit="consumers")
    after, report = prune(model, data, keep=0.5, refit="all")
    entries = {e["node"]: e for e in report.to_dict()["refits"]}
    assert entries["layer3"]["rel_error_after"] < entries["layer3"]["rel_error_before"]
    assert float_param_count(after) == float_param_count(before)
    layer3 = next(n for n in after.graph.node if n.name == "layer3")
    assert len(layer3.input) == 2
    assert [n.op_type for n in after.graph.node].count("Add") == [n.op_type for n in before.graph.node].count("Add")
