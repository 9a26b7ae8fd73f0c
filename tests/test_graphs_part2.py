"""Real-world graphs, part 2: channels coupled at an offset (YOLOv8 C2f residuals, option-A
zero-padded ResNet shortcuts). Every pattern is checked at the value level: pruned without
reweighting it equals the original with the removed channels' consumer rows zeroed
(rewrite/masked.py), and pruned with reweighting it still runs in onnxruntime."""
import numpy as np
import onnx
import pytest

import builders as B
from test_masked_equivalence import assert_masked_equivalent
from onnxprune import analyze, prune
from onnxprune.io.modelio import normalize

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
    `after`: a second ConvTranspose reads the decoder's channels (refused as a consumer)."""
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


def test_conv_transpose_is_a_producer_and_a_refused_consumer():
    groups = groups_of(unet(after=True))
    up = groups["up"]
    assert up.producers[0].op == "ConvTranspose" and up.producers[0].weight_axis == 1
    assert [c.node for c in up.consumers] == ["fuse"]
    assert {(s.axis, s.layout.positions) for s in up.sites} == {(1, 7), (0, 7)}      # weight, bias
    assert "up2" in groups and "fuse" not in groups
    reasons = {s.node: s.reason for s in analyze(normalize(unet(after=True))).skipped}
    assert "only as a producer" in reasons["fuse"]


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
