"""One test per named Reshape case (graph/reshape.py, graph/shapes.reshape_dims).

Accepted cases are pruned without reweighting and must compute exactly what the original
computes with the removed channels' consumer weight rows zeroed (the rows found through the
layout the case produced, so a wrong block/interleaving/axis shows up as different numbers).
Refused cases must give their reason.
"""
import numpy as np
import onnx
from onnx import helper, numpy_helper

import builders as B
from onnxprune.rewrite.masked import masked_original
from onnxprune import analyze, prune
from onnxprune.graph import reshape as R
from onnxprune.graph.index import GraphIndex
from onnxprune.graph.layout import Layout, Segment
from onnxprune.graph.shapes import (UNKNOWN, Const, Dim, batch_wildcard, entry_dim, infer_wildcard, one_shared_batch,
                                    reshape_dims, shape_entries)

C6 = (Segment("p", 0, 6),)


# -- helpers ------------------------------------------------------------------------------------

def _masked(model, analysis, report):
    """The original with each removed channel's consumer weight rows zeroed (rewrite/masked.py)."""
    return masked_original(model, analysis.groups, {r["name"]: r["kept"] for r in report.groups})


def _prunes_like_masked(model, input_shape, producer, consumer):
    """Prune `producer`'s group to half; the result must equal the masked original. Returns
    the consumer's layout."""
    analysis = analyze(model)
    group = analysis.group(producer)
    assert [c.node for c in group.consumers] == [consumer]
    data = {"x": np.random.default_rng(4).standard_normal((16, *input_shape)).astype(np.float32)}
    pruned, report = prune(model, data, keep=0.5, method="random", reweight=False, seed=3)
    onnx.checker.check_model(pruned, full_check=True)
    r = next(r for r in report.groups if r["name"] == producer)
    assert 0 < len(r["kept"]) < group.channels
    (got,) = B.run(pruned, data)
    (want,) = B.run(_masked(model, analysis, report), data)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return group.consumers[0].layout, group, pruned


def _reason(model, node):
    return {s.node: s.reason for s in analyze(model).skipped}[node]


def _conv_input(b, shape=(3, 4, 4)):
    return b.input("x", ["N", *shape])


def _dense(b, x, fin, fout, name="fc"):
    return b.gemm(x, fin, fout, name=name)


def _index(model):
    return GraphIndex.build(model)


def _reshape_node(model):
    return next(n for n in model.graph.node if n.op_type == "Reshape")


# -- layout cases ---------------------------------------------------------------------------------

def test_channel_axis_kept():
    """[N, 8, 4, 4] -> Reshape [0, -1, 2, 8] -> Conv: channels stay on axis 1, block 1."""
    b = B.GraphBuilder(1)
    h = b.relu(b.conv(_conv_input(b), 3, 8, name="conv1"))
    r = b.node("Reshape", [h, b.const(np.array([0, -1, 2, 8]), "shape")], name="reshape")
    b.output(b.conv(r, 8, 4, name="conv2"))
    model = b.model()
    layout, group, _ = _prunes_like_masked(model, (3, 4, 4), "conv1", "conv2")
    assert (layout.axis, layout.block, layout.interleaved) == (1, 1, False)
    assert not group.attr_sites                       # -1: nothing to rewrite
    lay = Layout(1, 4, (Segment("p", 0, 8),))
    assert R.channel_axis_kept(lay, [None, 8, 4, 4], [None, 8, 2, 8], 1) == Layout(1, 4, lay.segments)
    assert R.channel_axis_kept(lay, [None, 8, 4, 4], [None, 4, 2, 16], 1) is None


def test_merged_into_block():
    """[N, 6, 2, 2] -> Reshape [0, -1] -> Gemm: channel c owns elements 4c .. 4c+3."""
    b = B.GraphBuilder(2)
    h = b.relu(b.conv(_conv_input(b), 3, 6, strides=[2, 2], name="conv1"))
    r = b.node("Reshape", [h, b.const(np.array([0, -1]), "shape")], name="reshape")
    b.output(_dense(b, r, 24, 5))
    layout, _, _ = _prunes_like_masked(b.model(), (3, 4, 4), "conv1", "fc")
    assert (layout.axis, layout.block, layout.interleaved) == (1, 4, False)
    assert R.merged_into_block(Layout(1, 4, C6), [None, 6, 2, 2], [None, 24], 1) == Layout(1, 2, C6, block=4)


def test_unflattened():
    """[N, 24] (6 channels in blocks of 4) -> Reshape [0, -1, 2, 2] -> Conv: block 1 again."""
    b = B.GraphBuilder(3)
    h = b.relu(b.conv(_conv_input(b), 3, 6, strides=[2, 2], name="conv1"))
    flat = b.relu(b.node("Reshape", [h, b.const(np.array([0, -1]), "shape")]))
    r = b.node("Reshape", [flat, b.const(np.array([0, -1, 2, 2]), "shape")], name="unflatten")
    b.output(b.conv(r, 6, 4, name="conv2"))
    layout, _, _ = _prunes_like_masked(b.model(), (3, 4, 4), "conv1", "conv2")
    assert (layout.axis, layout.block, layout.interleaved) == (1, 1, False)
    assert R.unflattened(Layout(1, 2, C6, block=4), [None, 24], [None, 6, 2, 2], 1) == Layout(1, 4, C6)


def test_nhwc_interleaved():
    """[N, 6, 2, 2] -> Transpose to [N, 2, 2, 6] -> Reshape [0, -1] -> Gemm: channel c owns
    elements c, c+6, c+12, c+18."""
    b = B.GraphBuilder(4)
    h = b.relu(b.conv(_conv_input(b), 3, 6, strides=[2, 2], name="conv1"))
    t = b.node("Transpose", [h], perm=[0, 2, 3, 1])
    r = b.node("Reshape", [t, b.const(np.array([0, -1]), "shape")], name="reshape")
    b.output(_dense(b, r, 24, 5))
    layout, _, _ = _prunes_like_masked(b.model(), (3, 4, 4), "conv1", "fc")
    assert (layout.axis, layout.block, layout.interleaved) == (1, 4, True)
    assert R.nhwc_interleaved(Layout(3, 4, C6), [None, 2, 2, 6], [None, 24]) == \
        Layout(1, 2, C6, block=4, interleaved=True)
    assert R.nhwc_interleaved(Layout(3, 4, C6, block=2), [None, 2, 2, 6], [None, 24]) is None


# -- refusals -------------------------------------------------------------------------------------

def _matmul_then_reshape(shape, target, tokens=4):
    b = B.GraphBuilder(5)
    x = b.input("x", ["N", tokens, 6])
    h = b.matmul(x, 6, 8, bias=False, name="mm1")
    r = b.node("Reshape", [h, b.const(np.array(target), "shape")], name="reshape")
    b.output(b.matmul(r, shape, 3, bias=False, name="mm2"))
    return b.model()


def test_head_split_refused():
    """[N, T, 8] (T dynamic) -> Reshape [0, 0, 2, 4] -> MatMul with a weight: not attention
    (the heads meet no other projection's): the split's reason, then the head detector's."""
    model = _matmul_then_reshape(4, [0, 0, 2, 4], tokens="T")
    reason = _reason(model, "mm1")
    assert "splits the channel axis into 2 heads of 4" in reason
    assert "as attention heads: MatMul 'mm2' multiplies heads with a tensor that has none" in reason


def test_batch_mixing_refused():
    """[N, 4, 8] -> Reshape [-1, 8] merges the batch with the tokens."""
    model = _matmul_then_reshape(8, [-1, 8])
    assert "shapes onnxprune cannot follow (dynamic or batch-mixing)" in _reason(model, "mm1")


def test_scattered_refused():
    """[N, 4, 8] -> Reshape [0, 4, 2, 4] with static shapes: the split is refused as scattering."""
    model = _matmul_then_reshape(4, [0, 4, 2, 4])
    assert "splits or scatters the channel axis" in _reason(model, "mm1")


# -- the entry that sets the channel width -------------------------------------------------------

def _dims_of(b, tensor, picks):
    """Gather(Shape(tensor), picks): what PyTorch writes for x.shape[i]."""
    return b.node("Gather", [b.node("Shape", [tensor]), b.const(np.array(picks), "picks")], axis=0)


def _shape_of(b, *parts):
    """Concat(parts..., [-1]): PyTorch's x.reshape(x.shape[i], ..., -1)."""
    return b.node("Concat", [*parts, b.const(np.array([-1]), "rest")], axis=0)


def test_shape_from_shape_gather_concat():
    """Reshape(h, Concat(Gather(Shape(h), [0]), [-1])): the batch is read from h's shape (a
    Dim entry, None), the channels merge into blocks of 4."""
    b = B.GraphBuilder(6)
    h = b.relu(b.conv(_conv_input(b), 3, 6, strides=[2, 2], name="conv1"))
    r = b.node("Reshape", [h, _shape_of(b, _dims_of(b, h, [0]))], name="reshape")
    b.output(_dense(b, r, 24, 5))
    model = b.model()
    idx = _index(model)
    node = _reshape_node(model)
    entries = shape_entries(idx, node.input[1])
    assert entries[0] == Dim(h, 0) and entries[1].value == -1
    assert reshape_dims(idx, h, entries) == [None, 24]
    layout, _, _ = _prunes_like_masked(model, (3, 4, 4), "conv1", "fc")
    assert (layout.axis, layout.block) == (1, 4)


def test_width_from_shape_refused():
    """Reshape(h, Concat(Gather(Shape(h), [0]), Gather(Shape(x), [1]), [-1])): the channel
    width is read from another tensor (the model input, which happens to be as wide)."""
    b = B.GraphBuilder(7)
    x = _conv_input(b, (6, 2, 2))
    h = b.relu(b.conv(x, 6, 6, name="conv1"))
    r = b.node("Reshape", [h, _shape_of(b, _dims_of(b, h, [0]), _dims_of(b, x, [1]))], name="reshape")
    t = b.node("Transpose", [r], perm=[0, 2, 1])
    b.output(b.matmul(t, 6, 3, bias=False, name="mm"))
    model = b.model()
    assert "sets its channel axis from another dimension" in _reason(model, "conv1")
    lay = Layout(1, 4, C6)
    try:
        R.width_from_shape(_reshape_node(model), lay, Layout(1, 3, C6), Dim(x, 1))
    except R.Refusal:
        pass
    else:
        raise AssertionError("a width read from another tensor was accepted")
    assert R.width_from_shape(_reshape_node(model), lay, Layout(1, 3, C6), Dim(h, 1)) == []


def test_width_copied():
    """[N, 8, 4, 4] -> Reshape [0, 0, -1] -> Reshape [0, 0, 4, 4] -> Conv: 0 keeps the
    (pruned) channel count."""
    b = B.GraphBuilder(8)
    h = b.relu(b.conv(_conv_input(b), 3, 8, name="conv1"))
    r = b.node("Reshape", [h, b.const(np.array([0, 0, -1]), "shape")])
    r = b.node("Reshape", [r, b.const(np.array([0, 0, 4, 4]), "shape")])
    b.output(b.conv(r, 8, 4, name="conv2"))
    layout, group, _ = _prunes_like_masked(b.model(), (3, 4, 4), "conv1", "conv2")
    assert (layout.axis, layout.block) == (1, 1) and not group.attr_sites


def test_width_copied_across_refused():
    """[N, 4, 8, 8] (channels on axis 2) -> Reshape [0, 2, 2, 0, -1]: the channels land on
    axis 3, whose 0 copies input dim 3 (8 spatial positions, not the channels)."""
    b = B.GraphBuilder(9)
    h = b.relu(b.conv(b.input("x", ["N", 3, 4, 8]), 3, 8, name="conv1"))
    t = b.node("Transpose", [h], perm=[0, 2, 1, 3])
    b.output(b.node("Reshape", [t, b.const(np.array([0, 2, 2, 0, -1]), "shape")], name="reshape"))
    assert "copies a dimension across the channel axis" in _reason(b.model(), "conv1")


def test_width_written():
    """[N, 6, 4, 4] -> Reshape [0, 96] -> Gemm: 96 is rewritten to kept channels x 16."""
    b = B.GraphBuilder(10)
    h = b.relu(b.conv(_conv_input(b), 3, 6, name="conv1"))
    r = b.node("Reshape", [h, b.const(np.array([0, 96]), "shape")], name="reshape")
    b.output(_dense(b, r, 96, 5))
    model = b.model()
    layout, group, pruned = _prunes_like_masked(model, (3, 4, 4), "conv1", "fc")
    assert (layout.axis, layout.block) == (1, 16)
    (site,) = group.attr_sites
    assert (site.kind, site.index, site.factor) == ("reshape", 1, 16)
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    assert list(inits[site.name]) == [0, 3 * 16]


def test_width_from_computed_constant_refused():
    """The target [0, 96] comes from a Constant node: there is no initializer to rewrite."""
    b = B.GraphBuilder(11)
    h = b.relu(b.conv(_conv_input(b), 3, 6, name="conv1"))
    shape = "shape_const"
    b.nodes.append(helper.make_node("Constant", [], [shape], name="shape_node",
                                    value=numpy_helper.from_array(np.array([0, 96], dtype=np.int64))))
    r = b.node("Reshape", [h, shape], name="reshape")
    b.output(_dense(b, r, 96, 5))
    assert "takes its channel width from a computed constant" in _reason(b.model(), "conv1")


# -- reshape_dims cases ---------------------------------------------------------------------------

def test_entry_dim():
    """Dims asked for by each kind of entry: a read dim, a copy (0), a value, a wildcard."""
    b = B.GraphBuilder(12)
    h = b.relu(b.conv(_conv_input(b), 3, 6, strides=[2, 2], name="conv1"))
    b.output(_dense(b, b.node("Flatten", [h]), 24, 5))
    idx = _index(b.model())
    din = idx.shapes[h]
    assert din == (None, 6, 2, 2)
    assert entry_dim(idx, h, din, 0, Dim(h, 0)) is None              # the data's own batch
    assert entry_dim(idx, h, din, 0, Dim(h, 2)) == 2
    assert entry_dim(idx, h, din, 2, Const(0)) == 2                   # copies din[2]
    assert entry_dim(idx, h, din, 1, Const(6)) == 6
    assert entry_dim(idx, h, din, 3, Const(-1)) == -1
    assert entry_dim(idx, h, din, 0, Dim("x", 0)) is UNKNOWN         # another tensor's batch
    assert entry_dim(idx, h, din, 0, Dim("nowhere", 0)) is UNKNOWN    # a tensor of unknown shape
    assert reshape_dims(idx, h, [Const(0), Const(6), Const(-1)]) == [None, 6, 4]
    assert reshape_dims(idx, h, [Dim("x", 0), Const(-1)]) is None    # unknown read dim


def test_batch_wildcard():
    assert batch_wildcard([None, 6, 2, 2], [-1, 24], 24)
    assert not batch_wildcard([None, 6, 2, 2], [-1, 6], 24)           # would mix batch and space
    assert not batch_wildcard([1, 6, 2, 2], [-1, 24], 24)             # static batch: a plain -1
    assert not batch_wildcard([None, 6, 2, 2], [-1, -1, 4], 24)


def test_one_shared_batch():
    assert one_shared_batch([None, 6, 2, 2], [None, 24])
    assert not one_shared_batch([None, 6, 2, 2], [24, 1])
    assert not one_shared_batch([None, None, 8], [None, None, 2, 4])


def test_infer_wildcard():
    assert infer_wildcard([None, 6, -1], 24) == [None, 6, 4]
    assert infer_wildcard([None, 24], 24) == [None, 24]
