"""The paper's Random baseline: one random ranking of every channel of every group.

Each group draws its channels' scores from its own seeded generator, so the budget
allocation (which needs every group's scores to rank them globally, see allocation.py) and
the per-group selection (which keeps a group's top scores) agree without passing state.
"""
from __future__ import annotations

import numpy as np

from .base import Method, SelectContext, Selection, group_rng


class RandomGlobal(Method):
    name = "random-global"
    ranks_globally = True

    def global_scores(self, group, seed: int) -> np.ndarray:
        return random_scores(group.channels, group_rng(seed, group))

    def select(self, k: int, ctx: SelectContext) -> Selection:
        return Selection(np.sort(top_k(random_scores(ctx.channels, ctx.rng), k)))


def random_scores(channels: int, rng: np.random.Generator) -> np.ndarray:
    """i.i.d. uniform scores: ranking by them is a uniformly random global order."""
    return rng.random(channels)


def top_k(scores, k: int) -> np.ndarray:
    """Indices of the k highest scores."""
    return np.argsort(-np.asarray(scores), kind="stable")[:k]
