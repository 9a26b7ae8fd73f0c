"""Tiny models with the forms Paddle2ONNX writes (PP-OCR's MobileNetV3 / PP-LCNet classifiers)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from builders import GraphBuilder

C, SE = 8, 4       # expanded channels, squeeze width


def _bias_add(b, y, c, form, opset):
    """Conv bias as Paddle writes it: Add(y, Reshape(b [c], [1, c, 1, 1])) (or Unsqueeze, or -1)."""
    vec = b.const(b.randn(c, scale=0.3), "bias")
    if form == "unsqueeze":
        laid = (b.node("Unsqueeze", [vec, b.const(np.array([0, 2, 3]), "axes")]) if opset >= 13
                else b.node("Unsqueeze", [vec], axes=[0, 2, 3]))
    else:
        shape = [1, -1, 1, 1] if form == "reshape_inferred" else [1, c, 1, 1]
        laid = b.node("Reshape", [vec, b.const(np.array(shape), "shape")])
    return b.node("Add", [y, laid])


def _hardswish(b, x):
    """x * clip(x + 3, 0, 6) / 6, spelled with Add / Clip / Mul / Div."""
    three, zero, six = (b.const(np.array(v, dtype=np.float32)) for v in (3.0, 0.0, 6.0))
    clipped = b.node("Clip", [b.node("Add", [x, three]), zero, six])
    return b.node("Div", [b.node("Mul", [x, clipped]), six])


def _gate(b, x, form):
    """Paddle's hardsigmoid: HardSigmoid(alpha 0.2, beta 0.5) or clip(x * 0.2 + 0.5, 0, 1)."""
    if form == "hardsigmoid":
        return b.node("HardSigmoid", [x], alpha=0.2, beta=0.5)
    scaled = b.node("Add", [b.node("Mul", [x, b.const(np.array(0.2, dtype=np.float32))]),
                            b.const(np.array(0.5, dtype=np.float32))])
    return b.node("Clip", [scaled, b.const(np.array(0.0, dtype=np.float32)),
                           b.const(np.array(1.0, dtype=np.float32))])


def paddle_se(seed=0, bias="reshape", gate="hardsigmoid", shared_bias=False, head_reads_channels=False,
              opset=11):
    """expand conv -> BN -> hardswish -> depthwise -> SE (GAP, se1 + Reshape bias, Relu, se2 +
    Reshape bias, hardsigmoid gate, Mul) -> linear conv -> BN -> GAP -> Paddle's flatten
    (Reshape to Concat(Slice(Cast(Shape)) [batch], Cast([C])) ) -> MatMul + Add -> Softmax."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 3, 8, 8])
    h = _hardswish(b, b.bn(b.conv(x, 3, C, bias=False, name="expand"), C))
    w = b.const(b.randn(C, 1, 3, 3))
    h = _hardswish(b, b.bn(b.node("Conv", [h, w], name="dw", group=C, kernel_shape=[3, 3], pads=[1, 1, 1, 1]), C))
    pooled = b.node("GlobalAveragePool", [h])
    s = b.relu(_bias_add(b, b.conv(pooled, C, SE, k=1, bias=False, name="se1"), SE, bias, opset))
    s2 = b.conv(s, SE, C, k=1, bias=False, name="se2")
    s2 = _bias_add(b, s2, C, bias, opset)
    if shared_bias:                       # a second reader of se2's reshaped bias
        laid = b.nodes[-1].input[1]
        s2 = b.node("Add", [s2, laid])
    h = b.node("Mul", [h, _gate(b, s2, gate)])
    h = b.bn(b.conv(h, C, 6, k=1, bias=False, name="linear"), 6)
    h = b.relu(b.conv(h, 6, 10, k=1, bias=False, name="last"))
    pooled = b.node("GlobalAveragePool", [h])
    dims = b.node("Cast", [b.node("Shape", [pooled])], to=6)
    end = 2 if head_reads_channels else 1
    batch = b.node("Slice", [dims, b.const(np.array([0])), b.const(np.array([end])), b.const(np.array([0])),
                             b.const(np.array([1]))])
    width = b.const(np.array([10], dtype=np.int32), "width")
    b.inits[-1].data_type = 6            # int32, as Paddle's fill_constant
    b.inits[-1].ClearField("int64_data")
    b.inits[-1].raw_data = np.array([10], dtype=np.int32).tobytes()
    parts = [b.node("Cast", [batch], to=7)] + ([] if head_reads_channels else [b.node("Cast", [width], to=7)])
    flat = b.node("Reshape", [pooled, b.node("Concat", parts, axis=0)])
    logits = b.node("Add", [b.node("MatMul", [flat, b.const(b.randn(10, 2))], name="fc"),
                            b.const(b.randn(2, scale=0.1))])
    b.output(b.node("Softmax", [logits], axis=1))
    b.outputs[-1] = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    return b.model(opset=opset, ir_version=7)
