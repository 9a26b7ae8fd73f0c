"""Ridge least squares pulled toward the layer's own weights, and the all-inputs-kept problem
of `--refit all` (a layer none of whose inputs is pruned, refitted to the original output).

    min ||X W - Y||² + λ ||W - W0||²   =>   W = (G + λI)⁻¹ (H + λ W0)

with G = XᵀX, H = XᵀY, λ = ridge x mean diagonal of G (the intercept row is not penalised).
Solved by reweight.least_squares with `w0` (W0 = 0: its plain ridge).
"""
from __future__ import annotations

import numpy as np

from .problem import Problem


def whole_problem(gram, h, target: float, weight, xp) -> Problem:
    """The problem of a layer that keeps all its inputs: inputs from the current model
    (`gram`), targets the original layer's output (`h` = Σ [B 1]ᵀ Y, energy `target`)."""
    w = xp.asarray(weight, dtype=xp.float64)
    rows = gram.shape[0]
    return Problem(gram, xp.asarray(h, dtype=xp.float64), w, float(target), 1, 0, rows, np.zeros(0, dtype=np.int64))
