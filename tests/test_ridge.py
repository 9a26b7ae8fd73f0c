"""`--ridge auto`: the GCV scores from statistics equal the textbook formula on the rows, the
choice is the grid's argmin, rich layers keep the fixed ridge, and on a layer with more
features than calibration rows the chosen ridge generalises better than the fixed one."""
import numpy as np
import pytest

import builders as B
from onnxprune import prune
from onnxprune.solve.ridge import DEFAULT_RIDGE, GRID, RICH_ROWS, auto_ridge, gcv_scores


def _rows(n=40, d=60, m=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + 2.0   # correlated, off-centre
    y = x[:, :5] @ rng.standard_normal((5, m)) + 0.5 * rng.standard_normal((n, m)) + 1.0
    w0 = rng.standard_normal((d + 1, m)) * 0.1
    return x, y, w0


def _brute_gcv(x, y, w0, r, intercept):
    """GCV from the rows: the ridge fit toward w0 (intercept unpenalised), its residual and
    the trace of its hat matrix."""
    n, d = x.shape
    xi = np.hstack([x, np.ones((n, 1))]) if intercept else x
    w0 = w0 if intercept else w0[:d]
    gram = xi.T @ xi
    lam = r * np.mean(np.diag(gram)[:d])
    pen = np.diag([lam] * d + ([0.0] if intercept else []))
    w = np.linalg.solve(gram + pen, xi.T @ y + pen @ w0)
    hat = xi @ np.linalg.solve(gram + pen, xi.T)
    rss = np.sum((y - xi @ w) ** 2)
    return rss / (n * (1 - np.trace(hat) / n) ** 2)


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("prior", [True, False])
def test_gcv_from_statistics_equals_the_rows_formula(intercept, prior):
    x, y, w0 = _rows()
    xi = np.hstack([x, np.ones((len(x), 1))]) if intercept else x
    scores = gcv_scores(xi.T @ xi, xi.T @ y, float(np.sum(y ** 2)), len(x), np, w0=w0 if prior else None,
                        intercept=intercept)
    assert set(scores) == set(GRID)          # d = 60 > n = 40, but every grid ridge leaves df < n
    for r, score in scores.items():
        want = _brute_gcv(x, y, w0 if prior else np.zeros_like(w0), r, intercept)
        assert score == pytest.approx(want, rel=1e-4)      # 3e-5 at 1e-6: both near interpolation
    assert auto_ridge(xi.T @ xi, xi.T @ y, float(np.sum(y ** 2)), len(x), np, w0=w0 if prior else None,
                      intercept=intercept) == min(scores, key=scores.get)


def test_layers_with_many_rows_per_feature_keep_the_fixed_ridge():
    x, y, _ = _rows(n=RICH_ROWS * 8, d=8)
    xi = np.hstack([x, np.ones((len(x), 1))])
    assert auto_ridge(xi.T @ xi, xi.T @ y, float(np.sum(y ** 2)), len(x), np) == DEFAULT_RIDGE
    assert auto_ridge(xi.T @ xi, xi.T @ y, float(np.sum(y ** 2)), len(x) - 1, np) in GRID


def _wide_mlp():
    """x(40) -> fc1(200) -> relu -> fc2(5): pruning fc1 to 100 units leaves fc2 with 100 features
    to refit from 48 calibration rows."""
    b = B.GraphBuilder(4)
    x = b.input("x", ["N", 40])
    h = b.relu(b.gemm(x, 40, 200, name="fc1"))
    b.output(b.gemm(h, 200, 5, name="fc2"))
    return b.model()


def test_auto_ridge_generalises_where_rows_are_fewer_than_features():
    model = _wide_mlp()
    calib, held = B.random_inputs(model, 48, seed=1), B.random_inputs(model, 400, seed=2)
    (ref,) = B.run(model, held)
    errors, ridges = {}, {}
    for ridge in (1e-6, "auto"):
        pruned, report = prune(model, calib, keep=0.5, ridge=ridge)
        (out,) = B.run(pruned, held)
        errors[ridge] = float(np.sum((out - ref) ** 2) / np.sum(ref ** 2))
        ridges[ridge] = report.to_dict()["groups"][0]["ridge"]["fc2"]
    assert ridges[1e-6] == 1e-6 and ridges["auto"] > 1e-4
    assert errors["auto"] < 0.85 * errors[1e-6]       # measured 0.32 vs 0.43
