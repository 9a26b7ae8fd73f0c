"""greedy: the submodular greedy of El Halabi et al. on the captured statistics (math in
solve/greedy.py). In layer mode the runner hands a cached, nested order (`cached_greedy`)."""
from __future__ import annotations

import numpy as np

from ..solve.greedy import greedy_order
from .base import Method, SelectContext, Selection


class Greedy(Method):
    name = "greedy"
    needs_data = True

    def select(self, k: int, ctx: SelectContext) -> Selection:
        if ctx.cached_greedy is not None:
            return ctx.cached_greedy(k, ctx.on_step)
        order, errors = greedy_order(ctx.problems, k, ctx.xp, ctx.on_step)
        return Selection(np.sort(np.asarray(order)), tuple(order), tuple(errors))
