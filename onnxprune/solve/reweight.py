"""The `reweight` stage: refit the consumer's weights on the kept channels by least squares.

W~ = (G_SS + λI)⁻¹ H_S, λ = ridge x mean diagonal of G_SS (the intercept is not penalised).
"""
from __future__ import annotations

import numpy as np

from .xp import to_numpy

DEFAULT_RIDGE = 1e-6


def least_squares(problem, kept, ridge: float, xp) -> np.ndarray:
    """New (|S|, m) weights for the kept rows S (kept features then the intercept)."""
    s = xp.asarray(problem.rows(kept))
    g = problem.gram[s][:, s].copy()
    h = problem.h[s]
    n = g.shape[0] - 1
    if n > 0:
        lam = ridge * float(xp.mean(xp.diagonal(g)[:n]))
        if lam > 0:
            g[xp.arange(n), xp.arange(n)] += lam
    try:
        w = xp.linalg.solve(g, h)
        if not bool(xp.all(xp.isfinite(w))):
            raise np.linalg.LinAlgError("non-finite solution")
    except np.linalg.LinAlgError:
        w = xp.linalg.lstsq(g, h, rcond=None)[0]
    return to_numpy(w)

