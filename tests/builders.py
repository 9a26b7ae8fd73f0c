"""Tiny ONNX models built in code for the tests (no torch, no files)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    """Accumulates nodes and initializers; `model()` returns a checked ModelProto."""

    def __init__(self, seed: int = 0, dtype=np.float32):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.dtype = dtype
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}{self._n}"

    def const(self, array, base="w") -> str:
        name = self.name(base)
        array = np.asarray(array)
        dtype = np.int64 if array.dtype.kind in "iu" else self.dtype
        self.inits.append(numpy_helper.from_array(array.astype(dtype, copy=False), name))
        return name

    def randn(self, *shape, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(max(1, np.prod(shape[1:])))
        return self.rng.standard_normal(shape) * scale

    def input(self, name, shape, elem=TensorProto.FLOAT):
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def node(self, op, inputs, name=None, outputs=1, **attrs) -> str:
        name = name or self.name(op.lower())
        outs = [f"{name}_out{i}" if i else f"{name}_out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    def output(self, tensor, name="y", elem=TensorProto.FLOAT):
        self.nodes.append(helper.make_node("Identity", [tensor], [name], name=self.name("out")))
        self.outputs.append(helper.make_tensor_value_info(name, elem, None))
        return name

    # layers -----------------------------------------------------------------
    def conv(self, x, cin, cout, k=3, bias=True, name=None, **attrs):
        w = self.const(self.randn(cout, cin, k, k))
        ins = [x, w] + ([self.const(self.randn(cout, scale=0.1), "b")] if bias else [])
        if "auto_pad" not in attrs:
            attrs.setdefault("pads", [k // 2] * 4)
        return self.node("Conv", ins, name=name, kernel_shape=[k, k], **attrs)

    def gemm(self, x, fin, fout, trans_b=1, bias=True, name=None, **attrs):
        w = self.randn(fout, fin) if trans_b else self.randn(fin, fout, scale=1 / np.sqrt(fin))
        ins = [x, self.const(w)] + ([self.const(self.randn(fout, scale=0.1), "b")] if bias else [])
        return self.node("Gemm", ins, name=name, transB=trans_b, **attrs)

    def matmul(self, x, fin, fout, bias=True, name=None):
        y = self.node("MatMul", [x, self.const(self.randn(fin, fout, scale=1 / np.sqrt(fin)))], name=name)
        if bias:
            y = self.node("Add", [y, self.const(self.randn(fout, scale=0.1), "b")])
        return y

    def bn(self, x, c):
        params = [self.const(1 + 0.1 * self.randn(c, scale=1)), self.const(0.1 * self.randn(c, scale=1)),
                  self.const(0.1 * self.randn(c, scale=1)), self.const(1 + np.abs(self.randn(c, scale=0.2)))]
        return self.node("BatchNormalization", [x] + params, epsilon=1e-5)

    def relu(self, x):
        return self.node("Relu", [x])

    def model(self, opset=OPSET, ir_version=8) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "test", self.inputs, self.outputs, initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = ir_version
        m = onnx.shape_inference.infer_shapes(m)      # gives the outputs their shapes
        del m.graph.value_info[:]
        onnx.checker.check_model(m, full_check=True)
        return m


def mlp(widths=(12, 16, 10, 4), trans_b=1, seed=0) -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm -> Relu -> Gemm."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", widths[0]])
    for i, (fin, fout) in enumerate(zip(widths[:-1], widths[1:])):
        x = b.gemm(x, fin, fout, trans_b=trans_b, name=f"fc{i + 1}")
        if i < len(widths) - 2:
            x = b.relu(x)
    b.output(x)
    return b.model()


def cnn(seed=0, flatten=True) -> onnx.ModelProto:
    """Conv-BN-Relu-MaxPool -> Conv-Relu -> (Flatten | GlobalAveragePool+Flatten) -> Gemm -> Relu -> Gemm."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 3, 8, 8])
    x = b.conv(x, 3, 8, name="conv1")
    x = b.node("MaxPool", [b.relu(b.bn(x, 8))], kernel_shape=[2, 2], strides=[2, 2])
    x = b.relu(b.conv(x, 8, 6, name="conv2"))
    if not flatten:
        x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    fin = 6 * 4 * 4 if flatten else 6
    x = b.relu(b.gemm(x, fin, 10, name="fc1"))
    b.output(b.gemm(x, 10, 3, name="fc2"))
    return b.model()


def matmul_mlp(seed=0, bias=True, tokens=None) -> onnx.ModelProto:
    """MatMul(+Add) -> Relu -> MatMul(+Add), optionally on [N, T, F] inputs."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 10] if tokens is None else ["N", tokens, 10])
    x = b.relu(b.matmul(x, 10, 14, bias=bias, name="mm1"))
    b.output(b.matmul(x, 14, 5, bias=bias, name="mm2"))
    return b.model()


def redundant_mlp(seed=0) -> tuple:
    """fc1 has 8 outputs of which 3 are redundant: 5 duplicates 1, 6 is all-zero weights
    (a constant after Relu), 7 is zero. Returns (model, informative channel count)."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 6])
    w = b.randn(8, 6)
    bias = b.randn(8, scale=0.1)
    w[5], bias[5] = w[1], bias[1]
    w[6], bias[6] = 0.0, 0.7
    w[7], bias[7] = 0.0, 0.0
    h = b.node("Gemm", [x, b.const(w), b.const(bias)], name="fc1", transB=1)
    h = b.relu(h)
    b.output(b.gemm(h, 8, 3, name="fc2"))
    return b.model(), 5


def random_inputs(model: onnx.ModelProto, n: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shape = [n] + [d for d in dims[1:]]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        out[vi.name] = rng.standard_normal(shape).astype(dtype)
    return out


def run(model: onnx.ModelProto, feeds: dict) -> list:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
