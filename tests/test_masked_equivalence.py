"""Masked equivalence on every prunable pattern, zoo model and committed fixture.

Without reweighting (greedy / weight-norm / random), the pruned model must compute what the
original computes once every consumer's weight rows that read a removed channel are zero
(rewrite/masked.py builds that reference). Any wrong-row surgery anywhere on the way (a
producer filter, a bias, BatchNormalization, a depthwise filter, a Flatten block, an NHWC
interleave, a Concat offset, a Split size) makes the two differ.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders as B
import model_zoo as Z
import patterns as P
from onnxprune import analyze, prune
from onnxprune.graph.layout import element_indices
from onnxprune.io.modelio import load_model, normalize
from onnxprune.rewrite.masked import masked_original, removed_rows
from onnxprune.run.options import PruneOptions
from onnxprune.run.session import open_session

FIXTURES = Path(__file__).parent / "fixtures"
KEEPS = (0.3, 0.6)

# name -> builder of a model with at least one prunable group
MODELS = {
    "residual_projection": P.residual_projection,
    "depthwise": P.depthwise,
    "concat": P.concat,
    "split": P.split,
    "split_opset11": lambda: P.split(opset=11),
    "fan_out": P.fan_out,
    "erf_gelu_ffn": P.erf_gelu_ffn,
    "swiglu": P.swiglu,
    "nhwc_flatten": P.nhwc_flatten,
    "nhwc_flatten_dynamic": lambda: P.nhwc_flatten(explicit=False),
    "nchw_reshape": P.nchw_reshape,
    "layernorm_stream": P.layernorm_stream,
    "mlp": B.mlp,
    "mlp_trans_b0": lambda: B.mlp(trans_b=0),
    "cnn_flatten": B.cnn,
    "cnn_gap": lambda: B.cnn(flatten=False),
    "matmul_mlp": B.matmul_mlp,
    "matmul_mlp_tokens": lambda: B.matmul_mlp(bias=False, tokens=3),
    "redundant_mlp": lambda: B.redundant_mlp()[0],
    **{f"opset{o}_cnn": (lambda o=o: Z.opset_cnn(o)) for o in Z.IR_FOR_OPSET},
    "constant_nodes_cnn": lambda: Z.as_constant_nodes(B.cnn()),
    "scalar_constant_mlp": Z.scalar_constant_mlp,
    "initializers_as_inputs": lambda: Z.with_initializers_as_inputs(P.concat()),
    "fp16_cnn": Z.fp16_cnn,
    "fp16_redundant_mlp": lambda: Z.fp16_redundant_mlp()[0],
    "dynamic_cnn": Z.dynamic_cnn,
    "multi_io_mlp": Z.multi_io_mlp,
    "subgraph_mlp": Z.subgraph_mlp,
}
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.onnx"))


def inputs_for(model, n, seed):
    if any(d.dim_param in ("H", "W") for vi in model.graph.input for d in vi.type.tensor_type.shape.dim):
        return {"x": np.random.default_rng(seed).standard_normal((n, 3, 12, 10)).astype(np.float32)}
    return B.random_inputs(model, n, seed=seed)


def assert_masked_equivalent(model, calib, check, keep, method="greedy", mode="seq"):
    """Prune without reweighting and compare with the masked original on `check` inputs."""
    model = normalize(model)
    # the groups prune() found, shape fallbacks included (symbolic inference, measured shapes)
    groups = open_session(model, calib, PruneOptions.of(keep=keep)).groups
    pruned, report = prune(model, calib, keep=keep, reweight=False, method=method, mode=mode, seed=3)
    assert [g["name"] for g in report.groups] == [g.name for g in groups]
    kept = {g["name"]: g["kept"] for g in report.groups}
    assert any(len(kept[g.name]) < g.channels for g in groups), "nothing was removed: the check is empty"
    reference = masked_original(model, groups, kept)
    onnx.checker.check_model(reference, full_check=True)
    for want, got in zip(B.run(reference, check), B.run(pruned, check)):
        assert got.shape == want.shape and got.dtype == want.dtype
        want, got = want.astype(np.float64), got.astype(np.float64)
        fp16 = pruned.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        scale = max(1.0, float(np.abs(want).max()))
        tol = 2e-2 if fp16 else 1e-4
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 0.1 * scale)
    return model, groups, kept


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_patterns_and_zoo(name, keep):
    model = MODELS[name]()
    assert_masked_equivalent(model, inputs_for(model, 32, 1), inputs_for(model, 6, 7), keep)


@pytest.mark.parametrize("method", ["weight-norm", "random"])
@pytest.mark.parametrize("name", ["concat", "nhwc_flatten", "split", "residual_projection", "depthwise", "swiglu"])
def test_other_methods_without_reweighting(name, method):
    model = MODELS[name]()
    assert_masked_equivalent(model, inputs_for(model, 24, 1), inputs_for(model, 6, 7), 0.5, method=method,
                             mode="layer")


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixtures(name, keep):
    model = load_model(FIXTURES / f"{name}.onnx")
    arrays = dict(np.load(FIXTURES / f"{name.removesuffix('_dimneg')}_calib.npz"))   # the dim -1 copy shares its data
    calib = {k: v[:16] for k, v in arrays.items()}
    check = {k: v[16:20] if len(v) >= 20 else v[:4] for k, v in arrays.items()}
    assert_masked_equivalent(model, calib, check, keep, mode="layer")


def test_big_model_with_external_data(tmp_path):
    path, calib = Z.big_model_files(tmp_path, 64)
    model = load_model(path)
    data = dict(np.load(calib))
    assert_masked_equivalent(model, {k: v[:32] for k, v in data.items()}, {k: v[32:38] for k, v in data.items()},
                             0.5)


# -- the reference itself -----------------------------------------------------------------

def weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_keeping_everything_changes_nothing():
    model = P.concat()
    groups = analyze(model).groups
    same = masked_original(model, groups, {g.name: list(range(g.channels)) for g in groups})
    assert same.SerializeToString() == model.SerializeToString()
    assert masked_original(model, groups, {}).SerializeToString() == model.SerializeToString()


def test_nhwc_flatten_zeroes_strided_rows():
    """Columns of the NHWC-flattened Gemm are (h, w, c), c fastest: channel c owns c, c+C, ..."""
    model = P.nhwc_flatten()
    groups = analyze(model).groups
    masked = masked_original(model, groups, {"conv": [0, 2, 4]})
    fc1 = next(n for n in model.graph.node if n.name == "fc1")
    w = weights(masked)[fc1.input[1]]                    # transB=1: [outputs, 80]
    zero = np.flatnonzero(np.all(w == 0, axis=0))
    np.testing.assert_array_equal(zero, np.sort(np.concatenate([np.arange(c, 80, 5) for c in (1, 3)])))
    unchanged = np.setdiff1d(np.arange(80), zero)
    np.testing.assert_array_equal(w[:, unchanged], weights(model)[fc1.input[1]][:, unchanged])


def test_flatten_zeroes_contiguous_blocks():
    model = B.cnn()                                   # conv2 (6 ch x 4x4) -> Flatten -> fc1
    groups = analyze(model).groups
    masked = masked_original(model, groups, {"conv2": [0, 1, 3, 4, 5]})
    fc1 = next(n for n in model.graph.node if n.name == "fc1")
    w = weights(masked)[fc1.input[1]]
    zero = np.flatnonzero(np.all(w == 0, axis=0))
    np.testing.assert_array_equal(zero, np.arange(2 * 16, 3 * 16))


def test_concat_offsets_and_opaque_channels():
    """conv_c reads [conv_a (4), x (3), conv_b (5)]: each group zeroes its own input channels."""
    model = P.concat()
    groups = analyze(model).groups
    masked = masked_original(model, groups, {"conv_a": [1, 2], "conv_b": [0, 4]})
    conv_c = next(n for n in model.graph.node if n.name == "conv_c")
    w = weights(masked)[conv_c.input[1]]              # [6, 12, 3, 3]
    zero = np.flatnonzero(np.all(w == 0, axis=(0, 2, 3)))
    np.testing.assert_array_equal(zero, [0, 3, 8, 9, 10])


def test_split_consumers_see_part_of_the_group():
    model = P.split()                                 # conv (8) -> Split [3, 5] -> conv_x, conv_y
    groups = analyze(model).groups
    rows = removed_rows(groups, {"conv": [0, 4, 7]})
    conv_x, conv_y = rows["conv_x"][1], rows["conv_y"][1]
    k = 9                                             # 3x3 kernels: 9 rows per input channel
    np.testing.assert_array_equal(conv_x, np.arange(1 * k, 3 * k))
    np.testing.assert_array_equal(conv_y, np.concatenate([np.arange(0, k), np.arange(2 * k, 4 * k)]))


def test_gemm_alpha_beta_are_folded_consistently():
    b = B.GraphBuilder(4)
    x = b.input("x", ["N", 5])
    h = b.relu(b.gemm(x, 5, 6, name="fc1"))
    b.output(b.gemm(h, 6, 3, name="fc2", alpha=0.5, beta=2.0))
    model = b.model()
    groups = analyze(model).groups
    data = B.random_inputs(model, 4)
    masked = masked_original(model, groups, {"fc1": list(range(6))})     # everything kept
    np.testing.assert_allclose(B.run(masked, data)[0], B.run(model, data)[0], rtol=1e-6)
    masked = masked_original(model, groups, {"fc1": [0, 2, 5]})
    fc2 = next(n for n in masked.graph.node if n.name == "fc2")
    assert {a.name: a.f for a in fc2.attribute if a.name in ("alpha", "beta")} == {"alpha": 1.0, "beta": 1.0}
    assert_masked_equivalent(model, B.random_inputs(model, 24), data, 0.5)


def test_wrong_rows_are_caught():
    """The check is not vacuous: the pruned model differs from the original masked with another
    kept set (what a surgery on the wrong rows produces)."""
    model = P.nhwc_flatten()
    data = B.random_inputs(model, 24)
    groups = analyze(model).groups
    pruned, report = prune(model, data, keep=0.6, reweight=False)
    kept = {g["name"]: g["kept"] for g in report.groups}
    wrong = dict(kept, conv=sorted(set(range(5)) - set(kept["conv"]))[:len(kept["conv"])] or [0])
    assert wrong["conv"] != kept["conv"]
    y = B.run(pruned, data)[0]
    assert not np.allclose(B.run(masked_original(model, groups, wrong), data)[0], y, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(B.run(masked_original(model, groups, kept), data)[0], y, rtol=1e-4, atol=1e-5)


def test_element_indices_matches_the_masked_rows():
    """removed_rows agrees with the layout's own element indices for a whole-group consumer."""
    model = P.nhwc_flatten()
    g = next(g for g in analyze(model).groups if g.name == "conv")
    (c,) = g.consumers
    rows = removed_rows([g], {"conv": [1, 2]})["fc1"][1]
    np.testing.assert_array_equal(rows, np.sort(element_indices([0, 3, 4], c.layout, 5)))


def test_out_of_range_kept_is_an_error():
    model = B.mlp()
    with pytest.raises(ValueError, match="outside"):
        masked_original(model, analyze(model).groups, {"fc1": [0, 99]})


def test_masked_module_does_not_import_onnxruntime():
    code = "import sys, onnxprune.rewrite.masked; assert 'onnxruntime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
