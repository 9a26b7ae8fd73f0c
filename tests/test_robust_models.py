"""Model variety: every odd-but-legal model prunes into a valid model that keeps its opset, IR
version, dtypes, inputs and outputs, still runs in onnxruntime, and is exact at keep=1."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

import builders as B
import model_zoo as Z
from onnxprune import prune
from onnxprune.budget.flops import model_flops, sample_index
from onnxprune.io import largemodel
from onnxprune.capture import stats as stats_module
from onnxprune.cli import main
from onnxprune.graph.index import float_param_count


def check_pruned(model, pruned, report, data, keep):
    """The common contract of a pruned model; returns (original outputs, pruned outputs)."""
    onnx.checker.check_model(pruned, full_check=True)
    assert pruned.ir_version == model.ir_version and list(pruned.opset_import) == list(model.opset_import)
    assert [i.name for i in pruned.graph.input if i.name in data] == [i.name for i in model.graph.input if i.name in data]
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    before, after = B.run(model, data), B.run(pruned, data)
    assert [(a.shape, a.dtype) for a in before] == [(b.shape, b.dtype) for b in after]
    assert report.params_after == float_param_count(pruned)
    if keep == 1:
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
    else:
        assert report.params_after < report.params_before
    return before, after


def inputs_list_initializers(model):
    """Every initializer is listed as a graph input with its current shape (IR < 4 rule)."""
    listed = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    return all(listed.get(t.name) == list(t.dims) for t in model.graph.initializer)


@pytest.mark.parametrize("opset", sorted(Z.IR_FOR_OPSET))
@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_opsets_and_their_ir_versions(opset, keep):
    model = Z.opset_cnn(opset)
    data = B.random_inputs(model, 48)
    pruned, report = prune(model, data, keep=keep)
    check_pruned(model, pruned, report, data, keep)
    assert [g["name"] for g in report.groups] == ["conv1", "conv2", "fc1"]
    if model.ir_version < 4:
        assert inputs_list_initializers(pruned)


@pytest.mark.parametrize("opset", [7, 13])
def test_weights_stored_as_constant_nodes(opset):
    model = Z.as_constant_nodes(Z.opset_cnn(opset))
    assert not model.graph.initializer
    data = B.random_inputs(model, 48)
    for keep in (1.0, 0.5):
        pruned, report = prune(model, data, keep=keep)
        check_pruned(model, pruned, report, data, keep)
        assert "Constant" not in {n.op_type for n in pruned.graph.node}   # moved to initializers
        assert len(report.groups) == 3
        if model.ir_version < 4:
            assert inputs_list_initializers(pruned)


def test_scalar_and_list_constant_nodes_are_per_channel_constants():
    """Constant(value_float) and Constant(value_floats) feeding Mul/Add: the Add's 8 values are
    sliced with the channels, the scalar is left as is."""
    model = Z.scalar_constant_mlp()
    data = B.random_inputs(model, 64)
    pruned, report = prune(model, data, keep=0.5)
    check_pruned(model, pruned, report, data, 0.5)
    shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert shapes["shift"] == [4] and shapes["scale"] == []
    pruned1, report1 = prune(model, data, keep=1.0)
    check_pruned(model, pruned1, report1, data, 1.0)


def test_initializers_listed_as_inputs_at_a_modern_ir():
    model = Z.with_initializers_as_inputs(B.cnn())
    data = B.random_inputs(model, 48)
    pruned, report = prune(model, data, keep=0.5)
    check_pruned(model, pruned, report, data, 0.5)
    assert inputs_list_initializers(pruned)
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]


def test_fp16_model_keeps_fp16_and_accumulates_in_float64(monkeypatch):
    grams = []
    real = stats_module.GramAccumulator.result
    monkeypatch.setattr(stats_module.GramAccumulator, "result",
                        lambda self: grams.append(self.gram.dtype) or real(self))
    model = Z.fp16_cnn()
    data = B.random_inputs(model, 64)
    assert data["x"].dtype == np.float16
    for keep in (1.0, 0.5):
        pruned, report = prune(model, data, keep=keep)
        check_pruned(model, pruned, report, data, keep)
        assert {t.data_type for t in pruned.graph.initializer} == {TensorProto.FLOAT16}
    assert grams and set(grams) == {np.dtype(np.float64)}


def test_fp16_calibration_given_as_float32_is_converted():
    model = Z.fp16_cnn()
    data = B.random_inputs(model, 32)
    a, _ = prune(model, data, keep=0.5)
    b, _ = prune(model, {"x": data["x"].astype(np.float32)}, keep=0.5)
    assert a.SerializeToString() == b.SerializeToString()


def test_fp16_redundant_channels_removed_within_fp16_rounding():
    model, informative = Z.fp16_redundant_mlp()
    data = B.random_inputs(model, 200)
    pruned, report = prune(model, data, keep=informative / 8)
    assert 6 not in report.groups[0]["kept"] and 7 not in report.groups[0]["kept"]
    (y,), (z,) = B.run(model, data), B.run(pruned, data)
    assert z.dtype == np.float16
    np.testing.assert_allclose(z.astype(np.float32), y.astype(np.float32), rtol=5e-3, atol=5e-3 * np.abs(y).max())


def test_dynamic_batch_and_spatial_dims():
    model = Z.dynamic_cnn()
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((40, 3, 12, 10)).astype(np.float32)}
    for keep in (1.0, 0.5):
        pruned, report = prune(model, data, keep=keep)
        check_pruned(model, pruned, report, data, keep)
        # the spatial size is dynamic: FLOPs are counted at the calibration's (12 x 10)
        assert report.flops_before == model_flops(sample_index(model, {"x": (3, 12, 10)}).model)
        dims = [d.dim_param for d in pruned.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["N", "", "H", "W"]
        for shape in [(1, 3, 17, 9), (5, 3, 6, 30)]:   # sizes never seen in calibration
            other = {"x": rng.standard_normal(shape).astype(np.float32)}
            (y,), (z,) = B.run(model, other), B.run(pruned, other)
            assert z.shape == y.shape == (shape[0], 3)
            if keep == 1.0:
                np.testing.assert_array_equal(y, z)


def test_multiple_inputs_and_outputs():
    model = Z.multi_io_mlp()
    data = B.random_inputs(model, 50)
    for keep in (1.0, 0.5):
        pruned, report = prune(model, data, keep=keep)
        check_pruned(model, pruned, report, data, keep)
        assert [g["name"] for g in report.groups] == ["fa1", "fb1"]
        assert set(report.verify["output_rel_error"]) == {"ya", "yb", "yc"}
        assert report.verify["output_rel_error"]["yc"] == 0.0


def test_if_and_loop_subgraphs_are_left_untouched():
    model = Z.subgraph_mlp()
    data = B.random_inputs(model, 40)
    original = {n.name: n.SerializeToString() for n in model.graph.node if n.op_type in ("If", "Loop")}
    for keep in (1.0, 0.5):
        pruned, report = prune(model, data, keep=keep)
        check_pruned(model, pruned, report, data, keep)
        assert [g["name"] for g in report.groups] == ["fc1", "fc2"]
        assert any(s["node"] == "fc3" and "subgraph" in s["reason"] for s in report.skipped)
        after = {n.name: n.SerializeToString() for n in pruned.graph.node if n.op_type in ("If", "Loop")}
        assert after == original


def test_external_data_path_on_a_tiny_model(tmp_path, monkeypatch):
    """The >2 GB code path (skeletons, external data on output, onnxruntime from a file),
    exercised by lowering the threshold: input and output both with external data."""
    monkeypatch.setattr(largemodel, "EXTERNAL_DATA_THRESHOLD", 1000)
    monkeypatch.setattr(largemodel, "LARGE_TENSOR_BYTES", 64)
    model = B.cnn()
    onnx.save(B.cnn(), tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    data = B.random_inputs(model, 48)
    np.savez(tmp_path / "c.npz", **data)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    r = CliRunner().invoke(main, ["prune", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"),
                                  "-o", str(out), "--keep", "0.5", "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.onnx", "pruned.onnx.data"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    skeleton = onnx.load(out, load_external_data=False)
    locations = {e.value for t in skeleton.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"pruned.onnx.data"}
    assert all(int(e.value) % 4096 == 0 for t in skeleton.graph.initializer
               for e in t.external_data if e.key == "offset")
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    monkeypatch.setattr(largemodel, "EXTERNAL_DATA_THRESHOLD", 1_800_000_000)
    reference, report = prune(model, data, keep=0.5)       # the in-memory path gives the same model
    assert {t.name: numpy_helper.to_array(t).tobytes() for t in pruned.graph.initializer} == \
        {t.name: numpy_helper.to_array(t).tobytes() for t in reference.graph.initializer}
    (y,), (z,) = B.run(reference, data), B.run(pruned, data)
    np.testing.assert_array_equal(y, z)


@pytest.mark.parametrize("stats_dtype, floor", [("float64", 1e-10), ("float32", 1e-6)])
def test_zero_and_duplicate_conv_channels_are_removed_within_rounding(stats_dtype, floor):
    """conv1 has 8 filters: 5 duplicates 1, 6 and 7 are zero (zero after Relu). Keeping 5 with
    reweighting must drop 6, 7 and one of the twins, and move the outputs only by rounding
    (the Conv consumer pads its input, so this also checks the im2col borders). The reported
    error is zero up to the rounding of the statistics' products (float32: about 1e-7)."""
    b = B.GraphBuilder(seed=9)
    x = b.input("x", ["N", 3, 7, 7])
    w, bias = b.randn(8, 3, 3, 3), b.randn(8, scale=0.1)
    w[5], bias[5] = w[1], bias[1]
    w[6:], bias[6:] = 0.0, 0.0
    h = b.relu(b.node("Conv", [x, b.const(w), b.const(bias)], name="conv1", kernel_shape=[3, 3], pads=[1] * 4))
    b.output(b.conv(h, 8, 4, name="conv2"))
    model = b.model()
    data = B.random_inputs(model, 64)
    pruned, report = prune(model, data, keep=5 / 8, stats_dtype=stats_dtype)
    kept = set(report.groups[0]["kept"])
    assert len(kept) == 5 and not kept & {6, 7} and not {1, 5} <= kept
    (y,), (z,) = B.run(model, data), B.run(pruned, data)
    np.testing.assert_allclose(z, y, rtol=1e-5, atol=1e-5 * np.abs(y).max())
    assert report.groups[0]["rel_error"] < floor
