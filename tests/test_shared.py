"""Integration tests on the real benchmark models; skipped when ../shared is absent."""
import numpy as np
import onnxruntime as ort
import pytest

from conftest import SHARED
from onnxprune import prune
from onnxprune import analyze
from onnxprune.graph import padding
from onnxprune.io.modelio import load_model

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not (SHARED / "models").is_dir(), reason="../shared models not available"),
]


def test_resnet56_groups_are_exactly_the_27_block_internal_convs():
    """By default (graph/padding.ZERO_SOURCES off) the streams stay whole, as before."""
    a = analyze(load_model(SHARED / "models" / "resnet56_cifar10.onnx"))
    names = [g.name for g in a.groups]
    expected = [f"/layer{s}/layer{s}.{b}/conv1/Conv" for s in (1, 2, 3) for b in range(9)]
    assert names == expected
    assert all(g.consumers[0].node == n.replace("conv1", "conv2") for g, n in zip(a.groups, names))
    assert all(g.consumers[0].block == 9 for g in a.groups)


def test_resnet56_groups_are_the_block_internal_convs_and_the_three_streams(monkeypatch):
    """With zero sources on: the 27 block-internal convs, plus the residual streams (option-A shortcuts: channel c of a
    stage is channel c+8 / c+16 of the next, zero padding around it), which are cut into pieces:
    stage 1 with the middle of stages 2 and 3, the outer channels of stage 2 with the matching
    channels of stage 3, and the outer channels of stage 3 (graph/pieces.py)."""
    monkeypatch.setattr(padding, "ZERO_SOURCES", True)
    a = analyze(load_model(SHARED / "models" / "resnet56_cifar10.onnx"))
    names = [g.name for g in a.groups]
    internal = [f"/layer{s}/layer{s}.{b}/conv1/Conv" for s in (1, 2, 3) for b in range(9)]
    streams = ["/conv1/Conv", "/layer2/layer2.0/conv2/Conv[0:8]", "/layer2/layer2.0/conv2/Conv[24:32]",
               "/layer3/layer3.0/conv2/Conv[0:16]", "/layer3/layer3.0/conv2/Conv[48:64]"]
    assert sorted(names) == sorted(internal + streams)
    groups = {g.name: g for g in a.groups}
    assert all(groups[n].consumers[0].node == n.replace("conv1", "conv2") for n in internal)
    assert all(g.consumers[0].block == 9 for g in a.groups)
    assert [g.channels for g in (groups[n] for n in streams)] == [16, 8, 8, 16, 16]
    assert len(groups["/conv1/Conv"].producers) == 1 + 9 + 9 + 9
    assert [s.node for s in a.skipped] == ["/linear/Gemm"]


def test_lenet_groups():
    a = analyze(load_model(SHARED / "models" / "lenet_mnist.onnx"))
    assert [g.name for g in a.groups] == ["/conv1/Conv", "/conv2/Conv", "/fc1/Gemm", "/fc2/Gemm"]
    assert [g.consumers[0].block for g in a.groups] == [9, 25, 1, 1]


def test_lenet_greedy_asym_at_2x_keeps_accuracy():
    calib = np.load(SHARED / "data" / "mnist_calib.npz")["x"][:512]
    test = np.load(SHARED / "data" / "mnist_test.npz")
    x = (calib.astype(np.float32) / 255)[:, None]
    pruned, report = prune(SHARED / "models" / "lenet_mnist.onnx", x, compression=2)
    assert report.compression >= 2
    sess = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    xt = (test["x"].astype(np.float32) / 255)[:, None]
    pred = np.concatenate([sess.run(None, {"input": xt[i:i + 2000]})[0].argmax(1) for i in range(0, len(xt), 2000)])
    assert np.mean(pred == test["y"]) >= 0.985
