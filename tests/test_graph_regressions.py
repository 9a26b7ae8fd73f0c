"""Regressions of graph analysis that once produced a silently wrong model or a failed run."""
import numpy as np
import onnx

import builders as B
from onnxprune import analyze, prune
from onnxprune.graph.index import GraphIndex
from onnxprune.rewrite.masked import masked_original
from onnxprune.io.calib import fixed_batch, input_specs


def _masked(model, analysis, report):
    """The original with each removed channel's consumer weight rows zeroed (rewrite/masked.py)."""
    return masked_original(model, analysis.groups, {r["name"]: r["kept"] for r in report.groups})


def _prunes_like_masked(model, data, **options):
    analysis = analyze(model)
    pruned, report = prune(model, data, keep=0.5, method="random", reweight=False, seed=2, **options)
    (got,) = B.run(pruned, data)
    (want,) = B.run(_masked(model, analysis, report), data)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return analysis, report


def _divided_by_width(pick: int, start: int | None = None):
    """up(6->10) -> Relu -> Shape -> Gather(pick) -> Cast -> Div -> down: the activations are
    divided by the channel count read from their own shape."""
    b = B.GraphBuilder(0)
    x = b.input("x", ["N", 6])
    h = b.relu(b.gemm(x, 6, 10, name="up"))
    shape = b.node("Shape", [h], **({} if start is None else {"start": start}))
    width = b.node("Gather", [shape, b.const(np.array(pick), "pick")], axis=0)
    width = b.node("Cast", [width], to=onnx.TensorProto.FLOAT)
    b.output(b.gemm(b.node("Div", [h, width]), 10, 3, name="down"))
    return b.model()


def test_negative_gather_of_the_channel_dim_is_refused():
    """Gather(-1) on Shape of [N, 10] reads the channel count (10) exactly like Gather(1): it
    was accepted, and pruning to 5 channels doubled the output."""
    for pick, start in ((-1, None), (1, None), (0, -1), (-1, 1)):
        analysis = analyze(_divided_by_width(pick, start))
        assert not analysis.groups, (pick, start)
        reasons = {s.node: s.reason for s in analysis.skipped}
        assert "reads the channel count" in reasons["up"], (pick, start)


def test_negative_gather_of_another_dim_is_followed():
    """Gather(-2) of Shape of [N, 10] reads the batch: the group stays prunable, and a negative
    pick in a Reshape target (Gather(Shape(h), [-4]) of a rank-4 h) reads the batch too."""
    b = B.GraphBuilder(1)
    x = b.input("x", ["N", 6])
    h = b.relu(b.gemm(x, 6, 10, name="up"))
    rows = b.node("Gather", [b.node("Shape", [h]), b.const(np.array(-2), "pick")], axis=0)
    rows = b.node("Cast", [rows], to=onnx.TensorProto.FLOAT)
    b.output(b.gemm(b.node("Div", [h, rows]), 10, 3, name="down"))
    data = {"x": np.random.default_rng(1).standard_normal((32, 6)).astype(np.float32)}
    analysis, _ = _prunes_like_masked(b.model(), data)
    assert [g.name for g in analysis.groups] == ["up"]

    b = B.GraphBuilder(2)
    h = b.relu(b.conv(b.input("x", ["N", 3, 4, 4]), 3, 6, strides=[2, 2], name="conv1"))
    batch = b.node("Gather", [b.node("Shape", [h]), b.const(np.array([-4]), "pick")], axis=0)
    target = b.node("Concat", [batch, b.const(np.array([-1]), "rest")], axis=0)
    b.output(b.gemm(b.node("Reshape", [h, target]), 24, 5, name="fc"))
    data = {"x": np.random.default_rng(2).standard_normal((16, 3, 4, 4)).astype(np.float32)}
    analysis, _ = _prunes_like_masked(b.model(), data)
    assert [g.name for g in analysis.groups] == ["conv1"]
    assert analysis.groups[0].consumers[0].layout.block == 4


def _minus_one_batch(model):
    """Store the batch dims as dim_value -1, as paddle2onnx exports do."""
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = -1
    return model


def _paddle_like_cnn():
    b = B.GraphBuilder(3)
    x = b.input("x", [1, 3, 6, 6])
    h = b.relu(b.conv(x, 3, 8, name="conv1"))
    h = b.relu(b.conv(h, 8, 6, name="conv2"))
    b.output(b.conv(h, 6, 4, name="conv3"))
    return _minus_one_batch(b.model())


def test_minus_one_batch_dims_are_dynamic():
    model = _paddle_like_cnn()
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1
    specs = input_specs(model)
    assert specs[0].dims == (None, 3, 6, 6) and fixed_batch(specs) is None
    idx = GraphIndex.build(model)
    assert idx.shapes["x"] == (None, 3, 6, 6) and idx.shapes["y"][0] is None
    assert idx.model_dims["x"][0] is None


def test_minus_one_batch_model_prunes_end_to_end():
    """Paddle2onnx-style batch -1: the run used to fail with 'no calibration rows were
    accumulated'; it must prune, and without reweighting equal the masked original."""
    model = _paddle_like_cnn()
    data = {"x": np.random.default_rng(3).standard_normal((24, 3, 6, 6)).astype(np.float32)}
    analysis, report = _prunes_like_masked(model, data)
    assert [g.name for g in analysis.groups] == ["conv1", "conv2"]
    assert all(len(r["kept"]) < r["channels_before"] for r in report.groups)
    pruned, _ = prune(model, data, keep=0.5, seed=2)            # greedy, reweighted, calibrated
    (y,) = B.run(pruned, data)
    assert y.shape == (24, 4, 6, 6) and np.isfinite(y).all()
