"""weight-norm: keep the channels with the largest l1 norm of outgoing weights (no data)."""
from __future__ import annotations

import numpy as np

from ..solve.xp import to_numpy
from .base import Method, SelectContext, Selection


class WeightNorm(Method):
    name = "weight-norm"

    def select(self, k: int, ctx: SelectContext) -> Selection:
        scores = sum(weight_norms(w, ctx.channels) for w in ctx.weight_rows())
        return Selection(np.sort(np.argsort(-scores, kind="stable")[:k]))


def weight_norms(rows, channels: int) -> np.ndarray:
    """l1 norm of each channel's outgoing weights; `rows` are a consumer's weight rows of the
    group's channels, channel by channel (see problem.ChannelView.candidates)."""
    return np.abs(to_numpy(rows)).reshape(channels, -1).sum(axis=1)
