"""Integration tests on the real benchmark models; skipped when ../shared is absent."""
import numpy as np
import onnxruntime as ort
import pytest

from conftest import SHARED
from onnxprune import prune
from onnxprune import analyze
from onnxprune.io.modelio import load_model

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not (SHARED / "models").is_dir(), reason="../shared models not available"),
]


def test_resnet56_groups_are_exactly_the_27_block_internal_convs():
    a = analyze(load_model(SHARED / "models" / "resnet56_cifar10.onnx"))
    names = [g.name for g in a.groups]
    expected = [f"/layer{s}/layer{s}.{b}/conv1/Conv" for s in (1, 2, 3) for b in range(9)]
    assert names == expected
    assert all(g.consumers[0].node == n.replace("conv1", "conv2") for g, n in zip(a.groups, names))
    assert all(g.consumers[0].block == 9 for g in a.groups)


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
