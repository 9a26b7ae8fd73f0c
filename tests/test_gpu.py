"""CuPy must give NumPy's answers. Skipped cleanly where CuPy or a GPU is missing."""
import numpy as np
import pytest
from onnx import numpy_helper

import builders as B
from onnxprune import prune
from onnxprune.solve.xp import cupy_or_none

cupy = cupy_or_none()
pytestmark = pytest.mark.skipif(cupy is None, reason="needs CuPy and an NVIDIA GPU")


def test_greedy_and_least_squares_match_numpy():
    from test_select import correlated_data, make_problem
    from onnxprune.solve.reweight import least_squares
    from onnxprune.solve.greedy import greedy_order

    b = correlated_data(300, 12, 3, seed=2)
    w = np.random.default_rng(3).standard_normal((37, 5))
    p_np = make_problem(b, w, block=3)
    p_cp = type(p_np)(*(cupy.asarray(v) if isinstance(v, np.ndarray) else v for v in
                        (p_np.gram, p_np.h, p_np.weight, p_np.target, p_np.block, p_np.channels)))
    order_np, err_np = greedy_order([p_np], 6, np)
    order_cp, err_cp = greedy_order([p_cp], 6, cupy)
    assert order_np == order_cp
    np.testing.assert_allclose(err_cp, err_np, rtol=1e-9)
    kept = np.sort(order_np)
    np.testing.assert_allclose(least_squares(p_cp, kept, 1e-6, cupy), least_squares(p_np, kept, 1e-6, np),
                               rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mode", ["layer", "asym"])
def test_whole_prune_matches_cpu(mode):
    model = B.cnn()
    data = B.random_inputs(model, 64)
    gpu, rg = prune(model, data, keep=0.5, mode=mode, device="auto")
    cpu, rc = prune(model, data, keep=0.5, mode=mode, device="cpu")
    assert [g["kept"] for g in rg.groups] == [g["kept"] for g in rc.groups]
    for a, b in zip(gpu.graph.initializer, cpu.graph.initializer):
        np.testing.assert_allclose(numpy_helper.to_array(a), numpy_helper.to_array(b), rtol=1e-4, atol=1e-6)
