"""Property-based: random sequential chains of Conv/Gemm/MatMul layers with random pass-through
ops between them (random widths, kernels, strides, pads, dilations, pools, Flatten into a
Gemm/MatMul).

For every generated chain:
- analysis finds exactly the producer -> consumer pairs of the chain;
- keep=1 reproduces the outputs exactly;
- a random pruning passes the full checker, runs in onnxruntime with the original's output
  shapes, and reports its own parameter count;
- without reweighting, the pruned model computes what the original computes with the removed
  channels' consumer weights set to zero: this checks that every per-channel parameter on the
  way (bias, BatchNormalization, PRelu, constants, Flatten blocks) was sliced consistently.
"""
from dataclasses import dataclass

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

import builders as B
from onnxprune import prune
from onnxprune import analyze
from onnxprune.graph.index import float_param_count
from onnxprune.graph.layout import element_indices

OPSET, IR = 20, 9          # opset 20 has every pass-through op we support (Gelu, Mish, HardSwish)
UNARY = {
    "Relu": {}, "LeakyRelu": {"alpha": 0.1}, "Sigmoid": {}, "Tanh": {}, "HardSigmoid": {}, "HardSwish": {},
    "Elu": {}, "Selu": {}, "Celu": {}, "Softplus": {}, "Softsign": {}, "Mish": {}, "Gelu": {},
    "ThresholdedRelu": {"alpha": 0.1}, "Identity": {}, "Dropout": {}, "Clip": {},
}
SPATIAL_OPS = ["BatchNormalization", "PRelu", "Add", "Sub", "Mul", "Div", "MaxPool", "AveragePool", "LpPool"]
FLAT_OPS = ["BatchNormalization", "PRelu", "Add", "Sub", "Mul", "Div"]


@dataclass
class Chain:
    model: onnx.ModelProto
    layers: list            # Conv/Gemm/MatMul node names, in order
    input_shape: tuple


class _Shape:
    """Channels and spatial size of the tensor being built."""

    def __init__(self, channels, spatial=None):
        self.channels, self.spatial = channels, spatial


def _passthrough(draw, b, x, shape: _Shape, flat_block: int):
    """One random per-channel op on x; may change the spatial size (pools)."""
    rank = 2 if shape.spatial is None else 4
    if flat_block > 1:            # after a Flatten only element-wise ops and scalar constants
        choices = list(UNARY) + ["ScalarMul"]
    else:
        choices = list(UNARY) + (SPATIAL_OPS if rank == 4 else FLAT_OPS)
        if rank == 4 and shape.spatial != (1, 1):
            choices += ["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"]
    op = draw(st.sampled_from(sorted(choices)))
    c = shape.channels
    per_channel = (c, 1, 1) if rank == 4 else (c,)
    if op in UNARY:
        extra = [b.const(np.array(-0.5)), b.const(np.array(2.0))] if op == "Clip" else []
        return b.node(op, [x] + extra, **UNARY[op])
    if op == "ScalarMul":
        return b.node("Mul", [x, b.const(np.array(draw(st.sampled_from([0.5, -1.5, 2.0]))))])
    if op == "BatchNormalization":
        return b.bn(x, c)
    if op == "PRelu":
        slope = b.rng.uniform(0.05, 0.5, per_channel if draw(st.booleans()) else (1,))
        return b.node("PRelu", [x, b.const(slope)])
    if op in ("Add", "Sub", "Mul", "Div"):
        kind = draw(st.sampled_from(["channel", "scalar", "leading-one"]))
        values = b.rng.uniform(0.5, 2.0, per_channel) * b.rng.choice([-1, 1], per_channel)
        value = {"channel": values, "scalar": np.array(values.flat[0]),
                 "leading-one": values.reshape((1, *per_channel))}[kind]
        return b.node(op, [x, b.const(value)])
    if op.startswith("Global"):
        shape.spatial = (1, 1)
        return b.node(op, [x])
    k = draw(st.integers(1, min(3, *shape.spatial)))
    s = draw(st.integers(1, 2))
    p = draw(st.integers(0, k - 1))
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4}
    if op == "AveragePool":
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    shape.spatial = tuple((d + 2 * p - k) // s + 1 for d in shape.spatial)
    return b.node(op, [x], **attrs)


def _conv(draw, b, x, shape: _Shape, name: str):
    cout = draw(st.integers(1, 6))
    k = draw(st.integers(1, 3))
    d = draw(st.integers(1, 2)) if k > 1 else 1
    span = (k - 1) * d + 1
    s = draw(st.integers(1, 2))
    pads = [draw(st.integers(0, span - 1)) for _ in range(4)]
    while any(size + pads[i] + pads[i + 2] < span for i, size in enumerate(shape.spatial)):
        pads = [p + 1 for p in pads]
    y = b.conv(x, shape.channels, cout, k=k, bias=draw(st.booleans()), name=name, strides=[s, s], pads=pads,
               dilations=[d, d])
    shape.channels = cout
    shape.spatial = tuple((size + pads[i] + pads[i + 2] - span) // s + 1 for i, size in enumerate(shape.spatial))
    return y


def _dense(draw, b, x, fin: int, name: str):
    fout = draw(st.integers(1, 8))
    if draw(st.booleans()):
        y = b.gemm(x, fin, fout, trans_b=draw(st.integers(0, 1)), bias=draw(st.booleans()), name=name,
                   alpha=draw(st.sampled_from([1.0, 0.5])), beta=draw(st.sampled_from([1.0, 2.0])))
    else:
        y = b.matmul(x, fin, fout, bias=draw(st.booleans()), name=name)
    return y, fout


@st.composite
def chains(draw) -> Chain:
    b = B.GraphBuilder(seed=draw(st.integers(0, 2 ** 16)))
    n_conv = draw(st.integers(0, 3))
    n_dense = draw(st.integers(2 if n_conv == 0 else 0, 3))
    if n_conv + n_dense < 2:
        n_dense = 2 - n_conv
    layers = []
    if n_conv:
        shape = _Shape(draw(st.integers(1, 4)), (draw(st.integers(4, 9)), draw(st.integers(4, 9))))
        input_shape = (shape.channels, *shape.spatial)
        x = b.input("x", ["N", *input_shape])
    else:
        shape = _Shape(draw(st.integers(1, 8)))
        input_shape = (shape.channels,)
        x = b.input("x", ["N", shape.channels])
    for i in range(n_conv):
        layers.append(f"conv{i}")
        x = _conv(draw, b, x, shape, layers[-1])
        if i < n_conv - 1 or n_dense:
            for _ in range(draw(st.integers(0, 3))):
                x = _passthrough(draw, b, x, shape, 1)
    flat_block = 1
    if n_conv and n_dense:
        flat_block = shape.spatial[0] * shape.spatial[1]
        x = b.node("Flatten", [x], axis=1)
        shape = _Shape(shape.channels)                 # rank 2 from here on
        for _ in range(draw(st.integers(0, 1))):
            x = _passthrough(draw, b, x, shape, flat_block)
    features = shape.channels * flat_block
    for i in range(n_dense):
        layers.append(f"fc{i}")
        x, features = _dense(draw, b, x, features, layers[-1])
        shape = _Shape(features)
        if i < n_dense - 1:
            for _ in range(draw(st.integers(0, 2))):
                x = _passthrough(draw, b, x, shape, 1)
    b.output(x)
    return Chain(b.model(opset=OPSET, ir_version=IR), layers, input_shape)


def masked(model, analysis, report) -> onnx.ModelProto:
    """The original model with each removed channel's rows of its consumers' weights zeroed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for g, r in zip(analysis.groups, report.groups):
        removed = sorted(set(range(g.channels)) - set(r["kept"]))
        for c in g.consumers:
            w = numpy_helper.to_array(inits[c.weight]).copy()
            index = [slice(None)] * w.ndim
            index[c.weight_axis] = element_indices(removed, c.layout, g.channels)
            w[tuple(index)] = 0
            inits[c.weight].CopyFrom(numpy_helper.from_array(w, c.weight))
    return out


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(chain=chains(), keep=st.sampled_from([0.3, 0.5, 0.75]), mode=st.sampled_from(["layer", "seq", "asym"]),
       seed=st.integers(0, 100))
def test_random_chains(chain, keep, mode, seed):
    model = chain.model
    analysis = analyze(model)
    pairs = [(g.name, [c.node for c in g.consumers]) for g in analysis.groups]
    assert pairs == [(a, [b]) for a, b in zip(chain.layers, chain.layers[1:])]
    assert [s.node for s in analysis.skipped] == chain.layers[-1:]

    data = {"x": np.random.default_rng(seed).standard_normal((24, *chain.input_shape)).astype(np.float32)}
    (y,) = B.run(model, data)
    same, _ = prune(model, data, keep=1.0, mode=mode)
    np.testing.assert_array_equal(B.run(same, data)[0], y)

    for reweight in (True, False):
        pruned, report = prune(model, data, keep=keep, mode=mode, method="random" if not reweight else "greedy",
                               reweight=reweight, seed=seed)
        onnx.checker.check_model(pruned, full_check=True)
        (z,) = B.run(pruned, data)
        assert z.shape == y.shape and np.isfinite(z).all()
        assert report.params_after == float_param_count(pruned)
        for g, r in zip(analysis.groups, report.groups):
            assert r["channels_after"] == len(r["kept"]) == min(g.channels, max(1, int(keep * g.channels + 0.5)))
    (expected,) = B.run(masked(model, analysis, report), data)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5 * scale)
