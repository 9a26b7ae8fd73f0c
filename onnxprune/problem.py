"""One consumer's least-squares problem, in the form selection and reweighting share.

min over kept set S and new weights W~ of ||A W - B_S W~||², expressed by statistics only:
G = Σ [B 1]ᵀ[B 1], H = G_BA W and the target energy ||A W||². Features of channel c are
rows [c*block, (c+1)*block); the last row is the always-kept intercept.
"""
from __future__ import annotations

from dataclasses import dataclass

from .groups import feature_rows
from .stats import ConsumerStats


@dataclass(frozen=True)
class Problem:
    gram: object      # (D, D)
    h: object         # (D, m)
    weight: object    # (D, m) current effective weights (rows for features, last row bias)
    target: float     # ||A W||²
    block: int
    channels: int

    @classmethod
    def from_stats(cls, stats: ConsumerStats, weight: np.ndarray, xp) -> "Problem":
        w = xp.asarray(weight, dtype=xp.float64)
        channels = (stats.features - 1) // stats.consumer.block
        return cls(stats.gram, stats.h(w), w, stats.target_energy(w, xp), stats.consumer.block, channels)

    def rows(self, kept) -> np.ndarray:
        """Row indices of the kept channels' features plus the intercept."""
        return feature_rows(kept, self.block, self.gram.shape[0])

    def error(self, kept, new_weight, xp) -> float:
        """||A W - B_S W~||² for rows S of `kept` and weights `new_weight` (|S| x m)."""
        s = xp.asarray(self.rows(kept))
        g = self.gram[s][:, s]
        w = xp.asarray(new_weight)
        value = self.target - 2.0 * float(xp.sum(w * self.h[s])) + float(xp.sum(w * (g @ w)))
        return max(value, 0.0)
