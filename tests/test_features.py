"""The feature layout must reproduce each consumer's own arithmetic exactly."""
import numpy as np
import pytest
from onnx import numpy_helper

import builders as B
from onnxprune.capture.features import canonical_order, design_rows
from onnxprune.graph.index import GraphIndex
from onnxprune.graph.groups import ConvGeometry, Consumer
from onnxprune.graph.layout import Layout, Segment
from onnxprune.rewrite.weights import consumer_matrix


def conv_model(cin, cout, k, **attrs):
    b = B.GraphBuilder(seed=3)
    x = b.input("x", ["N", cin, 9, 7])
    b.output(b.conv(x, cin, cout, k=k, name="c", **attrs))
    return b.model()


CASES = [
    dict(k=3, pads=[1, 1, 1, 1]),
    dict(k=3, pads=[0, 2, 1, 0], strides=[2, 1]),
    dict(k=3, pads=[2, 2, 2, 2], dilations=[2, 2]),
    dict(k=2, pads=[0, 0, 0, 0], strides=[2, 2]),
    dict(k=3, auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(k=4, auto_pad="SAME_LOWER"),
    dict(k=1, pads=[0, 0, 0, 0]),
]


@pytest.mark.parametrize("attrs", CASES)
def test_im2col_times_weight_matrix_is_the_conv(attrs):
    attrs = dict(attrs)
    k = attrs.pop("k")
    if "auto_pad" in attrs:
        attrs["pads"] = None
    model = conv_model(3, 4, k, **{a: v for a, v in attrs.items() if v is not None})
    node = model.graph.node[0]
    idx = GraphIndex.build(model)
    spatial = 2
    geom = ConvGeometry(kernel=(k, k), strides=tuple(attrs.get("strides", [1, 1])),
                        pads=tuple(attrs.get("pads") or [0] * 4), dilations=tuple(attrs.get("dilations", [1, 1])),
                        auto_pad=attrs.get("auto_pad", "NOTSET"))
    c = Consumer(node="c", op="Conv", input="x", weight=node.input[1], weight_axis=1,
                 layout=Layout(1, 4, (Segment("p", 0, 3),)), bias=node.input[2], conv=geom)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 7)).astype(np.float32)
    expected = B.run(model, {"x": x})[0]                       # [N, M, Ho, Wo]
    rows = design_rows(x, c, np, np.float64)
    order = canonical_order(c, rows.shape[1])
    if order is not None:
        rows = rows[:, order]
    got = rows @ consumer_matrix(idx, c)                       # [N*Ho*Wo, M]
    want = expected.transpose(0, 2, 3, 1).reshape(-1, expected.shape[1])
    assert spatial == 2 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_matrix_includes_alpha_beta(trans_b):
    b = B.GraphBuilder(seed=5)
    x = b.input("x", ["N", 5])
    b.output(b.gemm(x, 5, 3, trans_b=trans_b, name="g", alpha=0.5, beta=2.0))
    model = b.model()
    node = model.graph.node[0]
    c = Consumer(node="g", op="Gemm", input="x", weight=node.input[1], weight_axis=0,
                 layout=Layout(1, 2, (Segment("p", 0, 5),)), bias=node.input[2], trans_b=bool(trans_b),
                 alpha=0.5, beta=2.0)
    xs = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    got = design_rows(xs, c, np, np.float64) @ consumer_matrix(GraphIndex.build(model), c)
    np.testing.assert_allclose(got, B.run(model, {"x": xs})[0], rtol=1e-5, atol=1e-6)
    assert numpy_helper.to_array(model.graph.initializer[0]).size == 15


TRANSPOSED = [
    dict(k=3, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    dict(k=2, strides=[2, 2]),
    dict(k=3, strides=[1, 1], pads=[0, 0, 0, 0]),
    dict(k=3, strides=[2, 3], pads=[0, 2, 1, 0], dilations=[2, 1], output_padding=[1, 2]),
    dict(k=4, strides=[3, 2], pads=[3, 1, 2, 4], dilations=[1, 2]),     # pads beyond the reach: cropped
    dict(k=3, strides=[2, 2], auto_pad="VALID"),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("attrs", TRANSPOSED)
def test_transposed_cols_times_weight_matrix_is_the_conv_transpose(attrs, bias):
    """Each output position of a ConvTranspose is one row: features (input channel, tap) times
    the weight matrix rows W[c, :, tap], plus the bias; checked against onnxruntime."""
    from onnxprune.graph.roles import consumer

    attrs = dict(attrs)
    k = attrs.pop("k")
    b = B.GraphBuilder(seed=5)
    x = b.input("x", ["N", 3, 5, 4])
    inputs = [x, b.const(b.randn(3, 4, k, k))] + ([b.const(b.randn(4))] if bias else [])
    b.output(b.node("ConvTranspose", inputs, name="ct", kernel_shape=[k, k], **attrs))
    model = b.model()
    idx = GraphIndex.build(model)
    c = consumer(idx, model.graph.node[0], 0, Layout(1, 4, (Segment("p", 0, 3),)))
    assert c.weight_axis == 0 and c.kernel_area == k * k and c.conv.transposed
    xv = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
    expected = B.run(model, {"x": xv})[0]
    rows = design_rows(xv, c, np, np.float64)
    rows = rows[:, canonical_order(c, rows.shape[1])]
    got = rows @ consumer_matrix(idx, c)
    want = expected.transpose(0, 2, 3, 1).reshape(-1, expected.shape[1])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the statistics' row count and a row sub-sample of the same layout (--max-rows)
    from onnxprune.capture.features import feature_rows, rows_per_sample
    assert rows_per_sample(xv, c) * xv.shape[0] == rows.shape[0]
    pick = np.arange(0, rows.shape[0], 3)
    sub, _ = feature_rows(xv, c, np, np.float64, pick)
    np.testing.assert_array_equal(sub, design_rows(xv, c, np, np.float64)[pick, :-1])
