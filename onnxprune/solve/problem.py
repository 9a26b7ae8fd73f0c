"""One consumer's least-squares problem, in the form selection and reweighting share.

min over kept set S and new weights W~ of ||A W - B_S W~||², expressed by statistics only:
G = Σ [B 1]ᵀ[B 1], H = G_BA W and the target energy ||A W||².

The consumer's input may hold more than this group's channels (a Concat with other groups or
unprunable channels): those features, and the intercept, are *fixed* (always kept). The
problem works in a canonical order: the group's candidate features channel by channel
(`block` each), then the fixed ones, intercept last; `order` maps it back to the rows of the
consumer's weight matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph.groups import Consumer, channel_indices
from ..graph.layout import Alive
from ..capture.stats import ConsumerStats


@dataclass(frozen=True)
class ChannelView:
    """Where a group's channels sit among a consumer's current weight-matrix rows.

    A consumer may see only some of the group's channels (one output of a Split): `members`
    lists those, in order, and `candidates` holds their rows.
    """

    candidates: np.ndarray      # (present channels, block) row indices, channel by channel
    members: np.ndarray         # group channel of each candidate block
    fixed: np.ndarray           # other rows, intercept (the last row) last
    rows: int                   # total rows of the current matrix (features + intercept)
    channels: int               # the group's channel count

    @classmethod
    def of(cls, c: Consumer, sources: set, channels: int, alive: Alive) -> "ChannelView":
        per_channel = alive.channel_positions(c.layout, sources, channels)
        total = alive.current_positions(c.layout)
        members = np.array([i for i, p in enumerate(per_channel) if p], dtype=np.int64)
        cand = np.stack([c.features(per_channel[i], total) for i in members])
        rows = total * c.block + 1
        fixed = np.setdiff1d(np.arange(rows - 1), cand.ravel())
        return cls(cand, members, np.append(fixed, rows - 1), rows, channels)

    @property
    def block(self) -> int:
        return self.candidates.shape[1]

    @property
    def order(self) -> np.ndarray:
        return np.concatenate([self.candidates.ravel(), self.fixed])

    def present(self, kept) -> np.ndarray:
        """Candidate-block indices of the kept channels this consumer sees."""
        return np.flatnonzero(np.isin(self.members, np.asarray(kept, dtype=np.int64)))

    def remaining(self, kept) -> np.ndarray:
        """Matrix rows left once only `kept` channels stay (sorted, intercept last)."""
        return np.sort(np.concatenate([self.candidates[self.present(kept)].ravel(), self.fixed]))

    def dense_rows(self, matrix: np.ndarray) -> np.ndarray:
        """(channels * block, m) rows of every group channel, zeros where this consumer
        does not see the channel (for per-channel weight scores)."""
        out = np.zeros((self.channels, self.block, matrix.shape[1]))
        out[self.members] = matrix[self.candidates]
        return out.reshape(self.channels * self.block, -1)


def original_rows(c: Consumer, alive: Alive) -> np.ndarray:
    """Rows of the *original* consumer matrix that are still present (intercept last)."""
    positions = np.flatnonzero(alive.mask(c.layout))
    feats = c.features(positions, c.layout.positions)
    return np.append(feats, c.layout.positions * c.block)


@dataclass(frozen=True)
class Problem:
    gram: object      # (D, D), canonical order
    h: object         # (D, m)
    weight: object    # (D, m) current effective weights, canonical order
    target: float     # ||A W||²
    block: int
    channels: int     # the group's channel count
    fixed: int        # number of fixed features (intercept included), the last rows
    members: np.ndarray   # group channel of each candidate block (see ChannelView)

    @classmethod
    def build(cls, stats: ConsumerStats, weight: np.ndarray, view: ChannelView, xp,
              keep_rows: np.ndarray | None = None) -> "Problem":
        """Canonical problem from statistics of the consumer's input.

        `keep_rows` restricts statistics taken on the original model to the rows still present;
        asym statistics carry H = G_BA W_A against the original consumer matrix in `stats.h`."""
        gram, h = stats.gram, stats.h
        if keep_rows is not None:
            k = xp.asarray(keep_rows)
            gram = gram[k][:, k]
            h = h[k] if h is not None else None
        order = xp.asarray(view.order)
        w = xp.asarray(weight, dtype=xp.float64)
        if h is not None:
            target = float(stats.target)
        else:
            h = gram @ w
            target = float(xp.sum(w * h))
        return cls(gram[order][:, order], h[order], w[order], target, view.block,
                   view.channels, len(view.fixed), view.members)

    def rows(self, kept) -> np.ndarray:
        """Canonical rows of the kept channels' features plus every fixed row."""
        total = self.gram.shape[0]
        present = np.flatnonzero(np.isin(self.members, np.asarray(kept, dtype=np.int64)))
        return np.append(channel_indices(present, self.block), np.arange(total - self.fixed, total))

    def error(self, kept, new_weight, xp) -> float:
        """||A W - B_S W~||² for canonical rows S of `kept` and weights `new_weight` (|S| x m)."""
        s = xp.asarray(self.rows(kept))
        g = self.gram[s][:, s]
        w = xp.asarray(new_weight)
        value = self.target - 2.0 * float(xp.sum(w * self.h[s])) + float(xp.sum(w * (g @ w)))
        return max(value, 0.0)
