"""CuPy must give NumPy's answers, and `--device auto` must use the GPU for both capture and
math or for neither.

Every test body runs twice: with NumPy on the CPU (always, so the bodies cannot rot on
machines without a GPU) and with CuPy + onnxruntime's CUDA provider (skipped cleanly where
either cannot load).
"""
import dataclasses

import numpy as np
import pytest
from onnx import numpy_helper

import builders as B
from onnxprune import prune
from onnxprune.capture import runtime
from onnxprune.run import device as device_module
from onnxprune.solve.xp import cupy_or_none

cupy = cupy_or_none()
BACKENDS = [
    pytest.param("cpu", id="numpy"),
    pytest.param("cuda", id="cupy", marks=pytest.mark.skipif(
        cupy is None or not runtime.cuda_provider_usable(), reason="needs CuPy, onnxruntime's CUDA provider and an NVIDIA GPU")),
]


def on_device(p, xp):
    """The problem with its arrays on the backend (every array field, by name)."""
    return dataclasses.replace(p, **{f.name: xp.asarray(getattr(p, f.name)) for f in dataclasses.fields(p)
                                     if isinstance(getattr(p, f.name), np.ndarray) and f.name != "members"})


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_and_least_squares_match_numpy(backend):
    from test_select import correlated_data, make_problem
    from onnxprune.solve.greedy import greedy_order
    from onnxprune.solve.reweight import least_squares

    xp = device_module.resolve(backend).xp
    b = correlated_data(300, 12, 3, seed=2)
    w = np.random.default_rng(3).standard_normal((37, 5))
    p_np = make_problem(b, w, block=3)
    p_dev = on_device(p_np, xp)
    assert all(type(getattr(p_dev, n)) is type(xp.asarray(np.zeros(1))) for n in ("gram", "h", "weight"))
    order_np, err_np = greedy_order([p_np], 6, np)
    order_dev, err_dev = greedy_order([p_dev], 6, xp)
    assert order_np == order_dev
    np.testing.assert_allclose(err_dev, err_np, rtol=1e-9)
    kept = np.sort(order_np)
    got = least_squares(p_dev, kept, 1e-6, xp)
    np.testing.assert_allclose(got.get() if hasattr(got, "get") else got, least_squares(p_np, kept, 1e-6, np),
                               rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_ridge_matches_numpy(backend):
    """--ridge auto's GCV (an eigendecomposition and sums) picks the same ridge on the device."""
    from test_ridge import _rows
    from onnxprune.solve.ridge import auto_ridge, gcv_scores

    xp = device_module.resolve(backend).xp
    x, y, w0 = _rows()
    xi = np.hstack([x, np.ones((len(x), 1))])
    args = (xi.T @ xi, xi.T @ y)
    want = gcv_scores(*args, float(np.sum(y ** 2)), len(x), np, w0=w0)
    got = gcv_scores(*(xp.asarray(a) for a in args), float(np.sum(y ** 2)), len(x), xp, w0=xp.asarray(w0))
    # (1e-4: the smallest ridge's score is near interpolation, where eigh's rounding shows)
    assert set(got) == set(want) and all(got[r] == pytest.approx(want[r], rel=1e-4) for r in want)
    assert auto_ridge(*(xp.asarray(a) for a in args), float(np.sum(y ** 2)), len(x), xp,
                      w0=xp.asarray(w0)) == min(got, key=got.get)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["layer", "asym"])
def test_whole_prune_matches_cpu(backend, mode):
    model = B.cnn()
    data = B.random_inputs(model, 64)
    dev, rd = prune(model, data, keep=0.5, mode=mode, device=backend)
    cpu, rc = prune(model, data, keep=0.5, mode=mode, device="cpu")
    assert rd.device == backend
    assert [g["kept"] for g in rd.groups] == [g["kept"] for g in rc.groups]
    for a, b in zip(dev.graph.initializer, cpu.graph.initializer):
        np.testing.assert_allclose(numpy_helper.to_array(a), numpy_helper.to_array(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("provider,has_cupy,expected", [
    (True, True, "cuda"), (True, False, "cpu"), (False, True, "cpu"), (False, False, "cpu")])
def test_auto_uses_the_gpu_for_both_or_neither(monkeypatch, provider, has_cupy, expected):
    monkeypatch.setattr(runtime, "cuda_provider_usable", lambda: provider)
    fake = type("FakeCuPy", (), {})()
    monkeypatch.setattr(device_module, "cupy_or_none", lambda: fake if has_cupy else None)
    monkeypatch.setattr(device_module, "array_module", lambda name: fake if name == "cuda" else np)
    chosen = device_module.resolve("auto")
    assert chosen.name == expected
    assert (chosen.xp is fake) == (expected == "cuda")
