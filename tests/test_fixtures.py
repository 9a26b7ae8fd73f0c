"""Real PyTorch exports (tests/fixtures, made by tools/make_fixtures.py): the groups analysis
must find, and valid pruning of each."""
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders as B
from onnxprune import prune
from onnxprune import analyze
from onnxprune.io.modelio import load_model

FIXTURES = Path(__file__).parent / "fixtures"



def blk(stage, block, part):
    """Node names of the ResNet fixture's residual blocks."""
    return f"/layers/layers.{stage}/layers.{stage}.{block}/{part}/Conv"


EXPECTED = {
    "resnet_proj": {
        "/conv1/Conv": ["/conv1/Conv", blk(0, 0, "conv2"), blk(0, 1, "conv2")],
        blk(0, 0, "conv1"): 1, blk(0, 1, "conv1"): 1, blk(1, 0, "conv1"): 1,
        blk(1, 0, "conv2"): [blk(1, 0, "conv2"), blk(1, 0, "downsample/downsample.0"), blk(1, 1, "conv2")],
        blk(1, 1, "conv1"): 1, blk(2, 0, "conv1"): 1,
        blk(2, 0, "conv2"): [blk(2, 0, "conv2"), blk(2, 0, "downsample/downsample.0"), blk(2, 1, "conv2")],
        blk(2, 1, "conv1"): 1,
    },
    "mobilenetv2": {
        "/stem/stem.0/Conv": ["/stem/stem.0/Conv", "/blocks/blocks.0/conv/conv.6/Conv"],
        "/blocks/blocks.0/conv/conv.0/Conv": 1, "/blocks/blocks.1/conv/conv.0/Conv": 1,
        "/blocks/blocks.1/conv/conv.6/Conv": ["/blocks/blocks.1/conv/conv.6/Conv", "/blocks/blocks.2/conv/conv.6/Conv"],
        "/blocks/blocks.2/conv/conv.0/Conv": 1, "/blocks/blocks.3/conv/conv.0/Conv": 1,
        "/blocks/blocks.3/conv/conv.6/Conv": 1, "/head/head.0/Conv": 1,
    },
    "densenet": {name: 1 for name in [
        "/stem/Conv", "/block1/block1.0/conv1/Conv", "/block1/block1.0/conv2/Conv", "/block1/block1.1/conv1/Conv",
        "/block1/block1.1/conv2/Conv", "/block1/block1.2/conv1/Conv", "/block1/block1.2/conv2/Conv",
        "/trans/conv/Conv", "/block2/block2.0/conv1/Conv", "/block2/block2.0/conv2/Conv",
        "/block2/block2.1/conv1/Conv", "/block2/block2.1/conv2/Conv"]},
    "bert_tiny": {"/layers.0/ffn_in/MatMul": 1, "/layers.1/ffn_in/MatMul": 1,
                  "/layers.0/attn/query/MatMul": ["/layers.0/attn/query/MatMul", "/layers.0/attn/key/MatMul",
                                                  "/layers.0/attn/value/MatMul"],
                  "/layers.1/attn/query/MatMul": ["/layers.1/attn/query/MatMul", "/layers.1/attn/key/MatMul",
                                                  "/layers.1/attn/value/MatMul"]},
    "swiglu_mlp": {"/pre/MatMul": ["/pre/MatMul", "/down/MatMul"], "/gate/MatMul": ["/gate/MatMul", "/up/MatMul"]},
    "nhwc_flatten": {"/conv/Conv": 1, "/fc1/Gemm": 1},
}


def load(name):
    return load_model(FIXTURES / f"{name}.onnx"), dict(np.load(FIXTURES / f"{name}_calib.npz"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_groups_of_real_exports(name):
    model, _ = load(name)
    groups = {g.name: [p.node for p in g.producers] for g in analyze(model).groups}
    want = EXPECTED[name]
    assert sorted(groups) == sorted(want)
    for group, producers in want.items():
        if isinstance(producers, int):
            assert len(groups[group]) == producers
        else:
            assert groups[group] == producers


def test_reasons_for_what_real_exports_leave_alone():
    reasons = {s.node: s.reason for s in analyze(load("bert_tiny")[0]).skipped}
    assert "/layers.0/attn/query/MatMul" not in reasons          # its heads are a group (test_heads.py)
    assert "LayerNormalization" in reasons["/layers.0/ffn_out/MatMul"]
    reasons = {s.node: s.reason for s in analyze(load("mobilenetv2")[0]).skipped}
    assert "depthwise" in reasons["/blocks/blocks.0/conv/conv.3/Conv"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_keep_one_is_exact_on_real_exports(name):
    model, data = load(name)
    data = {k: v[:8] for k, v in data.items()}
    pruned, _ = prune(model, data, keep=1.0)
    for a, b in zip(B.run(model, data), B.run(pruned, data)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_half_keep_on_real_exports(name):
    assert_half_keep_prunes_and_runs(*load(name))


def assert_half_keep_prunes_and_runs(model, data):
    """keep=0.5 with refit: a checked model of the original's output shapes, every group smaller,
    and outputs that stay close (relative error under 0.5)."""
    pruned, report = prune(model, data, keep=0.5)
    onnx.checker.check_model(pruned, full_check=True)
    before, after = B.run(model, data), B.run(pruned, data)
    assert [a.shape for a in before] == [b.shape for b in after]
    assert report.params_after < report.params_before
    assert all(g["channels_after"] < g["channels_before"] for g in report.groups)
    assert report.verify["output_rel_error"]["logits"] < 0.5
    return pruned, report
