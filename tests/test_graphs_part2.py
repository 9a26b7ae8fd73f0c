"""Real-world graphs, part 2: channels coupled at an offset (YOLOv8 C2f residuals, option-A
zero-padded ResNet shortcuts). Every pattern is checked at the value level: pruned without
reweighting it equals the original with the removed channels' consumer rows zeroed
(rewrite/masked.py), and pruned with reweighting it still runs in onnxruntime."""
import numpy as np
import onnx
import pytest

import builders as B
from test_fixtures import assert_half_keep_prunes_and_runs
from test_masked_equivalence import assert_masked_equivalent
from onnxprune.graph import padding
from onnxprune import analyze, prune
from onnxprune.io.modelio import normalize


@pytest.fixture(autouse=True)
def zero_sources(monkeypatch):
    """Zero-padded streams are off by default (graph/padding.py says why); these tests check the
    mechanism itself."""
    monkeypatch.setattr(padding, "ZERO_SOURCES", True)

KEEPS = (0.3, 0.6)


def c2f(seed=0, bottlenecks=2, opset=17):
    """stem -> cv1 -> Split halves a, b -> [m.i: conv -> relu -> conv] + residual -> Concat(a, b,
    y1, ..) -> cv2 -> GAP -> fc: the residual Add pairs channel c of the bottleneck with channel
    c+4 of cv1."""
    b = B.GraphBuilder(seed)
    x = b.input("x", ["N", 3, 8, 8])
    stem = b.relu(b.conv(x, 3, 6, name="stem"))
    h = b.relu(b.conv(stem, 6, 8, k=1, name="cv1"))
    if opset >= 13:
        b.node("Split", [h, b.const(np.array([4, 4], dtype=np.int64), "sizes")], outputs=2, axis=1, name="split")
    else:
        b.node("Split", [h], outputs=2, axis=1, split=[4, 4], name="split")
    parts = ["split_out", "split_out1"]
    y = parts[1]
    for i in range(bottlenecks):
        m = b.relu(b.conv(y, 4, 4, name=f"m{i}.cv1"))
        m = b.relu(b.conv(m, 4, 4, name=f"m{i}.cv2"))
        y = b.node("Add", [y, m], name=f"m{i}.add")
        parts.append(y)
    cat = b.node("Concat", parts, axis=1, name="cat")
    h = b.relu(b.conv(cat, 4 * len(parts), 6, k=1, name="cv2"))
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    b.output(b.gemm(h, 6, 3, name="fc"))
    return b.model(opset=opset)


def option_a(seed=0, pads=(2, 2), how="input", value=None, opset=17):
    """stem -> [a1 -> a2] + stem -> stage 2: [b1 (stride 2) -> b2] + Pad(Slice(x, step 2 on H, W),
    zeros on C) -> relu -> GAP -> fc. `how`: the pads as an initializer ('input'), a Pad
    attribute (opset 9) or computed from constants by Cast ('computed')."""
    b = B.GraphBuilder(seed)
    x = b.input("x", ["N", 3, 8, 8])
    stem = b.relu(b.conv(x, 3, 4, name="stem"))
    h = b.relu(b.conv(stem, 4, 4, name="a1"))
    s1 = b.relu(b.node("Add", [b.conv(h, 4, 4, name="a2"), stem], name="add1"))
    width = 4 + sum(pads)
    h = b.relu(b.conv(s1, 4, width, name="b1", strides=[2, 2]))
    main = b.conv(h, width, width, name="b2")
    full = [0, pads[0], 0, 0, 0, pads[1], 0, 0]
    if how == "attr":
        opset = 9
        sub = b.node("Slice", [s1], starts=[0, 0], ends=[100, 100], axes=[2, 3])
        sub = b.node("MaxPool", [sub], kernel_shape=[1, 1], strides=[2, 2])     # stride 2 without Slice steps
        padded = b.node("Pad", [sub], mode="constant", pads=full, **({} if value is None else {"value": value}))
    else:
        ints = lambda v: b.const(np.array(v, dtype=np.int64))  # noqa: E731
        sub = b.node("Slice", [s1, ints([0, 0]), ints([100, 100]), ints([2, 3]), ints([2, 2])])
        amounts = ints(full)
        if how == "computed":
            amounts = b.node("Cast", [b.const(np.array(full, dtype=np.float32))], to=onnx.TensorProto.INT64)
        extra = [] if value is None else [b.const(np.array(value, dtype=np.float32))]
        padded = b.node("Pad", [sub, amounts] + extra, mode="constant", name="pad")
    y = b.relu(b.node("Add", [main, padded], name="add2"))
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    b.output(b.gemm(y, width, 3, name="fc"))
    return b.model(opset=opset)


def self_offset(seed=0):
    """conv -> Split halves -> Add(first half, second half) -> conv: channel c and c+4 of one
    source meet, so both go together."""
    b = B.GraphBuilder(seed)
    x = b.input("x", ["N", 3, 6, 6])
    h = b.relu(b.conv(x, 3, 8, name="c1"))
    b.node("Split", [h, b.const(np.array([4, 4], dtype=np.int64), "sizes")], outputs=2, axis=1, name="split")
    lo, hi = "split_out", "split_out1"
    y = b.relu(b.conv(b.node("Add", [lo, hi], name="add"), 4, 5, name="c2"))
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    b.output(b.gemm(y, 5, 3, name="fc"))
    return b.model()


def unet(seed=0, output_padding=True, bias=True, after=False):
    """enc conv -> down conv s2 -> ConvTranspose (k3 s2 pad 1, output_padding 1: 4x4 -> 8x8, or
    k2 s2) -> relu -> Concat with the skip -> conv -> GAP -> fc (a U-Net / FPN decoder step).
    `after`: a second ConvTranspose reads the decoder's channels (a ConvTranspose consumer)."""
    b = B.GraphBuilder(seed)
    x = b.input("x", ["N", 3, 8, 8])
    enc = b.relu(b.conv(x, 3, 6, name="enc"))
    down = b.relu(b.conv(enc, 6, 10, name="down", strides=[2, 2]))
    k = 3 if output_padding else 2
    attrs = dict(kernel_shape=[k, k], strides=[2, 2])
    if output_padding:
        attrs.update(pads=[1, 1, 1, 1], output_padding=[1, 1])
    inputs = [down, b.const(b.randn(10, 7, k, k))] + ([b.const(b.randn(7, scale=0.1))] if bias else [])
    up = b.relu(b.node("ConvTranspose", inputs, name="up", **attrs))
    h = b.node("Concat", [up, enc], axis=1, name="cat")
    h = b.relu(b.conv(h, 13, 5, name="fuse"))
    if after:
        h = b.relu(b.node("ConvTranspose", [h, b.const(b.randn(5, 4, 2, 2))], name="up2", kernel_shape=[2, 2],
                          strides=[2, 2]))
        h = b.relu(b.conv(h, 4, 5, name="tail"))
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    b.output(b.gemm(h, 5, 3, name="fc"))
    return b.model()


MODELS = {
    "unet": unet,
    "unet_k2_nobias": lambda: unet(output_padding=False, bias=False),
    "unet_two_ups": lambda: unet(after=True),
    "c2f": c2f,
    "c2f_one": lambda: c2f(bottlenecks=1),
    "c2f_opset11": lambda: c2f(opset=11),
    "option_a": option_a,
    "option_a_uneven": lambda: option_a(pads=(1, 3)),
    "option_a_after_only": lambda: option_a(pads=(0, 4)),
    "option_a_attr": lambda: option_a(how="attr"),
    "option_a_computed": lambda: option_a(how="computed"),
    "option_a_zero_value": lambda: option_a(value=0.0),
    "option_a_one_value": lambda: option_a(value=1.0),
    "self_offset": self_offset,
}


def groups_of(model):
    return {g.name: g for g in analyze(normalize(model)).groups}


def test_c2f_cuts_cv1_into_a_free_half_and_a_coupled_half():
    groups = groups_of(c2f())
    free, coupled = groups["cv1[0:4]"], groups["cv1[4:8]"]
    assert free.channels == coupled.channels == 4
    assert [p.node for p in coupled.producers] == ["cv1", "m0.cv2", "m1.cv2"]
    assert sorted(c.node for c in coupled.consumers) == ["cv2", "m0.cv1", "m1.cv1"]
    assert [c.node for c in free.consumers] == ["cv2"]
    # cv2 reads the coupled channels three times (b, y1, y2) and the free ones once
    (cv2,) = [c for c in coupled.consumers if c.node == "cv2"]
    src, _ = cv2.layout.owners()
    assert (src == "cv1[4:8]").sum() == 12 and (src == "cv1[0:4]").sum() == 4
    assert any(a.kind == "split" for a in coupled.attr_sites)


def test_option_a_streams_become_groups_with_the_pad_as_a_site():
    groups = groups_of(option_a(pads=(1, 3)))
    assert set(groups) == {"stem", "a1", "b1", "b2[0:1]", "b2[5:8]"}
    assert [p.node for p in groups["stem"].producers] == ["stem", "a2", "b2"]
    assert groups["stem"].channels == 4
    assert (groups["b2[0:1]"].channels, groups["b2[5:8]"].channels) == (1, 3)
    # the Pad's amounts count the zeros, which go with b2's outer channels; stem's channels
    # only pass through it
    assert not groups["stem"].attr_sites
    for name, side in (("b2[0:1]", 0), ("b2[5:8]", 1)):
        (site,) = groups[name].attr_sites
        assert site.kind == "pad" and site.layouts[side].sources == {name}


def test_nonzero_padding_stays_refused():
    """Padding with ones: b2's outer channels (added to the ones) stay; its middle channels,
    coupled with the stream, do not depend on the padding and are still pruned."""
    groups = groups_of(option_a(value=1.0))
    assert set(groups) == {"stem", "a1", "b1"}
    assert [p.node for p in groups["stem"].producers] == ["stem", "a2", "b2"]
    assert not any(a.kind == "pad" for g in groups.values() for a in g.attr_sites)


def test_self_offset_removes_both_halves():
    groups = groups_of(self_offset())
    (g,) = [g for g in groups.values() if g.producers[0].node == "c1"]
    assert g.channels == 4
    src, _ = g.consumers[0].layout.owners()
    assert len(src) == 4


def test_conv_transpose_is_a_producer_and_a_consumer():
    groups = groups_of(unet(after=True))
    up = groups["up"]
    assert up.producers[0].op == "ConvTranspose" and up.producers[0].weight_axis == 1
    assert [c.node for c in up.consumers] == ["fuse"]
    assert {(s.axis, s.layout.positions) for s in up.sites} == {(1, 7), (0, 7)}      # weight, bias
    (up2,) = groups["fuse"].consumers
    assert up2.op == "ConvTranspose" and up2.weight_axis == 0 and up2.block == 4 and up2.conv.transposed
    assert groups["down"].consumers[0].conv.output_padding == (1, 1)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_masked_equivalence(name, keep):
    model = MODELS[name]()
    assert_masked_equivalent(model, B.random_inputs(model, 32, 1), B.random_inputs(model, 6, 7), keep)


@pytest.mark.parametrize("method", ["random", "weight-norm"])
@pytest.mark.parametrize("name", ["c2f", "option_a_uneven", "option_a_attr"])
def test_masked_equivalence_other_methods(name, method):
    model = MODELS[name]()
    assert_masked_equivalent(model, B.random_inputs(model, 24, 1), B.random_inputs(model, 6, 7), 0.5,
                             method=method, mode="layer")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reweighted_prune_runs_and_shrinks(name):
    model = normalize(MODELS[name]())
    pruned, report = prune(model, B.random_inputs(model, 32, 1), keep=0.5, seed=1)
    onnx.checker.check_model(pruned, full_check=True)
    (got,) = B.run(pruned, B.random_inputs(model, 4, 2))
    assert got.shape == (4, 3) and np.isfinite(got).all()
    assert report.params_after < report.params_before


# -- weights computed from constants (CNTK / TF exports) ----------------------------------

def computed_weights(seed=0, opset=13):
    """MatMul(x, Transpose(W)) + Add -> relu -> Gemm(h, Reshape(V, shape)) -> relu -> MatMul(x,
    Cast(U)) -> output: every weight is recomputed from an initializer at run time."""
    b = B.GraphBuilder(seed)
    x = b.input("x", ["N", 6])
    wt = b.node("Transpose", [b.const(b.randn(8, 6), "W")], perm=[1, 0], name="wT")
    h = b.relu(b.node("Add", [b.node("MatMul", [x, wt], name="mm1"), b.const(b.randn(8, scale=0.1))]))
    v = b.node("Reshape", [b.const(b.randn(40), "V"), b.const(np.array([8, 5], dtype=np.int64))], name="vR")
    h = b.relu(b.node("Gemm", [h, v, b.const(b.randn(5, scale=0.1))], name="gemm2"))
    u = b.node("Cast", [b.const(b.randn(5, 3).astype(np.float64), "U")], to=onnx.TensorProto.FLOAT, name="uC")
    b.output(b.node("MatMul", [h, u], name="mm3"))
    return b.model(opset=opset)


def test_computed_weights_are_folded_under_their_names():
    model = normalize(computed_weights())
    inits = {t.name for t in model.graph.initializer}
    assert {"wT_out", "vR_out", "uC_out"} <= inits and not {"W", "V", "U"} & inits
    assert {n.op_type for n in model.graph.node} == {"MatMul", "Add", "Relu", "Gemm", "Identity"}
    names = {g.name for g in analyze(model).groups}
    assert names == {"mm1", "gemm2"}
    (got,) = B.run(model, B.random_inputs(model, 4, 2))
    (want,) = B.run(computed_weights(), B.random_inputs(model, 4, 2))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_models_without_computed_weights_are_untouched(monkeypatch):
    """normalize() with folding writes byte-identical models to normalize() without it on every
    fixture and pattern (Constant nodes are moved to initializers before folding looks)."""
    from pathlib import Path

    import onnxprune.io.modelio as modelio
    import patterns as P
    from test_masked_equivalence import MODELS as PATTERNS

    fixtures = Path(__file__).parent / "fixtures"
    models = [onnx.load(str(p)) for p in sorted(fixtures.glob("*.onnx"))]
    models += [build() for build in PATTERNS.values()] + [P.residual_projection()]
    for m in models:
        folded = modelio.normalize(m).SerializeToString()
        with monkeypatch.context() as patch:
            patch.setattr(modelio, "fold_weights", lambda model: 0)
            plain = modelio.normalize(m).SerializeToString()
        assert folded == plain


@pytest.mark.parametrize("keep", KEEPS)
def test_computed_weights_masked_equivalence(keep):
    model = computed_weights()
    assert_masked_equivalent(model, B.random_inputs(model, 32, 1), B.random_inputs(model, 6, 7), keep)


# -- committed fixtures (tools/make_fixtures.py, tools/fixture_models2.py) ----------------

def _fixture(name):
    from pathlib import Path

    from onnxprune.io.modelio import load_model

    here = Path(__file__).parent / "fixtures"
    return load_model(here / f"{name}.onnx"), dict(np.load(here / f"{name}_calib.npz"))


def _stage(s, b, part):
    return f"/layers/layers.{s}/layers.{s}.{b}/{part}/Conv"


def test_resnet_option_a_fixture_groups():
    model, _ = _fixture("resnet_option_a")
    analysis = analyze(model)
    groups = {g.name: g for g in analysis.groups}
    stream = groups["/conv1/Conv"]
    assert [p.node for p in stream.producers] == ["/conv1/Conv"] + [_stage(s, b, "conv2") for s in range(3)
                                                                    for b in range(2)]
    assert groups[f"{_stage(1, 0, 'conv2')}[0:4]"].channels == 4
    assert groups[f"{_stage(2, 0, 'conv2')}[24:32]"].channels == 8
    assert sum(a.kind == "pad" for g in groups.values() for a in g.attr_sites) == 4
    assert len(groups) == 11 and [s.node for s in analysis.skipped] == ["/fc/Gemm"]


def test_unet_decoder_fixture_groups():
    model, _ = _fixture("unet_decoder")
    analysis = analyze(model)
    groups = {g.name: g for g in analysis.groups}
    assert sorted(groups) == ["/down/down.0/Conv", "/enc/enc.0/Conv", "/fuse/fuse.0/Conv", "/mid/mid.0/Conv",
                              "/up/up.0/ConvTranspose", "/up2/up2.0/ConvTranspose"]
    up = groups["/up/up.0/ConvTranspose"]
    assert "/up/up.1/BatchNormalization" in up.passthrough and [c.node for c in up.consumers] == ["/fuse/fuse.0/Conv"]
    for name, reader in (("/mid/mid.0/Conv", "/up/up.0/ConvTranspose"), ("/fuse/fuse.0/Conv", "/up2/up2.0/ConvTranspose")):
        assert [(c.node, c.op) for c in groups[name].consumers] == [(reader, "ConvTranspose")]
    assert [s.node for s in analysis.skipped] == ["/head/Conv"]


def test_yolo_c2f_fixture_prunes_its_residual_bottlenecks():
    model, data = _fixture("yolo_c2f")
    pruned, report = prune(model, {k: v[:16] for k, v in data.items()}, keep=0.5)
    done = {g["name"]: g for g in report.groups}
    for block in ("c2f1", "c2f2"):
        for name in (f"/{block}/cv1/conv/Conv[16:32]", f"/{block}/cv1/conv/Conv[0:16]"):
            assert done[name]["channels_after"] == 8
    shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    w = next(n for n in pruned.graph.node if n.name == "/c2f1/m.0/cv2/conv/Conv").input[1]
    assert shapes[w][0] == 8
    (got,) = B.run(pruned, {k: v[16:20] for k, v in data.items()})
    assert got.shape == (4, 24, 4, 4) and np.isfinite(got).all()


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("name", ["resnet_option_a", "unet_decoder", "yolo_c2f"])
def test_fixture_masked_equivalence(name, keep):
    model, data = _fixture(name)
    assert_masked_equivalent(model, {k: v[:16] for k, v in data.items()}, {k: v[16:20] for k, v in data.items()},
                             keep, mode="asym")


@pytest.mark.parametrize("name", ["resnet_option_a", "unet_decoder"])
def test_fixture_reweighted_prune_runs(name):
    assert_half_keep_prunes_and_runs(*_fixture(name))
