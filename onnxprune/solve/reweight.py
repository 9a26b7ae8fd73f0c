"""The `reweight` stage: refit the consumer's weights on the kept channels by least squares.

W~ = (G_SS + λI)⁻¹ H_S, λ = ridge x mean diagonal of G_SS (the intercept is not penalised).
"""
from __future__ import annotations

import numpy as np

from .xp import to_numpy

DEFAULT_RIDGE = 1e-6


def least_squares(problem, kept, ridge: float, xp, w0=None) -> np.ndarray:
    """New (|S|, m) weights for the kept rows S (kept features then the intercept); with `w0`
    (|S| x m, same rows) the ridge pulls toward it instead of toward zero:
    W = (G + λI)⁻¹(H + λW0), the intercept never penalised."""
    s = xp.asarray(problem.rows(kept))
    g = problem.gram[s][:, s].copy()
    h = problem.h[s] if w0 is None else problem.h[s].copy()
    n = g.shape[0] - 1
    if n > 0:
        lam = ridge * float(xp.mean(xp.diagonal(g)[:n]))
        if lam > 0:
            g[xp.arange(n), xp.arange(n)] += lam
            if w0 is not None:
                h[:n] += lam * xp.asarray(w0, dtype=xp.float64)[:n]
    try:
        w = xp.linalg.solve(g, h)
        if not bool(xp.all(xp.isfinite(w))):
            raise np.linalg.LinAlgError("non-finite solution")
    except np.linalg.LinAlgError:
        w = xp.linalg.lstsq(g, h, rcond=None)[0]
    return to_numpy(w)

