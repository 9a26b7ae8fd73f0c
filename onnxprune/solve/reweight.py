"""The `reweight` stage: refit the consumer's weights on the kept channels by least squares.

W~ = (G_SS + λI)⁻¹ H_S, λ = ridge x mean diagonal of G_SS (the intercept is not penalised);
`ridge="auto"` picks it per problem by generalized cross-validation (solve/ridge.py).
"""
from __future__ import annotations

import numpy as np

from .ridge import DEFAULT_RIDGE, auto_ridge
from .xp import to_numpy

__all__ = ["DEFAULT_RIDGE", "least_squares", "resolve_ridge"]


def resolve_ridge(problem, kept, ridge, xp, w0=None, intercept: bool = True) -> float:
    """The relative ridge least_squares uses: `ridge` itself, or for "auto" the GCV choice on
    the kept rows (the problem's intercept row, last, holds the calibration row count)."""
    if ridge != "auto":
        return float(ridge)
    s = xp.asarray(problem.rows(kept))
    rows = float(problem.gram[-1, -1])
    if not intercept:
        s = s[:-1]
        w0 = None if w0 is None else w0[:-1]
    return auto_ridge(problem.gram[s][:, s], problem.h[s], problem.target, rows, xp, w0=w0, intercept=intercept)


def least_squares(problem, kept, ridge: float, xp, w0=None, intercept: bool = True) -> np.ndarray:
    """New (|S|, m) weights for the kept rows S (kept features then the intercept); with `w0`
    (|S| x m, same rows) the ridge pulls toward it instead of toward zero:
    W = (G + λI)⁻¹(H + λW0), the intercept never penalised. `intercept=False` holds the
    intercept at zero (a layer that has no bias to put it in). `ridge`: a number or "auto"."""
    ridge = resolve_ridge(problem, kept, ridge, xp, w0, intercept)
    s = xp.asarray(problem.rows(kept))
    if not intercept:
        if len(s) == 1:
            return np.zeros((1, problem.h.shape[1]))
        w = _ridge_solve(problem, s[:-1], ridge, xp, None if w0 is None else np.asarray(w0)[:-1])
        return np.vstack([w, np.zeros((1, w.shape[1]))])
    return _ridge_solve(problem, s, ridge, xp, w0, penalised=len(s) - 1)


def _ridge_solve(problem, s, ridge: float, xp, w0=None, penalised: int | None = None) -> np.ndarray:
    """The ridge solve on rows `s` of the problem; the first `penalised` rows (all by default)
    carry the ridge."""
    g = problem.gram[s][:, s].copy()
    h = problem.h[s] if w0 is None else problem.h[s].copy()
    n = g.shape[0] if penalised is None else penalised
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

