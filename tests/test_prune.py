"""End-to-end pruning of tiny models through the Python API, checked with onnxruntime."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders as B
from onnxprune import OnnxPruneError, prune
from onnxprune.graph.index import float_param_count

MODELS = {
    "mlp": B.mlp,
    "mlp_transb0": lambda: B.mlp(trans_b=0),
    "cnn_flatten": B.cnn,
    "cnn_gap": lambda: B.cnn(flatten=False),
    "matmul_bias": B.matmul_mlp,
    "matmul_nobias": lambda: B.matmul_mlp(bias=False),
    "matmul_tokens": lambda: B.matmul_mlp(tokens=5),
}


def calib(model, n=96, seed=1):
    return B.random_inputs(model, n, seed)


def weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_keep_one_reproduces_outputs_exactly(name):
    model = MODELS[name]()
    data = calib(model)
    pruned, report = prune(model, data, keep=1.0)
    assert report.params_after == report.params_before
    for a, b in zip(B.run(model, data), B.run(pruned, data)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["greedy", "weight-norm", "random"])
@pytest.mark.parametrize("mode", ["layer", "seq", "asym"])
def test_half_keep_gives_valid_smaller_model(name, method, mode):
    model = MODELS[name]()
    data = calib(model)
    pruned, report = prune(model, data, keep=0.5, method=method, mode=mode)
    onnx.checker.check_model(pruned, full_check=True)
    before, after = B.run(model, data), B.run(pruned, data)
    assert [a.shape for a in before] == [b.shape for b in after]
    assert report.params_after == float_param_count(pruned) < report.params_before
    assert pruned.ir_version == model.ir_version and pruned.opset_import == model.opset_import
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    for g in report.groups:
        assert g["channels_after"] == len(g["kept"]) == max(1, round(g["channels_before"] * 0.5))
        assert 0.0 <= g["rel_error"] <= 1.0 + 1e-9


def test_redundant_channels_are_removed_without_changing_outputs():
    model, informative = B.redundant_mlp()
    data = calib(model, n=200)
    pruned, report = prune(model, data, keep=informative / 8)
    g = report.groups[0]
    assert g["channels_after"] == informative
    assert 6 not in g["kept"] and 7 not in g["kept"] and not {1, 5} <= set(g["kept"])
    (y,), (z,) = B.run(model, data), B.run(pruned, data)
    np.testing.assert_allclose(z, y, rtol=1e-5, atol=1e-5 * np.abs(y).max())
    assert g["rel_error"] < 1e-10


def test_reported_rel_error_is_the_measured_output_error():
    """With one group whose consumer is the output layer, rel_error is exactly the output error."""
    model = B.mlp(widths=(12, 16, 4))
    data = calib(model, n=128)
    for reweight in (True, False):
        pruned, report = prune(model, data, keep=0.5, reweight=reweight, samples=128)
        (y,), (z,) = B.run(model, data), B.run(pruned, data)
        measured = float(np.sum((y.astype(np.float64) - z) ** 2) / np.sum(y.astype(np.float64) ** 2))
        assert report.groups[0]["rel_error"] == pytest.approx(measured, rel=1e-3)
        assert report.verify["output_rel_error"]["y"] == pytest.approx(measured, rel=1e-3)


def test_reweighting_beats_plain_slicing_on_calibration_data():
    model = B.cnn()
    data = calib(model, n=128)
    errs = {}
    for reweight in (True, False):
        _, report = prune(model, data, keep=0.5, method="weight-norm", reweight=reweight, mode="layer")
        errs[reweight] = [g["rel_error"] for g in report.groups]
    assert all(a <= b + 1e-12 for a, b in zip(errs[True], errs[False]))


def test_modes_agree_when_one_group_is_pruned():
    model = B.cnn()
    data = calib(model)
    results = {}
    for mode in ("layer", "seq", "asym"):
        refit = None if mode == "layer" else "consumers"      # --refit all would also refit fc2 in seq/asym
        # float64 products: the modes reach H by different products (G W vs Bᵀ(A W)), which
        # float32 rounds differently (about 1e-6 of the weights)
        pruned, report = prune(model, data, keep=0.5, mode=mode, exclude=["conv2", "fc1"], refit=refit,
                               stats_dtype="float64")
        results[mode] = (weights(pruned), report.groups[0]["kept"])
    ref_w, ref_kept = results["layer"]
    for mode in ("seq", "asym"):
        w, kept = results[mode]
        assert kept == ref_kept
        for k in ref_w:
            np.testing.assert_allclose(w[k], ref_w[k], rtol=1e-6, atol=1e-7)


def test_matmul_without_bias_gets_a_bias_add():
    model = B.matmul_mlp(bias=False)
    pruned, _ = prune(model, calib(model), keep=0.5)
    ops = [n.op_type for n in pruned.graph.node]
    assert ops.count("Add") == 1 and ops.index("Add") == ops.index("MatMul", ops.index("MatMul") + 1) + 1


def test_compression_target_is_reached_and_not_overshot():
    model = B.cnn()
    data = calib(model)
    _, report = prune(model, data, compression=2.0)
    assert report.compression >= 2.0
    # one more channel in every pruned group would fall below the target
    from onnxprune.graph.analyze import analyze
    from onnxprune.budget.cost import params_after
    from onnxprune.graph.index import GraphIndex
    idx = GraphIndex.build(model)
    groups = analyze(model).groups
    counts = {g["name"]: min(g["channels_before"], g["channels_after"] + 1) for g in report.groups}
    assert report.params_before / params_after(idx, groups, counts, True) < 2.0


def test_unreachable_compression_says_the_maximum():
    model = B.mlp()
    with pytest.raises(OnnxPruneError, match=r"unreachable.*\d+\.\d+x"):
        prune(model, calib(model), compression=1000)


def test_input_model_object_is_not_modified():
    model = B.cnn()
    snapshot = model.SerializeToString()
    prune(model, calib(model), keep=0.5)
    assert model.SerializeToString() == snapshot


def test_data_free_methods_run_without_calibration_only_without_reweighting():
    model = B.mlp()
    pruned, report = prune(model, None, keep=0.5, method="weight-norm", reweight=False)
    assert report.params_after < report.params_before and report.groups[0]["rel_error"] is None
    with pytest.raises(OnnxPruneError, match="calibration"):
        prune(model, None, keep=0.5)


def test_calib_random_is_opt_in_and_seeded():
    model = B.mlp()
    a, ra = prune(model, None, keep=0.5, calib_random=64, seed=3)
    b, rb = prune(model, None, keep=0.5, calib_random=64, seed=3)
    assert a.SerializeToString() == b.SerializeToString()
    assert ra.calibration == {"source": "random(64)", "samples": 64}


def test_report_has_the_documented_keys():
    model = B.mlp()
    _, report = prune(model, calib(model), keep=0.5)
    d = report.to_dict()
    for key in ("schema_version", "input", "output", "method", "mode", "reweight", "params_before", "params_after",
                "compression", "flops_before", "flops_after", "groups", "seconds"):
        assert key in d
    assert set(d["groups"][0]) >= {"name", "channels_before", "channels_after", "kept", "rel_error"}
    assert d["flops_after"] < d["flops_before"]
    assert set(d["seconds"]) >= {"analyze", "capture", "select", "reweight", "rewrite", "verify", "total"}


def test_fixed_batch_dimension_sets_the_batch_size():
    b = B.GraphBuilder()
    x = b.input("x", [4, 6])
    b.output(b.gemm(b.relu(b.gemm(x, 6, 8, name="fc1")), 8, 3, name="fc2"))
    model = b.model()
    data = {"x": np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)}
    pruned, report = prune(model, data, keep=0.5, batch_size=32)
    assert report.calibration["samples"] == 8 and report.verify["samples"] == 8
    assert B.run(pruned, {"x": data["x"][:4]})[0].shape == (4, 3)
    with pytest.raises(OnnxPruneError, match="fixed batch of 4"):
        prune(model, {"x": data["x"][:3]}, keep=0.5)
