"""Paddle2ONNX forms (PP-OCR classifiers): Conv biases reshaped at run time, hardswish and
hardsigmoid gates spelled with Add / Clip / Mul / Div, and the batch read as a Slice of a Shape.

Every form is checked by value: pruned without refit == the original with the removed
channels' consumer rows zeroed (tests/test_masked_equivalence.py)."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders as B
import paddle_patterns as PP
from onnxprune import analyze, prune
from onnxprune.graph.index import GraphIndex
from onnxprune.graph.shapes import channel_count_unused, shape_entries, sliced_positions
from test_masked_equivalence import assert_masked_equivalent

FORMS = {
    "reshape_bias": {},
    "reshape_bias_inferred": {"bias": "reshape_inferred"},
    "unsqueeze_bias_opset11": {"bias": "unsqueeze"},
    "unsqueeze_bias_opset13": {"bias": "unsqueeze", "opset": 13},
    "clip_gate": {"gate": "clip"},
}


def inputs(n, seed):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)}


def groups_of(model):
    return {g.name: ([p.node for p in g.producers], [c.node for c in g.consumers]) for g in analyze(model).groups}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_conv_of_the_se_block_is_prunable(form):
    assert groups_of(PP.paddle_se(**FORMS[form])) == {
        "expand": (["expand", "se2"], ["se1", "linear"]),     # the gate's Mul couples se2 with expand
        "se1": (["se1"], ["se2"]),
        "linear": (["linear"], ["last"]),
        "last": (["last"], ["fc"]),                          # through Paddle's Shape/Slice flatten
    }


@pytest.mark.parametrize("keep", (0.3, 0.6))
@pytest.mark.parametrize("form", sorted(FORMS))
def test_masked_equivalence(form, keep):
    assert_masked_equivalent(PP.paddle_se(**FORMS[form]), inputs(32, 1), inputs(6, 7), keep)


def test_bias_vector_and_shape_entry_are_rewritten():
    model = PP.paddle_se()
    pruned, report = prune(model, inputs(32, 1), keep=0.5, reweight=False)
    kept = {g["name"]: len(g["kept"]) for g in report.groups}
    reshape_of = {n.output[0]: n for n in pruned.graph.node if n.op_type == "Reshape"}
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    for conv, group in (("se1", "se1"), ("se2", "expand")):
        add = next(n for n in pruned.graph.node if n.op_type == "Add" and n.input[0] ==
                   next(m for m in pruned.graph.node if m.name == conv).output[0])
        reshape = reshape_of[add.input[1]]
        assert inits[reshape.input[0]].shape == (kept[group],)
        assert inits[reshape.input[1]].tolist() == [1, kept[group], 1, 1]
    width = next(n for n in pruned.graph.node if n.op_type == "Cast" and n.input[0] in inits
                 and inits[n.input[0]].dtype == np.int32)
    assert inits[width.input[0]].tolist() == [kept["last"]]


@pytest.mark.parametrize("form", ["reshape_bias", "clip_gate"])
def test_asym_refit_runs_and_keeps_the_outputs_close(form):
    model = PP.paddle_se(**FORMS[form])
    pruned, report = prune(model, inputs(64, 1), keep=0.75, mode="asym")
    onnx.checker.check_model(pruned, full_check=True)
    check = inputs(16, 9)
    want, got = B.run(model, check)[0], B.run(pruned, check)[0]
    assert got.shape == want.shape
    assert report.params_after < report.params_before
    assert np.abs(got - want).max() < 0.5              # probabilities; the masked test is the exact check


def test_shared_reshaped_bias_is_refused():
    skipped = {s.node: s.reason for s in analyze(PP.paddle_se(shared_bias=True)).skipped}
    assert "is shared with other nodes" in skipped["se2"]
    assert "expand" in skipped                          # coupled with se2 through the gate


def test_shape_read_of_the_channel_count_is_refused():
    skipped = {s.node: s.reason for s in analyze(PP.paddle_se(head_reads_channels=True)).skipped}
    assert "reads the channel count" in skipped["last"]


# -- the shape arithmetic ------------------------------------------------------------------

def _shape_model(starts, ends, steps=None, gather=None):
    b = B.GraphBuilder(0)
    x = b.input("x", ["N", 4, 3])
    dims = b.node("Cast", [b.node("Shape", [x], name="shape")], to=6)
    if gather is not None:
        picked = b.node("Gather", [dims, b.const(np.array(gather))], axis=0)
    else:
        ins = [dims, b.const(np.array(starts)), b.const(np.array(ends)), b.const(np.array([0]))]
        picked = b.node("Slice", ins + ([b.const(np.array(steps))] if steps else []), name="slice")
    b.output(b.node("Cast", [picked], to=7), elem=onnx.TensorProto.INT64)
    return GraphIndex.build(b.model(opset=13))


@pytest.mark.parametrize("starts,ends,steps,want", [
    ([0], [1], None, [0]), ([1], [3], None, [1, 2]), ([-2], [9**9], None, [1, 2]), ([0], [3], [2], [0, 2]),
])
def test_sliced_positions(starts, ends, steps, want):
    idx = _shape_model(starts, ends, steps)
    node = idx.nodes["slice"]
    assert sliced_positions(idx, node, 3) == want
    shape_out = idx.nodes["shape"].output[0]
    assert channel_count_unused(idx, shape_out, 3, 1, 13) == (1 not in want)
    entries = shape_entries(idx, node.output[0])
    assert [(e.tensor, e.axis) for e in entries] == [("x", a) for a in want]


def test_negative_steps_are_not_followed():
    idx = _shape_model([2], [0], [-1])
    assert sliced_positions(idx, idx.nodes["slice"], 3) is None
    assert not channel_count_unused(idx, idx.nodes["shape"].output[0], 3, 1, 13)


def test_gather_after_cast_still_checks_the_channel_entry():
    idx = _shape_model(None, None, gather=[0, 2])
    out = idx.nodes["shape"].output[0]
    assert channel_count_unused(idx, out, 3, 1, 13)
    assert not channel_count_unused(idx, out, 3, 2, 13)
