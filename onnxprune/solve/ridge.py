"""`--ridge auto`: each refit picks its own ridge by generalized cross-validation, from the
d x d statistics alone.

A layer refitted on fewer calibration rows than (or not many more than) its input features
interpolates the calibration set: the bundled MNIST CNN's fc1 has 1,569 features for 512 rows,
VGG11's last convs 2x2 maps. The ridge toward the layer's own weights decides the rest, and
how strong it should be depends on the layer. Generalized cross-validation (Golub, Heath &
Wahba 1979) estimates the leave-one-out error of a ridge fit without refitting:

    GCV(λ) = RSS(λ) / (n (1 - df(λ)/n)²),   df(λ) = Σ e_i / (e_i + λ) (+1 for the intercept)

and with the eigendecomposition G_c = Q diag(e) Qᵀ of the centred Gram (the intercept is never
penalised, which is the same as centring), the residual of the fit pulled toward W0 is

    RSS(λ) = T' - Σ_i p_i (e_i + 2λ) / (e_i + λ)²,   p_i = ||(Qᵀ (H_c - G_c W0))_i||²,

T' = ||Y - X W0||² (centred): one eigendecomposition, then every λ of the grid is a sum.
Rows of a conv are output positions of the same images, which are not independent: there GCV
under-estimates the ridge a little. Layers with at least RICH_ROWS rows per feature keep the
fixed DEFAULT_RIDGE (there the ridge only guards the numerics, docs/RESULTS.md).
"""
from __future__ import annotations

import numpy as np

DEFAULT_RIDGE = 1e-6
GRID = tuple(10.0 ** k for k in range(-6, 1))     # relative to the mean diagonal of the kept Gram
RICH_ROWS = 32


def auto_ridge(gram, h, target: float, rows: float, xp, w0=None, intercept: bool = True) -> float:
    """The relative ridge of GRID with the lowest GCV for min ||X W - Y||² + λ ||W - W0||²
    (DEFAULT_RIDGE where the layer has RICH_ROWS rows per feature or more).

    `gram`, `h`: the kept block of [X 1]ᵀ[X 1] and [X 1]ᵀY (intercept row last when
    `intercept`); `target` = ||Y||²; `rows` = the number of calibration rows; `w0` the prior
    (same rows as `h`; None: zero)."""
    d = gram.shape[0] - (1 if intercept else 0)
    if d == 0 or rows >= RICH_ROWS * d:
        return DEFAULT_RIDGE
    scores = gcv_scores(gram, h, target, rows, xp, w0, intercept)
    return min(scores, key=scores.get) if scores else DEFAULT_RIDGE


def gcv_scores(gram, h, target: float, rows: float, xp, w0=None, intercept: bool = True) -> dict:
    """relative ridge -> GCV score, for every ridge of GRID that leaves df(λ) < rows."""
    d = gram.shape[0] - (1 if intercept else 0)
    g, hx = gram[:d, :d], h[:d]
    scale = float(xp.mean(xp.diagonal(g))) if d else 0.0
    if scale <= 0:
        return {}
    if intercept:                      # centre: the unpenalised intercept absorbs the means
        s, n, hy = gram[:d, d], float(gram[d, d]), h[d]
        g = g - xp.outer(s, s) / n
        hx = hx - xp.outer(s, hy) / n
        target = target - float(xp.sum(hy * hy)) / n
    if w0 is not None:                 # fit the residual Y - X W0 toward zero
        w = xp.asarray(w0, dtype=xp.float64)[:d]
        gw = g @ w
        target = target - 2.0 * float(xp.sum(w * hx)) + float(xp.sum(w * gw))
        hx = hx - gw
    e, q = xp.linalg.eigh(g)
    e = xp.maximum(e, 0.0)
    p = xp.sum((q.T @ hx) ** 2, axis=1)
    scores = {}
    for r in GRID:
        lam = r * scale
        df = float(xp.sum(e / (e + lam))) + (1 if intercept else 0)
        if df < rows:
            rss = max(target - float(xp.sum(p * (e + 2 * lam) / (e + lam) ** 2)), 0.0)
            scores[r] = rss / (rows * (1 - df / rows) ** 2)
    return scores
