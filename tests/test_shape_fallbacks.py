"""Shapes onnx's static inference cannot give: onnxruntime's symbolic shape inference first,
then shapes measured on calibration runs (capture/shapes.py). A layer refused for an unknown
rank becomes prunable through each, and the pruned model computes the masked original."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import builders as B
from onnxprune import analyze
from onnxprune.capture import shapes
from onnxprune.cli import main
from onnxprune.errors import NothingToPrune
from onnxprune.graph.index import GraphIndex
from onnxprune.io.calib import Calibration
from onnxprune.rewrite.masked import masked_original
from onnxprune.run.pipeline import PruneOptions, Workspace

pytest.importorskip("sympy")      # onnxruntime's symbolic shape inference needs it


def custom_op_mlp(op: str, tokens: bool = False) -> onnx.ModelProto:
    """x -> com.microsoft `op` -> MatMul(4x8) -> Relu -> MatMul(8x3): static inference knows no
    com.microsoft op, so every shape after it is unknown. Symbolic inference knows Gelu,
    not Inverse; onnxruntime runs both (Inverse on square 4x4 matrices; `tokens` adds a
    dynamic axis T of them)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "W2")
    shape = ["N", "T", 4, 4] if tokens else ["N", 4, 4]
    nodes = [helper.make_node(op, ["x"], ["g"], domain="com.microsoft", name="custom"),
             helper.make_node("MatMul", ["g", "W1"], ["m1"], name="mm1"),
             helper.make_node("Relu", ["m1"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape[:-1] + [3])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def data(n, seed, tokens=None):
    shape = (n, 4, 4) if tokens is None else (n, tokens, 4, 4)
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def prune_and_check(model, calib, check=None, **options):
    """Prune without reweighting; the pruned model must equal the masked original (built from
    the groups the run used, i.e. with the fallback shapes) on `check` inputs."""
    opts = PruneOptions.of(keep=0.5, reweight=False, seed=3, **options)
    work = Workspace(model, calib, opts)
    pruned, report = work.prune(opts)
    kept = {g["name"]: g["kept"] for g in report.groups}
    assert [g.name for g in work.session.groups] == ["mm1"] and len(kept["mm1"]) == 4
    reference = masked_original(work.session.model, work.session.groups, kept)
    check = check or data(5, seed=9)
    want, got = B.run(reference, check)[0], B.run(pruned, check)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(want, B.run(model, check)[0])      # something was removed
    return work, report


def reshape_by_computed_shape() -> onnx.ModelProto:
    """A PaddleOCR-like head: relu(x @ W1) concatenated with a branch whose width comes from
    Reshape(x, [N, T, width / 2, 2]) (a Div onnx's data propagation does not follow), then
    @ W2. Static inference: 'Concat has an input of unknown width'."""
    b = B.GraphBuilder(0)
    x = b.input("x", ["N", "T", 6])
    a = b.relu(b.matmul(x, 6, 8, bias=False, name="mm1"))
    shape = b.node("Shape", [x])
    lead = b.node("Slice", [shape, b.const(np.array([0], np.int64)), b.const(np.array([2], np.int64))])
    width = b.node("Gather", [shape, b.const(np.array([2], np.int64))], axis=0)
    half = b.node("Div", [width, b.const(np.array([2], np.int64))])
    target = b.node("Concat", [lead, half, b.const(np.array([2], np.int64))], axis=0)
    branch = b.node("ReduceMax", [b.node("Reshape", [x, target])], axes=[3], keepdims=0)     # [N, T, 3]
    b.output(b.matmul(b.node("Concat", [a, branch], axis=2), 11, 4, bias=False, name="mm2"))
    return b.model()


def test_symbolic_inference_gives_a_computed_concat_width():
    model = reshape_by_computed_shape()
    reasons = [s.reason for s in analyze(model).skipped]
    assert any("Concat 'concat" in r and "has an input of unknown width" in r for r in reasons)
    tokens = {"x": np.random.default_rng(1).standard_normal((16, 5, 6)).astype(np.float32)}
    check = {"x": np.random.default_rng(2).standard_normal((3, 7, 6)).astype(np.float32)}   # another length
    work, _ = prune_and_check(model, tokens, check)
    assert set(work.session.index.shape_sources.values()) == {"symbolic"}
    concat = [n for n in model.graph.node if n.op_type == "Concat"][-1]
    assert work.session.index.shapes[concat.output[0]] == (None, None, 11)


def test_static_inference_refuses_the_layer():
    skipped = {s.node: s.reason for s in analyze(custom_op_mlp("Inverse")).skipped}
    assert skipped["mm1"] == "MatMul 'mm1' has an output of unknown rank"
    assert not analyze(custom_op_mlp("Inverse")).groups
    # com.microsoft Gelu keeps its input's rank (graph/fusedrank.py): no fallback needed for mm1
    assert [g.name for g in analyze(custom_op_mlp("Gelu")).groups] == ["mm1"]


def test_symbolic_inference_makes_it_prunable_without_data():
    work, report = prune_and_check(custom_op_mlp("Gelu"), None, method="weight-norm")
    assert work.session.index.shape_sources == {"g": "symbolic", "m1": "symbolic", "r": "symbolic"}
    assert work.session.index.shapes["m1"] == (None, 4, 8)
    assert any("symbolic shape inference: g, m1, r" in n for n in report.notes)


def test_measured_shapes_when_symbolic_inference_gives_up():
    work, report = prune_and_check(custom_op_mlp("Inverse"), data(16, seed=1))
    assert work.session.index.shape_sources == {"g": "measured", "m1": "measured", "r": "measured"}
    assert any("symbolic shape inference left 3 of them unknown" in n for n in report.notes)
    assert any("measured on two calibration runs: g, m1, r" in n for n in report.notes)


def test_measured_dims_that_vary_stay_dynamic():
    """Token counts are a dynamic input axis: the second run halves it, so that dim (and the
    batch) are recorded as dynamic, the fixed widths as numbers."""
    model = custom_op_mlp("Inverse", tokens=True)
    idx = GraphIndex.build(model)
    shapes.infer_symbolic(model, idx)
    notes = shapes.measure(model, idx, Calibration(data(4, seed=1, tokens=6), "test"))
    assert notes and idx.shapes["m1"] == (None, None, 4, 8) and idx.shapes["g"] == (None, None, 4, 4)
    groups = analyze(model, index=idx).groups
    assert [g.name for g in groups] == ["mm1"]


def test_without_data_only_symbolic_inference_is_tried():
    model = custom_op_mlp("Inverse")
    with pytest.raises(NothingToPrune, match="3 tensor shape.*unknown to static and symbolic.*calibration"):
        Workspace(model, None, PruneOptions.of(keep=0.5, reweight=False, method="weight-norm"))


def test_too_few_samples_are_said_and_nothing_is_guessed():
    model = custom_op_mlp("Inverse")
    idx = GraphIndex.build(model)
    notes = shapes.measure(model, idx, Calibration(data(2, seed=1), "test"))
    assert notes == ["3 tensor shape(s) unknown to static and symbolic inference were not measured: it needs 3 "
                     "calibration samples, there are 2"]
    assert not idx.shape_sources and "m1" not in idx.shapes


def test_fallbacks_never_override_static_shapes():
    idx = GraphIndex.build(B.mlp())
    before = dict(idx.shapes)
    assert idx.unknown_shapes() == []
    name = next(iter(idx.model_dims))
    assert idx.fill_shapes({name: (1, (7, 7, 7, 7, 7))}, "measured") == []
    assert idx.shapes == before and not idx.shape_sources


def test_analyze_command_uses_symbolic_inference_and_says_so(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(custom_op_mlp("Gelu"), path)
    out = CliRunner().invoke(main, ["analyze", str(path), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert [g["name"] for g in doc["groups"]] == ["mm1"]
    assert doc["shape_sources"] == {"g": "symbolic", "m1": "symbolic", "r": "symbolic"}
    text = CliRunner().invoke(main, ["analyze", str(path)])
    assert "note: shapes of 3 tensor(s) unknown to static inference came from onnxruntime's symbolic" in text.output


def test_an_unknown_answer_is_not_counted_as_filled():
    model = reshape_by_computed_shape()
    idx = GraphIndex.build(model)
    concat = [n for n in model.graph.node if n.op_type == "Concat"][-1].output[0]
    assert idx.model_dims[concat][2].startswith("unk__")            # onnx's name for "unknown"
    assert idx.fill_shapes({concat: (1, ("N", "T", "unk__7"))}, "symbolic") == []
    assert idx.fill_shapes({concat: (1, ("N", "T", 11))}, "symbolic") == [concat]
    assert idx.shapes[concat] == (None, None, 11) and idx.shape_sources == {concat: "symbolic"}


def test_symbolic_inference_writes_nothing_into_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's own infer_shapes saves an incomplete result as sym_shape_infer_temp.onnx
    (and data files) into the working directory; ours must leave it as it was."""
    monkeypatch.chdir(tmp_path)
    model = custom_op_mlp("Inverse")
    idx = GraphIndex.build(model)
    notes = shapes.infer_symbolic(model, idx)
    assert any("left 3 of them unknown" in n for n in notes)
    assert list(tmp_path.iterdir()) == []


def test_filled_shapes_do_not_propagate_in_a_graph_of_standard_ops_only():
    """Static inference re-runs from filled shapes only after a custom-domain op: in a plain
    ai.onnx graph the next fallback (measured shapes) must type what stays unknown, so that
    dim names stay comparable (a model input's `batch` next to measured dims broke the head
    merge proof of a real BERT export)."""
    from onnx import TensorProto, helper
    from onnxprune.graph.index import GraphIndex

    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="r"), helper.make_node("Relu", ["y"], ["z"], name="a"),
             helper.make_node("Relu", ["z"], ["out"], name="b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                                           helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    idx = GraphIndex.build(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert {"y", "z"} <= set(idx.unknown_shapes())
    assert idx.fill_shapes({"y": (TensorProto.FLOAT, ("N", 4))}, "symbolic") == ["y"]
    assert "z" in idx.unknown_shapes() and "y" not in idx.unknown_shapes()


def test_a_batch_folded_into_another_dim_stays_dynamic_and_gets_one_samples_size():
    """Reshape [N, T, 4, 4] -> [N*T, 4, 4] after an op no inference knows: the two measuring runs
    (2 samples x T vs 1 sample x T/2) make N*T dynamic, never a number; the third run, on one
    whole sample, gives the sizes FLOPs are counted at (T for the folded dim)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Inverse", ["x"], ["g"], domain="com.microsoft", name="custom"),
             helper.make_node("Reshape", ["g", "shape"], ["f"], name="fold"),
             helper.make_node("MatMul", ["f", "W"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(np.array([-1, 4, 4], dtype=np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")]
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    idx = GraphIndex.build(model)
    shapes.infer_symbolic(model, idx)
    shapes.measure(model, idx, Calibration(data(4, seed=1, tokens=6), "test"))
    assert idx.model_dims["f"] == ("measured_dynamic", 4, 4)
    assert idx.sample_dims["f"] == (6, 4, 4) and idx.sample_dims["g"] == (1, 6, 4, 4)
