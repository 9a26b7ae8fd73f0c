"""Keep exactly k channels drawn in proportion to importance scores, with weights that make
the pruned layer an unbiased estimate of the full one.

Two draws:
- `systematic` (default): inclusion probabilities pi(p) proportional to the scores (capped at
  1, summing to k), drawn by randomised systematic sampling, so exactly k distinct channels
  are kept and channel p is kept with probability exactly pi(p). Weight 1/pi(p)
  (Horvitz-Thompson): E[sum over kept of w(p) x_p] = sum over all of x_p, exactly.
- `with-replacement`: Mussay et al.'s literal procedure: draw i.i.d. from pr = s/sum(s) until
  k distinct channels are seen (m draws, c(p) hits), weight c(p) / (m pr(p)). Because m is a
  stopping time this ratio is biased (E[c/m] != pr); kept for comparison with the paper.
"""
from __future__ import annotations

import numpy as np

from ..solve.xp import to_numpy

DRAWS = ("systematic", "with-replacement")

# The with-replacement draw stops after this many draws; the rest is filled by score.
MAX_DRAWS = 10_000_000


def probabilities(scores) -> np.ndarray:
    """Sampling distribution pr = s / sum(s) (uniform when every score is zero)."""
    s = _checked(scores)
    total = s.sum()
    return s / total if total > 0 else np.full(s.size, 1.0 / s.size)


def inclusion_probabilities(scores, k: int) -> np.ndarray:
    """pi(p) = min(1, c s(p)) with c chosen so that sum(pi) = k (channels with s = 0 get 0,
    unless fewer than k channels have a positive score: then those all get 1)."""
    s = _checked(scores)
    pi = np.zeros(s.size)
    positive = s > 0
    if positive.sum() <= k:
        pi[positive] = 1.0
        return pi
    capped = np.zeros(s.size, dtype=bool)
    while True:
        free = positive & ~capped
        room = k - int(capped.sum())
        pi[free] = room * s[free] / s[free].sum()
        over = free & (pi >= 1.0)
        if not over.any():
            return pi
        capped |= over
        pi[capped] = 1.0


def draw(scores, k: int, rng: np.random.Generator, method: str = "systematic") -> tuple:
    """(kept channel indices sorted, importance weight of each kept channel)."""
    s = _checked(scores)
    if k >= s.size:
        return np.arange(s.size), np.ones(s.size)
    if method == "systematic":
        kept, weights = _systematic(s, k, rng)
    elif method == "with-replacement":
        kept, weights = _until_distinct(s, k, rng)
    else:
        raise ValueError(f"unknown draw {method!r}")
    order = np.argsort(kept)
    return kept[order], weights[order]


def _systematic(s: np.ndarray, k: int, rng: np.random.Generator) -> tuple:
    pi = inclusion_probabilities(s, k)
    sure = np.flatnonzero(pi >= 1.0)
    rest = k - sure.size
    chosen = np.zeros(0, dtype=np.int64)
    if rest > 0:
        random = np.flatnonzero((pi > 0) & (pi < 1.0))
        if random.size:
            order = rng.permutation(random)
            cum = np.cumsum(pi[order])
            cum *= rest / cum[-1]            # sum(pi) = k up to rounding; make it exact
            points = rng.random() + np.arange(rest)
            chosen = np.unique(order[np.searchsorted(cum, points, side="right")])
        else:                                 # fewer than k positive scores: fill at random
            zero = np.flatnonzero(pi == 0)
            chosen = rng.choice(zero, size=rest, replace=False)
    kept = np.concatenate([sure, chosen]).astype(np.int64)
    weights = np.where(pi[kept] > 0, 1.0 / np.where(pi[kept] > 0, pi[kept], 1.0), 1.0)
    return _fill(kept, weights, s, k)


def _until_distinct(s: np.ndarray, k: int, rng: np.random.Generator) -> tuple:
    positive = np.flatnonzero(s > 0)
    if positive.size <= k:
        return _fill(positive, np.ones(positive.size), s, k, rng)
    pr = probabilities(s)
    hits = np.zeros(s.size, dtype=np.int64)
    draws, distinct, chunk = 0, 0, max(64, 4 * k)
    while distinct < k and draws < MAX_DRAWS:
        d = rng.choice(s.size, size=chunk, p=pr)
        items, first = np.unique(d, return_index=True)
        fresh = np.sort(first[hits[items] == 0])
        if distinct + fresh.size >= k:
            d = d[:fresh[k - distinct - 1] + 1]
        hits += np.bincount(d, minlength=s.size)
        draws += d.size
        distinct = int(np.count_nonzero(hits))
    kept = np.flatnonzero(hits)
    return _fill(kept, hits[kept] / (draws * pr[kept]), s, k)


def _fill(kept, weights, s, k, rng=None) -> tuple:
    """Top up to k channels (weight 1) when the draw could not reach k distinct ones:
    highest scores first, then at random among zero scores."""
    missing = k - kept.size
    if missing <= 0:
        return kept, weights
    rest = np.setdiff1d(np.arange(s.size), kept)
    if rng is not None:
        rest = rng.permutation(rest)
    extra = rest[np.argsort(-s[rest], kind="stable")[:missing]]
    return np.concatenate([kept, extra]), np.concatenate([weights, np.ones(extra.size)])


def _checked(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("importance scores must be finite and non-negative")
    return s


def scaled_rows(matrix: np.ndarray, view, kept, scales) -> np.ndarray:
    """A copy of `matrix` with each kept channel's rows multiplied by its importance weight
    (how sampling and coreset keep the pruned layer unbiased when not refitting); `view` is
    the consumer's solve.problem.ChannelView."""
    out = to_numpy(matrix).copy()
    present = view.present(kept)                   # a consumer may see only some of the group
    weight = np.asarray(scales)[np.searchsorted(np.asarray(kept), view.members[present])]
    out[view.candidates[present]] *= weight[:, None, None]
    return out
