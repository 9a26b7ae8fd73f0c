"""Odd but legal models for the robustness tests: old and new opsets, Constant-node weights,
initializers listed as inputs, fp16, dynamic dims, several inputs/outputs, If/Loop subgraphs,
and a model over 2 GB (its data file is sparse, so it costs no disk and little time to make)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import builders as B

# The IR version each opset shipped with (onnx.helper.VERSION_TABLE).
IR_FOR_OPSET = {7: 3, 9: 4, 11: 6, 13: 7, 17: 8, 21: 10}


def opset_cnn(opset: int, seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Clip-MaxPool -> Conv-Relu-Dropout -> Flatten -> Gemm-Relu -> Gemm, written with
    the op signatures of `opset` (BatchNormalization `spatial` before 9, Clip bounds and Dropout
    ratio as attributes before 11 / 12, inputs after) and its IR version."""
    b = B.GraphBuilder(seed=seed)
    x = b.input("x", ["N", 3, 8, 8])
    x = b.conv(x, 3, 8, name="conv1")
    bn_attrs = {"spatial": 1} if opset < 9 else {}
    params = [b.const(1 + 0.1 * b.randn(8, scale=1)), b.const(0.1 * b.randn(8, scale=1)),
              b.const(0.1 * b.randn(8, scale=1)), b.const(1 + np.abs(b.randn(8, scale=0.2)))]
    x = b.node("BatchNormalization", [x] + params, epsilon=1e-5, **bn_attrs)
    if opset < 11:
        x = b.node("Clip", [x], min=0.0, max=6.0)
    else:
        x = b.node("Clip", [x, b.const(np.array(0.0)), b.const(np.array(6.0))])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.relu(b.conv(x, 8, 6, name="conv2"))
    if opset < 12:
        x = b.node("Dropout", [x], ratio=0.3)
    else:
        x = b.node("Dropout", [x, b.const(np.array(0.3))])
    x = b.node("Flatten", [x], axis=1)
    x = b.relu(b.gemm(x, 96, 10, name="fc1"))
    b.output(b.gemm(x, 10, 3, name="fc2"))
    return finish(b, opset, IR_FOR_OPSET[opset])


def finish(b: B.GraphBuilder, opset: int, ir: int, outputs=None) -> onnx.ModelProto:
    """Model of `b` at (opset, IR); below IR 4 every initializer is also a graph input."""
    inputs = list(b.inputs)
    if ir < 4:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in b.inits]
    graph = helper.make_graph(b.nodes, "zoo", inputs, outputs or b.outputs, initializer=b.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    if outputs is None:
        m = onnx.shape_inference.infer_shapes(m)
        del m.graph.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    return m


def as_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer becomes a Constant node (as some exporters write weights)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    names = {t.name for t in g.initializer}
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in g.initializer]
    nodes = consts + list(g.node)
    inputs = [i for i in g.input if i.name not in names]
    del g.node[:], g.initializer[:], g.input[:]
    g.node.extend(nodes)
    g.input.extend(inputs)
    onnx.checker.check_model(out, full_check=True)
    return out


def scalar_constant_mlp() -> onnx.ModelProto:
    """Gemm -> Mul(Constant value_float) -> Add(Constant value_floats) -> Relu -> Gemm."""
    b = B.GraphBuilder(seed=4)
    x = b.input("x", ["N", 6])
    h = b.gemm(x, 6, 8, name="fc1")
    b.nodes.append(helper.make_node("Constant", [], ["scale"], value_float=1.5))
    b.nodes.append(helper.make_node("Constant", [], ["shift"], value_floats=list(np.linspace(-0.3, 0.4, 8))))
    h = b.relu(b.node("Add", [b.node("Mul", [h, "scale"]), "shift"]))
    b.output(b.gemm(h, 8, 3, name="fc2"))
    return b.model(opset=13, ir_version=7)


def with_initializers_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Also list every initializer as a graph input (allowed at any IR, required below 4)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                           for t in out.graph.initializer)
    onnx.checker.check_model(out, full_check=True)
    return out


def fp16_cnn() -> onnx.ModelProto:
    """Conv-BN-Relu -> Conv-Relu -> GlobalAveragePool -> Flatten -> Gemm-Relu -> Gemm, all float16
    (every op here has a float16 CPU kernel in onnxruntime)."""
    b = B.GraphBuilder(dtype=np.float16)
    x = b.input("x", ["N", 3, 8, 8], TensorProto.FLOAT16)
    x = b.relu(b.bn(b.conv(x, 3, 8, name="conv1"), 8))
    x = b.relu(b.conv(x, 8, 6, name="conv2"))
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    x = b.relu(b.gemm(x, 6, 10, name="fc1"))
    b.output(b.gemm(x, 10, 3, name="fc2"), elem=TensorProto.FLOAT16)
    return b.model()


def fp16_redundant_mlp() -> tuple:
    """redundant_mlp in float16: channels 5 (= 1), 6 (constant) and 7 (zero) carry nothing new."""
    model, informative = B.redundant_mlp()
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model, full_check=True)
    return model, informative


def dynamic_cnn() -> onnx.ModelProto:
    """Input [N, 3, H, W] with symbolic batch and spatial dims; strided Conv; GAP head."""
    b = B.GraphBuilder(seed=2)
    x = b.input("x", ["N", 3, "H", "W"])
    x = b.relu(b.conv(x, 3, 8, name="conv1"))
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.relu(b.conv(x, 8, 6, name="conv2", strides=[2, 2]))
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    x = b.relu(b.gemm(x, 6, 10, name="fc1"))
    b.output(b.gemm(x, 10, 3, name="fc2"))
    return b.model()


def multi_io_mlp() -> onnx.ModelProto:
    """Two inputs, two branches, two outputs, plus a third output read from branch a."""
    b = B.GraphBuilder(seed=3)
    a = b.relu(b.gemm(b.input("a", ["N", 6]), 6, 8, name="fa1"))
    c = b.relu(b.gemm(b.input("b", ["N", 5]), 5, 7, name="fb1"))
    b.output(b.gemm(a, 8, 3, name="fa2"), "ya")
    b.output(b.gemm(c, 7, 2, name="fb2"), "yb")
    b.output(b.node("ReduceSum", [b.node("Identity", [b.input("c", ["N", 4])])], keepdims=1), "yc")
    return b.model()


def subgraph_mlp() -> onnx.ModelProto:
    """fc1 -> fc2 -> fc3, then an If (on the sign of sum(x)) and a 3-step Loop that read fc3's
    output from inside their subgraphs: fc1 and fc2 are prunable, fc3 must be left alone."""
    b = B.GraphBuilder(seed=5)
    x = b.input("x", ["N", 6])
    h = b.relu(b.gemm(x, 6, 8, name="fc1"))
    h = b.relu(b.gemm(h, 8, 7, name="fc2"))
    y = b.gemm(h, 7, 3, name="fc3")
    f = TensorProto.FLOAT
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    then_g = helper.make_graph([helper.make_node("Mul", [y, "two"], ["t_out"], name="t_mul")], "then", [],
                               [helper.make_tensor_value_info("t_out", f, ["N", 3])], initializer=[two])
    else_g = helper.make_graph([helper.make_node("Neg", [y], ["e_out"], name="e_neg")], "else", [],
                               [helper.make_tensor_value_info("e_out", f, ["N", 3])])
    cond = b.node("Greater", [b.node("ReduceSum", [x], keepdims=0), b.const(np.array(0.0))])
    branch = b.node("If", [cond], name="branch", then_branch=then_g, else_branch=else_g)
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"], name="l_cond"),
         helper.make_node("Add", ["v_in", y], ["v_out"], name="l_add")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []), helper.make_tensor_value_info("v_in", f, ["N", 3])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", f, ["N", 3])])
    b.inits += [numpy_helper.from_array(np.array(3, np.int64), "trip"), numpy_helper.from_array(np.array(True), "go")]
    loop = b.node("Loop", ["trip", "go", branch], name="loop", body=body)
    b.nodes.append(helper.make_node("Identity", [loop], ["y"], name="out"))
    return finish(b, 17, 8, outputs=[helper.make_tensor_value_info("y", f, ["N", 3])])


def big_model_files(folder, table_bytes: int) -> tuple:
    """(model path, calibration path) of Gemm-Relu-Gemm plus a `table_bytes` float table read by
    a Gather and added to the output, saved with external data. The data file is sparse."""
    b = B.GraphBuilder(seed=6)
    y = b.gemm(b.relu(b.gemm(b.input("x", ["N", 6]), 6, 8, name="fc1")), 8, 3, name="fc2")
    b.inits.append(numpy_helper.from_array(np.array([0], np.int64), "idx"))
    y = b.node("Add", [y, b.node("Gather", ["table", "idx"], name="lookup")], name="add_table")
    b.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    graph = helper.make_graph(b.nodes, "big", b.inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              initializer=b.inits)
    table = graph.initializer.add()
    table.name, table.data_type, table.data_location = "table", TensorProto.FLOAT, TensorProto.EXTERNAL
    table.dims.append(table_bytes // 4)
    for key, value in (("location", "big.onnx.data"), ("offset", "0"), ("length", str(table_bytes // 4 * 4))):
        entry = table.external_data.add()
        entry.key, entry.value = key, value
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with open(folder / "big.onnx.data", "wb") as fh:
        fh.truncate(table_bytes // 4 * 4)
    onnx.save(model, folder / "big.onnx")
    np.savez(folder / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32))
    return folder / "big.onnx", folder / "calib.npz"
