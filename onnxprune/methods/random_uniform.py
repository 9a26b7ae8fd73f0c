"""random: k channels of each group uniformly at random (the group's own seeded stream)."""
from __future__ import annotations

import numpy as np

from .base import Method, SelectContext, Selection


class RandomUniform(Method):
    name = "random"

    def select(self, k: int, ctx: SelectContext) -> Selection:
        return Selection(np.sort(ctx.rng.choice(ctx.channels, size=k, replace=False)))
