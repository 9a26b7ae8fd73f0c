"""A constant that the rewrite changes for one node while other nodes also read it.

Regressions: a Reshape shape initializer shared by two branches, and the YOLOv8 pattern of
three C2f-like blocks whose Split nodes read ONE split-sizes initializer. The rewrite must
give the rewritten node its own copy instead of changing the shared tensor in place.

Every test prunes end to end without reweighting and compares the pruned model's output with
the original model whose removed channels' consumer weight rows are zeroed (computed here
from the report's kept channels and the analysis' consumers).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import analyze, prune
from onnxprune.graph.layout import element_indices

RNG = np.random.default_rng(0)


def _w(name, *shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.3, name)


def _i64(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _conv(name, x, y, cin, cout, inits, k=3):
    inits += [_w(f"{name}.w", cout, cin, k, k), _w(f"{name}.b", cout)]
    return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[k // 2] * 4,
                            kernel_shape=[k, k])


def _model(nodes, inits, inputs, outputs, opset=13):
    graph = helper.make_graph(nodes, "shared", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _fc(b: str, nodes: list, inits: list) -> None:
    """Branch b's head: Gemm fc_b (512 -> 10) on f_b."""
    inits += [_w(f"fc_{b}.w", 10, 512), _w(f"fc_{b}.b", 10)]
    nodes.append(helper.make_node("Gemm", [f"f_{b}", f"fc_{b}.w", f"fc_{b}.b"], [f"g_{b}"], name=f"fc_{b}", transB=1))


def _two_branches(nodes: list, inits: list) -> onnx.ModelProto:
    """y = g_a + g_b on an [N, 3, 8, 8] input x."""
    nodes.append(helper.make_node("Add", ["g_a", "g_b"], ["y"], name="add"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    return _model(nodes, inits, [x], [y])


def two_reshape_branches():
    """x -> Conv -> Relu -> Reshape(S) -> Gemm, twice; both Reshapes read one shape S=[-1, 512]."""
    nodes, inits = [], [_i64("S", [-1, 512])]
    for b in ("a", "b"):
        nodes += [_conv(f"conv_{b}", "x", f"c_{b}", 3, 8, inits),
                  helper.make_node("Relu", [f"c_{b}"], [f"r_{b}"], name=f"relu_{b}"),
                  helper.make_node("Reshape", [f"r_{b}", "S"], [f"f_{b}"], name=f"reshape_{b}")]
        _fc(b, nodes, inits)
    return _two_branches(nodes, inits)


def two_view_branches(shared_concat=False):
    """torch's x.view(x.size(0), 512): Reshape(r, Concat(Unsqueeze(Gather(Shape(r), 0)), [512]))
    in two branches reading one [512] initializer; with `shared_concat` both Reshapes read one
    Concat output (the batch is taken from branch a)."""
    nodes, inits = [], [_i64("C", [512]), _i64("zero", 0), _i64("axes0", [0])]
    for b in ("a", "b"):
        nodes += [_conv(f"conv_{b}", "x", f"c_{b}", 3, 8, inits),
                  helper.make_node("Relu", [f"c_{b}"], [f"r_{b}"], name=f"relu_{b}")]
        if b == "a" or not shared_concat:
            nodes += [helper.make_node("Shape", [f"r_{b}"], [f"s_{b}"], name=f"shape_{b}"),
                      helper.make_node("Gather", [f"s_{b}", "zero"], [f"n_{b}"], name=f"gather_{b}", axis=0),
                      helper.make_node("Unsqueeze", [f"n_{b}", "axes0"], [f"u_{b}"], name=f"unsq_{b}"),
                      helper.make_node("Concat", [f"u_{b}", "C"], [f"shape_{b}"], name=f"cat_{b}", axis=0)]
        shape = "shape_a" if shared_concat else f"shape_{b}"
        nodes.append(helper.make_node("Reshape", [f"r_{b}", shape], [f"f_{b}"], name=f"reshape_{b}"))
        _fc(b, nodes, inits)
    return _two_branches(nodes, inits)


def c2f_blocks(blocks=3, width=8):
    """Three C2f-like blocks, Conv -> Split(S) halves -> Conv on one half -> Concat -> Conv, whose
    Splits all read one sizes initializer S=[width/2, width/2] (as the torch exporter emits)."""
    half = width // 2
    nodes, inits = [], [_i64("S", [half, half])]
    x, cin = "x", 3
    for i in range(blocks):
        p = f"b{i}"
        nodes += [_conv(f"{p}.cv1", x, f"{p}.c1", cin, width, inits, k=1),
                  helper.make_node("Relu", [f"{p}.c1"], [f"{p}.a1"], name=f"{p}.act1"),
                  helper.make_node("Split", [f"{p}.a1", "S"], [f"{p}.y0", f"{p}.y1"], name=f"{p}.split", axis=1),
                  _conv(f"{p}.m", f"{p}.y1", f"{p}.mc", half, half, inits),
                  helper.make_node("Relu", [f"{p}.mc"], [f"{p}.ma"], name=f"{p}.mact"),
                  helper.make_node("Concat", [f"{p}.y0", f"{p}.y1", f"{p}.ma"], [f"{p}.cat"], name=f"{p}.cat",
                                   axis=1),
                  _conv(f"{p}.cv2", f"{p}.cat", f"{p}.c2", 3 * half, width, inits, k=1),
                  helper.make_node("Relu", [f"{p}.c2"], [f"{p}.out"], name=f"{p}.act2")]
        x, cin = f"{p}.out", width
    inits += [_w("head.w", width, 5), _w("head.b", 5)]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "head.w", "head.b"], ["y"], name="head")]
    xin = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    return _model(nodes, inits, [xin], [y])


def masked_original(model, report):
    """The original model with every removed channel's consumer weight rows set to zero."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    arrays = {name: numpy_helper.to_array(t).copy() for name, t in inits.items()}
    groups = {g.name: g for g in analyze(model).groups}
    for rep in report.groups:
        g = groups[rep["name"]]
        removed = np.setdiff1d(np.arange(g.channels), rep["kept"])
        for c in g.consumers:
            src, ch = c.layout.owners()
            positions = np.flatnonzero(np.isin(src, list(g.sources)) & np.isin(ch, removed))
            elems = element_indices(positions, c.layout, c.layout.positions)
            index = [slice(None)] * arrays[c.weight].ndim
            index[c.weight_axis] = elems
            arrays[c.weight][tuple(index)] = 0
    for name, t in inits.items():
        t.CopyFrom(numpy_helper.from_array(arrays[name], name))
    return out


def run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def check_pruned(model, pruned, report, x):
    assert any(len(g["kept"]) < g["channels_before"] for g in report.groups)
    np.testing.assert_allclose(run(pruned, x), run(masked_original(model, report), x), rtol=1e-4, atol=1e-4)
    onnx.checker.check_model(pruned, full_check=True)


def calib(n=16):
    return RNG.standard_normal((n, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("exclude", [(), ("conv_b",)], ids=["both-pruned", "one-pruned"])
def test_reshape_shape_shared_by_two_branches(exclude):
    model, x = two_reshape_branches(), calib()
    pruned, report = prune(model, x, keep=0.5, reweight=False, exclude=exclude)
    assert [g["name"] for g in report.groups] == ["conv_a"] + (["conv_b"] if not exclude else [])
    check_pruned(model, pruned, report, x)
    shapes = {n.name: n.input[1] for n in pruned.graph.node if n.op_type == "Reshape"}
    values = {t.name: numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer}
    assert values[shapes["reshape_a"]] == [-1, 256]
    assert values[shapes["reshape_b"]] == [-1, 512 if exclude else 256]


@pytest.mark.parametrize("shared_concat", [False, True], ids=["shared-constant", "shared-concat"])
@pytest.mark.parametrize("exclude", [(), ("conv_b",)], ids=["both-pruned", "one-pruned"])
def test_view_shape_constant_shared_through_concat(shared_concat, exclude):
    model, x = two_view_branches(shared_concat), calib()
    pruned, report = prune(model, x, keep=0.5, reweight=False, exclude=exclude)
    assert len(report.groups) == (1 if exclude or shared_concat else 2)   # b's batch comes from a
    check_pruned(model, pruned, report, x)


def test_three_splits_share_one_sizes_initializer():
    model, x = c2f_blocks(), calib()
    pruned, report = prune(model, x, keep=0.5, reweight=False)
    splits = [g for g in report.groups if g["name"].endswith(".cv1")]
    assert len(splits) == 3
    check_pruned(model, pruned, report, x)
    values = {t.name: numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer}
    for i, g in enumerate(splits):
        node = next(n for n in pruned.graph.node if n.name == f"b{i}.split")
        kept = np.asarray(g["kept"])
        assert values[node.input[1]] == [int((kept < 4).sum()), int((kept >= 4).sum())]


def test_splits_sizes_shared_with_an_unpruned_block():
    """Only the middle block is pruned: the other two Splits keep reading [4, 4]."""
    model, x = c2f_blocks(), calib()
    exclude = ("b0.cv1", "b2.cv1")
    pruned, report = prune(model, x, keep=0.5, reweight=False, exclude=exclude)
    check_pruned(model, pruned, report, x)
    values = {t.name: numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer}
    for n in pruned.graph.node:
        if n.name in ("b0.split", "b2.split"):
            assert values[n.input[1]] == [4, 4]


def test_shared_per_channel_constant_is_still_refused_by_analysis():
    """Per-channel parameters are not copied: a scale two branches share ties their channels,
    so analysis leaves both alone (only counts, Split sizes and Reshape entries, are copied)."""
    model = two_reshape_branches()
    model.graph.initializer.append(_w("scale", 1, 8, 1, 1))
    for node in model.graph.node:
        if node.op_type == "Reshape":
            b = node.name[-1]
            node.input[0] = f"m_{b}"
    relus = [i for i, n in enumerate(model.graph.node) if n.op_type == "Relu"]
    for i in reversed(relus):
        b = model.graph.node[i].name[-1]
        model.graph.node.insert(i + 1, helper.make_node("Mul", [f"r_{b}", "scale"], [f"m_{b}"], name=f"mul_{b}"))
    onnx.checker.check_model(model, full_check=True)
    a = analyze(model)
    assert not a.groups
    reasons = {s.node: s.reason for s in a.skipped}
    assert "initializer 'scale' is shared by nodes mul_a, mul_b" in reasons["conv_a"]
