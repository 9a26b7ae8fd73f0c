"""Tiny models for the graph patterns of real networks (built with onnx.helper)."""
from __future__ import annotations

import numpy as np

from builders import GraphBuilder


def residual_projection(seed=0):
    """stem -> [conv1 -> relu -> conv2] + [1x1 stride-2 projection] -> Add -> relu -> head -> GAP -> fc."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 3, 8, 8])
    stem = b.relu(b.conv(x, 3, 6, name="stem"))
    h = b.relu(b.conv(stem, 6, 8, name="conv1", strides=[2, 2]))
    main = b.conv(h, 8, 10, name="conv2")
    proj = b.conv(stem, 6, 10, k=1, name="proj", strides=[2, 2])
    y = b.relu(b.node("Add", [main, proj], name="add"))
    y = b.relu(b.conv(y, 10, 12, name="head"))
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    b.output(b.gemm(y, 12, 4, name="fc"))
    return b.model()


def depthwise(seed=0):
    """conv1 -> BN -> relu -> depthwise 3x3 -> relu -> 1x1 conv2 -> GAP -> fc (MobileNet style)."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 3, 8, 8])
    h = b.relu(b.bn(b.conv(x, 3, 8, name="conv1"), 8))
    w = b.const(b.randn(8, 1, 3, 3))
    h = b.relu(b.node("Conv", [h, w, b.const(b.randn(8, scale=0.1))], name="dw", group=8, kernel_shape=[3, 3],
                      pads=[1, 1, 1, 1]))
    h = b.relu(b.conv(h, 8, 6, k=1, name="conv2"))
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    b.output(b.gemm(h, 6, 3, name="fc"))
    return b.model()


def concat(seed=0):
    """Two convs of one input and the input itself concatenated, read by one conv (DenseNet style)."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 3, 6, 6])
    a = b.relu(b.conv(x, 3, 4, name="conv_a"))
    c = b.relu(b.conv(x, 3, 5, name="conv_b"))
    cat = b.node("Concat", [a, x, c], name="cat", axis=1)
    h = b.relu(b.bn(cat, 12))
    h = b.relu(b.conv(h, 12, 6, name="conv_c"))
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    b.output(b.gemm(h, 6, 2, name="fc"))
    return b.model()


def split(seed=0, opset=17):
    """conv (8 ch) -> Split [3, 5] -> two convs, their sum to the output."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 3, 6, 6])
    h = b.relu(b.conv(x, 3, 8, name="conv"))
    if opset >= 13:
        parts = b.node("Split", [h, b.const(np.array([3, 5]), "s")], name="split", outputs=2, axis=1)
    else:
        parts = b.node("Split", [h], name="split", outputs=2, axis=1, split=[3, 5])
    p1, p2 = parts, "split_out1"
    y1 = b.conv(p1, 3, 4, name="conv_x")
    y2 = b.conv(b.relu(p2), 5, 4, name="conv_y")
    b.output(b.node("Add", [y1, y2], name="sum"))
    return b.model(opset=opset)


def fan_out(seed=0):
    """One conv read by two convs whose outputs are concatenated into the output."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 3, 6, 6])
    h = b.relu(b.conv(x, 3, 8, name="conv"))
    b.output(b.node("Concat", [b.conv(h, 8, 2, name="left"), b.conv(h, 8, 3, k=1, name="right")], axis=1))
    return b.model()


def erf_gelu_ffn(seed=0, tokens=4):
    """Transformer FFN on [N, T, 12]: MatMul+Add -> exact GELU (Erf form) -> MatMul+Add."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", tokens, 12])
    h = b.matmul(x, 12, 20, name="up")
    g = b.node("Div", [h, b.const(np.array(np.sqrt(2.0)))])
    g = b.node("Add", [b.node("Erf", [g]), b.const(np.array(1.0))])
    g = b.node("Mul", [b.node("Mul", [h, g]), b.const(np.array(0.5))])
    b.output(b.matmul(g, 20, 12, name="down"))
    return b.model()


def swiglu(seed=0, tokens=4):
    """gate and up MatMuls, silu(gate) * up, down MatMul."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", tokens, 8])
    gate = b.matmul(x, 8, 16, bias=False, name="gate")
    up = b.matmul(x, 8, 16, bias=False, name="up")
    silu = b.node("Mul", [gate, b.node("Sigmoid", [gate])], name="silu")
    h = b.node("Mul", [silu, up], name="glu")
    b.output(b.matmul(h, 16, 8, bias=False, name="down"))
    return b.model()


def nhwc_flatten(seed=0, explicit=True):
    """NCHW conv -> Transpose(0,2,3,1) -> Reshape [-1, H*W*C] -> Gemm (tf2onnx style)."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 3, 4, 4])
    h = b.relu(b.conv(x, 3, 5, name="conv"))
    t = b.node("Transpose", [h], perm=[0, 2, 3, 1])
    shape = np.array([-1, 4 * 4 * 5] if explicit else [0, -1])
    r = b.node("Reshape", [t, b.const(shape, "shape")], name="reshape")
    b.output(b.gemm(b.relu(b.gemm(r, 80, 6, name="fc1")), 6, 2, name="fc2"))
    return b.model()


def nchw_reshape(seed=0):
    """Conv -> Reshape [0, C*H*W] with an explicit width -> Gemm: the shape constant is rewritten."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 3, 4, 4])
    h = b.relu(b.conv(x, 3, 5, name="conv"))
    r = b.node("Reshape", [h, b.const(np.array([0, 80]), "shape")], name="reshape")
    b.output(b.gemm(r, 80, 3, name="fc"))
    return b.model()


def layernorm_stream(seed=0, tokens=3):
    """A residual stream normalised by LayerNormalization over its channels."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", tokens, 8])
    h = b.matmul(x, 8, 8, name="proj")
    h = b.node("LayerNormalization", [h, b.const(np.ones(8)), b.const(np.zeros(8))], axis=-1, name="ln")
    h = b.relu(b.matmul(h, 8, 16, name="up"))
    b.output(b.matmul(h, 16, 4, name="down"))
    return b.model()
