"""The `select` stage: which channels of a group to keep.

`greedy` is the submodular greedy of El Halabi et al. run on d x d statistics only: it keeps
the residual Gram R and residual H (T) and scores every candidate block at once. Its order is
nested, so the first k picks answer every budget k.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .methods import importance
from .methods.random_global import random_scores, top_k
from .xp import to_numpy

METHODS = ("greedy", "weight-norm", "random", "random-global", "sampling", "coreset")

# A block whose residual variance is below this fraction of its raw energy carries no new
# information (zero, constant, or a copy of kept channels).
RESIDUAL_RTOL = 1e-9


@dataclass(frozen=True)
class Selection:
    kept: np.ndarray                 # sorted channel indices
    order: tuple | None = None       # greedy pick order (nested for every budget)
    errors: tuple | None = None      # greedy: reconstruction error after 0, 1, ..., k picks
    scales: np.ndarray | None = None  # importance weights of the kept channels (sampling, coreset)


def select(method: str, k: int, channels: int, *, problems=None, weights=None, xp=np,
           rng: np.random.Generator | None = None, on_step=None, sensitivity=None, draw="systematic") -> Selection:
    """Keep k of `channels`. greedy needs `problems` (and reports each pick to `on_step`);
    weight-norm each consumer's weight rows of the group's channels (`weights`); random and
    random-global an `rng`; sampling and coreset their channel `sensitivity` and an `rng` (see
    methods/)."""
    if k >= channels:
        return Selection(np.arange(channels))
    if method == "greedy":
        order, errors = greedy_order(problems, k, xp, on_step)
        return Selection(np.sort(np.asarray(order)), tuple(order), tuple(errors))
    if method == "weight-norm":
        scores = sum(weight_norms(w, channels) for w in weights)
        return Selection(np.sort(np.argsort(-scores, kind="stable")[:k]))
    if method == "random":
        return Selection(np.sort(rng.choice(channels, size=k, replace=False)))
    if method == "random-global":
        return Selection(np.sort(top_k(random_scores(channels, rng), k)))
    if method in ("sampling", "coreset"):
        kept, scales = importance.draw(sensitivity, k, rng, draw)
        return Selection(kept, scales=scales)
    raise ValueError(f"unknown method {method}")


def weight_norms(rows, channels: int) -> np.ndarray:
    """l1 norm of each channel's outgoing weights; `rows` are a consumer's weight rows of the
    group's channels, channel by channel (see problem.ChannelView.candidates)."""
    return np.abs(to_numpy(rows)).reshape(channels, -1).sum(axis=1)


class _Residual:
    """Residual statistics of one consumer given the blocks picked so far."""

    def __init__(self, p, xp):
        self.xp = xp
        self.block, self.channels = p.block, p.channels
        self.r = p.gram.copy()
        self.t = p.h.copy()
        raw = xp.diagonal(p.gram)[:-1].reshape(self.channels, self.block).sum(axis=1) / self.block
        self.tol = RESIDUAL_RTOL * raw
        total = p.gram.shape[0]
        self.error = p.target - self._condition(slice(total - p.fixed, total), tol=0.0)

    def gains(self):
        """Gain tr(T_Iᵀ R_II⁺ T_I) of adding each channel block I, all at once."""
        xp, c, k = self.xp, self.channels, self.block
        n = c * k
        if k == 1:
            r = xp.diagonal(self.r)[:n]
            t = xp.sum(self.t[:n] ** 2, axis=1)
            ok = r > self.tol
            return xp.where(ok, t / xp.where(ok, r, 1.0), 0.0)
        ar = xp.arange(c)
        blocks = self.r[:n, :n].reshape(c, k, c, k)[ar, :, ar, :]          # (c, k, k)
        t = self.t[:n].reshape(c, k, -1)                                   # (c, k, m)
        evals, evecs = xp.linalg.eigh(blocks)
        proj = xp.einsum("cij,cim->cjm", evecs, t)
        inv = xp.where(evals > self.tol[:, None], 1.0 / xp.where(evals > 0, evals, 1.0), 0.0)
        return xp.sum(inv[:, :, None] * proj ** 2, axis=(1, 2))

    def pick(self, channel: int) -> None:
        k = self.block
        self.error -= self._condition(slice(channel * k, (channel + 1) * k), tol=float(self.tol[channel]))

    def _condition(self, idx: slice, tol: float) -> float:
        """Add block `idx` to the kept set; returns its gain."""
        xp = self.xp
        r_ii = self.r[idx, idx]
        evals, evecs = xp.linalg.eigh(r_ii)
        inv = xp.where(evals > tol, 1.0 / xp.where(evals > 0, evals, 1.0), 0.0)
        pinv = (evecs * inv) @ evecs.T
        proj = self.r[:, idx] @ pinv                      # (D, k)
        gain = float(xp.sum(self.t[idx, :] * (pinv @ self.t[idx, :])))
        self.r -= proj @ self.r[idx, :]
        self.t -= proj @ self.t[idx, :]
        return gain


def greedy_order(problems: list, k: int, xp, on_step=None) -> tuple:
    """Pick k channels greedily by summed gain over all consumers.

    Returns (order, errors): errors[j] is the summed reconstruction error ||A W - B_S W~||²
    with the first j picks (errors[0]: the intercept alone).
    """
    states = [_Residual(p, xp) for p in problems]
    channels = problems[0].channels
    taken = xp.zeros(channels, dtype=bool)
    order, errors = [], [sum(s.error for s in states)]
    for _ in range(k):
        total = sum(s.gains() for s in states)
        total = xp.where(taken, -xp.inf, total)
        best = int(xp.argmax(total))
        order.append(best)
        taken[best] = True
        for s in states:
            s.pick(best)
        errors.append(max(0.0, sum(s.error for s in states)))
        if on_step is not None:
            on_step(len(order))
    return order, errors
