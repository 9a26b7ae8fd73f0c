"""Property-based: random DAGs (not only chains) must be refused or pruned exactly.

Generated models mix residual Adds (two producers coupled), projection shortcuts, Concat along
the channels (with opaque graph-input channels and reordered pieces), Split along the channels
(attribute sizes before opset 13, the sizes input from 13 on, equal parts without sizes),
depthwise convs, squeeze-excitation gates x * Sigmoid(Conv(Relu(Conv(GAP(x))))), Shape ->
Gather -> Cast -> Div/Mul of the tensor (positive and negative indices), and heads into
Gemm/MatMul by GlobalAveragePool + Flatten, Flatten (channel blocks), NCHW Reshape, or
Transpose + Reshape (NHWC, strided channels); dense parts on [N, C] or token [N, T, C] tensors.

For every model: either analysis finds no group (refused, fine) or keep=1 reproduces the
outputs exactly and a reweight-free pruning equals the original with the removed channels'
consumer rows zeroed (rewrite/masked.py) - the check that catches wrong-row surgery.

CI runs a derandomized 40 examples; ONNXPRUNE_PROPERTY_EXAMPLES=N runs N random ones, e.g.
    ONNXPRUNE_PROPERTY_EXAMPLES=2000 python -m pytest -q -p no:cacheprovider \
        tests/test_property_dag.py -k test_random_dags --hypothesis-seed=1

The property's first long runs found four product bugs (a negative Gather index of the channel
count, a Split piece emptied by pruning, Gemm alpha/beta folded once per group, a Split sizes
input appended once per group); each has its repro below.
"""
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import builders as B
from onnxprune import analyze, prune
from onnxprune.graph.layout import Alive
from onnxprune.rewrite.masked import masked_original
from onnxprune.solve.problem import ChannelView

EXAMPLES = int(os.environ.get("ONNXPRUNE_PROPERTY_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, derandomize=EXAMPLES <= 40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])
IR = {11: 6, 13: 7, 17: 8, 20: 9}
UNARY = {11: ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Identity", "Softsign"],
         20: ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Identity", "Softsign", "HardSwish", "Gelu", "Mish"]}


@dataclass
class ShapeRead:
    """A Shape -> Gather of `tensor`'s dimension `index` (as written) of a rank-`rank` tensor."""

    tensor: str
    index: int
    rank: int
    channel_axis: int

    @property
    def reads_channels(self) -> bool:
        return self.index % self.rank == self.channel_axis


@dataclass
class Dag:
    model: onnx.ModelProto
    input_shape: tuple
    shape_reads: list = field(default_factory=list)


@dataclass
class Tensor:
    name: str
    channels: int
    spatial: tuple | None = None      # (H, W) for an NCHW tensor
    tokens: int | None = None         # T for a [N, T, C] tensor

    @property
    def rank(self) -> int:
        return 4 if self.spatial else (3 if self.tokens else 2)

    @property
    def axis(self) -> int:
        return 1 if self.spatial else self.rank - 1


class Gen:
    def __init__(self, draw, opset):
        self.draw, self.opset = draw, opset
        self.b = B.GraphBuilder(seed=draw(st.integers(0, 2 ** 16)))
        self.reads = []
        self.pool = []                 # earlier NCHW tensors, for Concat partners

    def ints(self, lo, hi):
        return self.draw(st.integers(lo, hi))

    def pick(self, options):
        return self.draw(st.sampled_from(options))

    # -- layers -------------------------------------------------------------------------
    def conv(self, t: Tensor, cout: int, k=None, stride=1, **kw) -> Tensor:
        k = k or self.pick([1, 3])
        p = k // 2
        y = self.b.conv(t.name, t.channels, cout, k=k, bias=self.draw(st.booleans()), strides=[stride, stride],
                        pads=[p] * 4, **kw)
        hw = tuple((d + 2 * p - k) // stride + 1 for d in t.spatial)
        return Tensor(y, cout, hw)

    def dense(self, t: Tensor, fout: int, name=None) -> Tensor:
        if t.rank == 2 and self.draw(st.booleans()):
            y = self.b.gemm(t.name, t.channels, fout, trans_b=self.ints(0, 1), bias=self.draw(st.booleans()),
                            name=name, alpha=self.pick([1.0, 0.5]), beta=self.pick([1.0, 2.0]))
        else:
            y = self.b.matmul(t.name, t.channels, fout, bias=self.draw(st.booleans()), name=name)
        return Tensor(y, fout, None, t.tokens)

    def same(self, t: Tensor, name: str) -> Tensor:
        return Tensor(name, t.channels, t.spatial, t.tokens)

    def passthrough(self, t: Tensor, resize=True) -> Tensor:
        op = self.pick(UNARY[20 if self.opset >= 20 else 11] + ["BN", "ChannelMul", "Pool"])
        per_channel = (t.channels, 1, 1) if t.spatial else (t.channels,)
        if op == "BN" and t.spatial:
            return self.same(t, self.b.bn(t.name, t.channels))
        if op == "ChannelMul" or op == "BN":
            scale = self.b.rng.uniform(0.5, 1.5, per_channel) * self.b.rng.choice([-1, 1], per_channel)
            return self.same(t, self.b.node(self.pick(["Mul", "Add"]), [t.name, self.b.const(scale)]))
        if op == "Pool":
            if not t.spatial:
                return self.same(t, self.b.node("Relu", [t.name]))
            if resize and min(t.spatial) >= 2 and self.draw(st.booleans()):
                y = self.b.node("MaxPool", [t.name], kernel_shape=[2, 2], strides=[2, 2])
                return Tensor(y, t.channels, tuple(d // 2 for d in t.spatial))
            return self.same(t, self.b.node("AveragePool", [t.name], kernel_shape=[3, 3], pads=[1] * 4,
                                            count_include_pad=self.ints(0, 1)))
        attrs = {"alpha": 0.1} if op == "LeakyRelu" else {}
        return self.same(t, self.b.node(op, [t.name], **attrs))

    def shape_scale(self, t: Tensor) -> Tensor:
        """t / float(shape(t)[index]) or t * ...: reads one dimension, maybe the channel count."""
        index = self.ints(-t.rank, t.rank - 1)
        if self.draw(st.booleans()):            # the channel axis, written either way
            index = self.pick([t.axis, t.axis - t.rank])
        self.reads.append(ShapeRead(t.name, index, t.rank, t.axis))
        value = np.array([index]) if self.draw(st.booleans()) else np.array(index)
        dim = self.b.node("Gather", [self.b.node("Shape", [t.name]), self.b.const(value, "idx")], axis=0)
        dim = self.b.node("Cast", [dim], to=onnx.TensorProto.FLOAT)
        return self.same(t, self.b.node(self.pick(["Div", "Mul"]), [t.name, dim]))

    def split(self, t: Tensor, sizes) -> list:
        """Split t along its channel axis into `sizes`, in the opset's form."""
        n = len(sizes)
        axis = t.axis if self.draw(st.booleans()) else t.axis - t.rank
        equal = len(set(sizes)) == 1 and self.draw(st.booleans())
        if equal:
            kw = {"num_outputs": n} if self.opset >= 18 else {}
            first = self.b.node("Split", [t.name], outputs=n, axis=axis, **kw)
        elif self.opset < 13:
            first = self.b.node("Split", [t.name], outputs=n, axis=axis, split=list(sizes))
        else:
            first = self.b.node("Split", [t.name, self.b.const(np.array(sizes), "sizes")], outputs=n, axis=axis)
        base = first[:-len("_out")]
        names = [first] + [f"{base}_out{i}" for i in range(1, n)]
        return [Tensor(nm, s, t.spatial, t.tokens) for nm, s in zip(names, sizes)]

    def concat(self, parts: list) -> Tensor:
        t = parts[0]
        axis = t.axis if self.draw(st.booleans()) else t.axis - t.rank
        y = self.b.node("Concat", [p.name for p in parts], axis=axis)
        return Tensor(y, sum(p.channels for p in parts), t.spatial, t.tokens)

    def sizes(self, c: int) -> list:
        n = self.ints(2, min(3, c))
        if c % n == 0 and self.draw(st.booleans()):
            return [c // n] * n
        cuts = sorted(self.draw(st.lists(st.integers(1, c - 1), min_size=n - 1, max_size=n - 1, unique=True)))
        return [b - a for a, b in zip([0] + cuts, cuts + [c])]

    # -- blocks -------------------------------------------------------------------------
    def conv_block(self, t: Tensor) -> Tensor:
        kind = self.pick(["conv", "conv", "residual", "projection", "concat", "split", "depthwise", "se", "shape",
                          "pass"])
        c = t.channels
        if kind == "conv":
            return self.conv(t, self.ints(1, 6), stride=self.ints(1, 2))
        if kind == "residual":
            h = self.passthrough(self.conv(t, self.ints(1, 6), k=3), resize=False)
            y = self.conv(h, c, k=3)
            pair = [t.name, y.name] if self.draw(st.booleans()) else [y.name, t.name]
            return self.same(t, self.b.node("Add", pair))
        if kind == "projection":
            m, s = self.ints(1, 6), self.ints(1, 2)
            main = self.conv(self.passthrough(self.conv(t, self.ints(1, 5), k=3), resize=False), m, k=3, stride=s)
            proj = self.conv(t, m, k=1, stride=s)
            return self.same(main, self.b.node("Add", [main.name, proj.name]))
        if kind == "concat":
            partners = [p for p in self.pool if p.spatial == t.spatial and p.name != t.name]
            parts = [self.conv(t, self.ints(1, 4), k=self.pick([1, 3]))]
            parts += [self.pick(partners)] if partners and self.draw(st.booleans()) else [t]
            if self.draw(st.booleans()):
                parts.append(self.passthrough(self.conv(t, self.ints(1, 4)), resize=False))
            parts = self.draw(st.permutations(parts))
            return self.concat(parts)
        if kind == "split" and c >= 2:
            parts = self.split(t, self.sizes(c))
            how = self.pick(["add", "concat", "drop"])
            if how == "add":
                m = self.ints(1, 5)
                outs = [self.conv(p, m) for p in parts]
                y = outs[0].name
                for o in outs[1:]:
                    y = self.b.node("Add", [y, o.name])
                return self.same(outs[0], y)
            if how == "concat":               # pieces back in another order, some through a conv
                parts = [self.passthrough(p, resize=False) if self.draw(st.booleans()) else p for p in parts]
                return self.concat(list(reversed(parts)))
            return self.conv(parts[self.ints(0, len(parts) - 1)], self.ints(1, 5))      # others unused
        if kind == "depthwise":
            w = self.b.const(self.b.randn(c, 1, 3, 3))
            ins = [t.name, w] + ([self.b.const(self.b.randn(c, scale=0.1))] if self.draw(st.booleans()) else [])
            return self.same(t, self.b.node("Conv", ins, group=c, kernel_shape=[3, 3], pads=[1] * 4))
        if kind == "se":
            g, r = self.b.node("GlobalAveragePool", [t.name]), self.ints(1, 4)
            h = self.b.relu(self.b.conv(g, c, r, k=1, pads=[0] * 4))
            s = self.b.node("Sigmoid", [self.b.conv(h, r, c, k=1, pads=[0] * 4)])
            pair = [t.name, s] if self.draw(st.booleans()) else [s, t.name]
            return self.same(t, self.b.node("Mul", pair))
        if kind == "shape":
            return self.shape_scale(t)
        return self.passthrough(t)

    def dense_block(self, t: Tensor) -> Tensor:
        kind = self.pick(["dense", "dense", "residual", "split", "shape", "pass"])
        c = t.channels
        if kind == "residual":
            h = self.passthrough(self.dense(t, self.ints(1, 8)))
            y = self.dense(h, c)
            pair = [t.name, y.name] if self.draw(st.booleans()) else [y.name, t.name]
            return self.same(t, self.b.node("Add", pair))
        if kind == "split" and c >= 2:
            parts = self.split(t, self.sizes(c))
            if self.draw(st.booleans()):
                return self.concat(list(reversed(parts)))
            m = self.ints(1, 6)
            outs = [self.dense(p, m) for p in parts]
            y = outs[0].name
            for o in outs[1:]:
                y = self.b.node("Add", [y, o.name])
            return self.same(outs[0], y)
        if kind == "shape":
            return self.shape_scale(t)
        if kind == "pass":
            return self.passthrough(t)
        return self.dense(t, self.ints(1, 8))

    def head(self, t: Tensor) -> Tensor:
        """From NCHW to [N, F] features."""
        kind = self.pick(["nhwc", "flatten", "nchw_reshape", "gap"])
        h, w = t.spatial
        c = t.channels
        if kind == "gap":
            y = self.b.node("Flatten", [self.b.node("GlobalAveragePool", [t.name])], axis=1)
            return Tensor(y, c)
        if kind == "flatten":
            return Tensor(self.b.node("Flatten", [t.name], axis=1), c * h * w)
        if kind == "nhwc":
            x = self.b.node("Transpose", [t.name], perm=[0, 2, 3, 1])
            shape = self.pick([[-1, h * w * c], [0, -1]])
            return Tensor(self.b.node("Reshape", [x, self.b.const(np.array(shape), "shape")]), c * h * w)
        return Tensor(self.b.node("Reshape", [t.name, self.b.const(np.array([0, c * h * w]), "shape")]), c * h * w)


@st.composite
def dags(draw) -> Dag:
    opset = draw(st.sampled_from(sorted(IR)))
    g = Gen(draw, opset)
    domain = draw(st.sampled_from(["conv", "conv", "dense", "tokens"]))
    if domain == "conv":
        t = Tensor("x", draw(st.integers(1, 4)), (draw(st.integers(3, 8)), draw(st.integers(3, 8))))
        g.b.input("x", ["N", t.channels, *t.spatial])
        g.pool.append(t)
        t = g.conv(t, draw(st.integers(1, 6)))          # blocks then start from prunable channels
        g.pool.append(t)
        for _ in range(draw(st.integers(1, 5))):
            t = g.conv_block(t)
            g.pool.append(t)
        if draw(st.integers(0, 3)):
            t = g.head(t)
    else:
        t = Tensor("x", draw(st.integers(1, 8)), None, draw(st.integers(1, 3)) if domain == "tokens" else None)
        g.b.input("x", ["N", t.tokens, t.channels] if t.tokens else ["N", t.channels])
    if domain != "conv":
        t = g.dense(t, draw(st.integers(1, 8)))
    if not t.spatial:
        for _ in range(draw(st.integers(0, 3))):
            t = g.dense_block(t)
        t = g.dense(t, draw(st.integers(1, 4)))
    g.b.output(t.name)
    model = g.b.model(opset=opset, ir_version=IR[opset])
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    return Dag(model, shape, g.reads)


def accepted_channel_reads(dag: Dag, groups) -> list:
    """Shape reads of a channel count whose tensor is nevertheless in a prunable group."""
    tracked = {t for g in groups for t in g.tensors}
    return [r for r in dag.shape_reads if r.reads_channels and r.tensor in tracked]


def partial_consumers(groups) -> list:
    """Consumers that see only some of a group's channels (one output of a Split)."""
    return [c.node for g in groups for c in g.consumers
            if len(ChannelView.of(c, set(g.sources), g.channels, Alive()).members) < g.channels]


def check_dag(dag: Dag, keep: float, mode: str, method: str, seed: int) -> None:
    model = dag.model
    analysis = analyze(model)
    if not analysis.groups:
        return                                      # refused: fine
    bad = accepted_channel_reads(dag, analysis.groups)
    assert not bad, f"a Shape read of the channel count was accepted: {bad}"
    rng = np.random.default_rng(seed)
    data = {"x": rng.standard_normal((16, *dag.input_shape)).astype(np.float32)}
    check = {"x": rng.standard_normal((4, *dag.input_shape)).astype(np.float32)}
    (y,) = B.run(model, check)
    same, _ = prune(model, data, keep=1.0, mode=mode)
    np.testing.assert_array_equal(B.run(same, check)[0], y)

    pruned, report = prune(model, data, keep=keep, mode=mode, method=method, reweight=False, seed=seed)
    onnx.checker.check_model(pruned, full_check=True)
    kept = {r["name"]: r["kept"] for r in report.groups}
    (z,) = B.run(pruned, check)
    (expected,) = B.run(masked_original(model, analysis.groups, kept), check)
    assert z.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5 * scale)


@SETTINGS
@given(dag=dags(), keep=st.sampled_from([0.3, 0.5, 0.75]), mode=st.sampled_from(["layer", "seq", "asym"]),
       method=st.sampled_from(["greedy", "weight-norm", "random"]), seed=st.integers(0, 100))
def test_random_dags(dag, keep, mode, method, seed):
    check_dag(dag, keep, mode, method, seed)


def shape_read_model(rank: int, index: int) -> Dag:
    """c1 -> Relu -> x / float(Shape(x)[index]) -> c2 -> y, on NCHW (rank 4) or [N, C] (rank 2)."""
    b = B.GraphBuilder(0)
    if rank == 4:
        h = b.relu(b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4, name="c1"))
        shape = (3, 5, 5)
    else:
        h = b.relu(b.gemm(b.input("x", ["N", 3]), 3, 4, name="c1"))
        shape = (3,)
    dim = b.node("Cast", [b.node("Gather", [b.node("Shape", [h]), b.const(np.array(index))], axis=0)], to=1)
    h = b.node("Div", [h, dim])
    b.output(b.conv(h, 4, 2, name="c2") if rank == 4 else b.gemm(h, 4, 2, name="c2"))
    return Dag(b.model(), shape, [ShapeRead(h, index, rank, 1)])


@pytest.mark.parametrize("rank, index", [(4, 1), (4, -1), (4, -2), (2, 0), (2, -2)])
def test_shape_reads(rank, index):
    """Reading the channel count (index 1) refuses c1; other dimensions are fine to prune through."""
    dag = shape_read_model(rank, index)
    names = [g.name for g in analyze(dag.model).groups]
    assert names == ([] if index == 1 else ["c1"])
    check_dag(dag, 0.5, "seq", "greedy", 0)


@pytest.mark.parametrize("rank, index", [(4, -3), (2, -1)])
def test_negative_gather_of_the_channel_count(rank, index):
    dag = shape_read_model(rank, index)
    check_dag(dag, 0.5, "seq", "greedy", 0)
    assert not analyze(dag.model).groups


def test_split_piece_emptied_by_pruning():
    """conv (4 ch) -> Split [1, 3] -> conv_x (reads channel 0 only), conv_y -> Add. Keeping one
    channel out of 4 that is not channel 0 leaves conv_x with nothing to read."""
    b = B.GraphBuilder(0)
    h = b.relu(b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4, name="conv"))
    first = b.node("Split", [h, b.const(np.array([1, 3]), "sizes")], name="split", outputs=2, axis=1)
    total = b.node("Add", [b.conv(first, 1, 2, name="conv_x"), b.conv("split_out1", 3, 2, name="conv_y")])
    b.output(total)
    dag = Dag(b.model(), (3, 5, 5))
    assert partial_consumers(analyze(dag.model).groups) == ["conv_x", "conv_y"]
    check_dag(dag, 0.25, "seq", "random", 0)


def two_group_gemm(alpha: float, beta: float) -> Dag:
    """fa, fb (3 outputs each) -> Relu -> Concat -> head Gemm(alpha, beta): head reads two groups."""
    b = B.GraphBuilder(0)
    x = b.input("x", ["N", 4])
    cat = b.node("Concat", [b.relu(b.gemm(x, 4, 3, name="fa")), b.relu(b.gemm(x, 4, 3, name="fb"))], axis=1)
    b.output(b.gemm(cat, 6, 2, name="head", alpha=alpha, beta=beta))
    return Dag(b.model(), (4,))


def test_gemm_reading_two_groups_with_unit_alpha_beta():
    check_dag(two_group_gemm(1.0, 1.0), 0.5, "seq", "greedy", 0)


@pytest.mark.parametrize("alpha, beta", [(0.5, 1.0), (1.0, 2.0)])
def test_gemm_alpha_beta_folded_twice(alpha, beta):
    check_dag(two_group_gemm(alpha, beta), 0.5, "seq", "greedy", 0)


@pytest.mark.parametrize("opset", [13, 18])
def test_split_sizes_input_added_twice(opset):
    """ca, cb (2 ch each) -> Concat -> Split into 2 equal parts (no sizes) -> cx, cy -> Add."""
    b = B.GraphBuilder(0)
    x = b.input("x", ["N", 3, 4, 4])
    cat = b.node("Concat", [b.relu(b.conv(x, 3, 2, name="ca")), b.relu(b.conv(x, 3, 2, name="cb"))], axis=1)
    first = b.node("Split", [cat], name="split", outputs=2, axis=1, **({"num_outputs": 2} if opset >= 18 else {}))
    b.output(b.node("Add", [b.conv(first, 2, 2, name="cx"), b.conv("split_out1", 2, 2, name="cy")]))
    check_dag(Dag(b.model(opset=opset), (3, 4, 4)), 0.5, "seq", "greedy", 0)


def test_split_piece_emptied_before_a_pool():
    """conv (4 ch) -> Split [1, 3] -> piece 0 -> AveragePool -> Concat(piece 1, pooled) -> c2."""
    b = B.GraphBuilder(0)
    h = b.relu(b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4, name="conv"))
    first = b.node("Split", [h, b.const(np.array([1, 3]), "sizes")], name="split", outputs=2, axis=1)
    pooled = b.node("AveragePool", [first], kernel_shape=[3, 3], pads=[1] * 4)
    b.output(b.conv(b.node("Concat", ["split_out1", pooled], axis=1), 4, 2, name="c2"))
    check_dag(Dag(b.model(opset=20, ir_version=9), (3, 5, 5)), 0.25, "seq", "random", 0)
