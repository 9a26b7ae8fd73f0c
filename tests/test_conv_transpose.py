"""ConvTranspose as a consumer of pruned channels (its input rows W[c] go with channel c), its
refit from transposed-convolution features, and its FLOPs."""
import numpy as np
import pytest

import builders as B
from onnxprune import analyze, prune
from onnxprune.budget.flops import model_flops
from onnxprune.io.modelio import normalize
from test_masked_equivalence import assert_masked_equivalent

GEOMETRIES = {
    "k3_s2_pad1_outpad1": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    "k2_s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "k3_dilated_uneven": dict(kernel_shape=[3, 3], strides=[2, 1], pads=[0, 2, 1, 0], dilations=[1, 2],
                              output_padding=[1, 0]),
}


def redundant_decoder(geometry: dict, bias=True, seed=0):
    """conv (8 channels: 5 duplicates 1, 6 duplicates 2, 7 is zero) -> Relu -> ConvTranspose
    (8 -> 4) -> Relu -> conv: five informative channels reach the ConvTranspose."""
    b = B.GraphBuilder(seed)
    x = b.input("x", ["N", 3, 6, 5])
    w, wb = b.randn(8, 3, 3, 3), b.randn(8, scale=0.1)
    w[5], wb[5], w[6], wb[6], w[7], wb[7] = w[1], wb[1], w[2], wb[2], 0.0, 0.0
    h = b.relu(b.node("Conv", [x, b.const(w), b.const(wb)], name="enc", pads=[1, 1, 1, 1]))
    inputs = [h, b.const(b.randn(8, 4, *geometry["kernel_shape"]))] + ([b.const(b.randn(4, scale=0.1))] if bias else [])
    h = b.relu(b.node("ConvTranspose", inputs, name="up", **geometry))
    b.output(b.conv(h, 4, 2, k=1, name="head", pads=[0, 0, 0, 0]))
    return b.model()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_conv_transpose_consumer_masked_equivalence(name, bias):
    model = redundant_decoder(GEOMETRIES[name], bias)
    groups = {g.name: g for g in analyze(normalize(model)).groups}
    (c,) = groups["enc"].consumers
    assert c.op == "ConvTranspose" and c.weight_axis == 0
    assert_masked_equivalent(model, B.random_inputs(model, 24, 1), B.random_inputs(model, 5, 7), 0.5)


@pytest.mark.parametrize("mode", ["layer", "asym"])
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_refit_moves_duplicate_channels_onto_the_kept_copies(name, mode):
    """Keeping the 5 informative channels of 8, the least-squares refit of the ConvTranspose
    from transposed-convolution features reproduces the original output; without the refit
    the removed duplicates are missed."""
    model = redundant_decoder(GEOMETRIES[name])
    calib, check = B.random_inputs(model, 32, 1), B.random_inputs(model, 6, 9)
    (want,) = B.run(model, check)
    pruned, report = prune(model, calib, keep=5 / 8, mode=mode, ridge=1e-9, exclude=("up",))
    (enc,) = report.groups
    kept = set(enc["kept"])
    assert len(kept) == 5 and {0, 3, 4} <= kept and len(kept & {1, 5}) == 1 and len(kept & {2, 6}) == 1
    (got,) = B.run(pruned, check)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    unfit, _ = prune(model, calib, keep=5 / 8, mode=mode, reweight=False, exclude=("up",))
    assert not np.allclose(B.run(unfit, check)[0], want, rtol=1e-3, atol=1e-3)


def test_grouped_and_output_shape_conv_transposes_stay_refused():
    for attrs, why in ((dict(group=2), "grouped ConvTranspose"), (dict(output_shape=[12, 10]), "output_shape")):
        b = B.GraphBuilder(1)
        x = b.input("x", ["N", 3, 6, 5])
        h = b.relu(b.conv(x, 3, 8, name="enc", pads=[1, 1, 1, 1]))
        cin = 4 if "group" in attrs else 4
        h = b.node("ConvTranspose", [h, b.const(b.randn(8, cin, 2, 2))], name="up", kernel_shape=[2, 2],
                   strides=[2, 2], **attrs)
        b.output(b.conv(b.relu(h), 8 if "group" in attrs else 4, 2, k=1, name="head", pads=[0, 0, 0, 0]))
        analysis = analyze(normalize(b.model()))
        assert "enc" not in {g.name for g in analysis.groups}
        assert why in {s.node: s.reason for s in analysis.skipped}["enc"]


def test_conv_transpose_flops_by_hand():
    """[N, 8, 6, 5] -> ConvTranspose k3 s2 pad1 outpad1 -> [N, 4, 12, 10]: every input element
    meets 4 x 3 x 3 weights: 8*6*5 * 4*9 = 8640 MACs; the 3x3 conv 3->8 on 6x5 does 6*5*8*27 =
    6480 and the 1x1 head 12*10*2*4 = 960. FLOPs = 2 x MACs."""
    model = redundant_decoder(GEOMETRIES["k3_s2_pad1_outpad1"])
    assert model_flops(model) == 2 * (6480 + 8640 + 960)
    up = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    planned = {up.input[1]: [5, 4, 3, 3]}             # 5 of 8 input channels kept
    assert model_flops(model, weight_dims=planned) == 2 * (6480 + 5 * 6 * 5 * 4 * 9 + 960)


def test_refit_all_refits_a_conv_transpose_whose_input_drifted():
    """enc is pruned, mid (its consumer) refitted; up reads mid's drifted output, is no
    consumer of a pruned group and its channels reach the output (not pruned): --refit all
    refits it toward its original output."""
    b = B.GraphBuilder(4)
    x = b.input("x", ["N", 3, 6, 5])
    h = b.relu(b.conv(x, 3, 8, name="enc", pads=[1, 1, 1, 1]))
    h = b.relu(b.conv(h, 8, 6, name="mid", pads=[1, 1, 1, 1]))
    b.output(b.node("ConvTranspose", [h, b.const(b.randn(6, 4, 3, 3))], name="up", kernel_shape=[3, 3],
                    strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]))
    model = b.model()
    _, report = prune(model, B.random_inputs(model, 48, 1), keep=0.5, mode="asym", refit="all", exclude=("mid",))
    assert [g["name"] for g in report.groups] == ["enc"]
    refits = {r["node"]: r for r in report.refits}
    assert "up" in refits and refits["up"]["rel_error_after"] < refits["up"]["rel_error_before"]
    assert refits["up"]["features"] == 6 * 9 + 1
