"""greedy: the submodular greedy of El Halabi et al. on the captured statistics (math in
solve/greedy.py), optionally followed by the swap search (solve/swap.py, `--search swap`).
In layer mode the runner hands a cached, nested order (`cached_greedy`)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..solve.greedy import greedy_order
from ..solve.swap import swap_search
from .base import Method, SelectContext, Selection


class Greedy(Method):
    name = "greedy"
    needs_data = True

    def select(self, k: int, ctx: SelectContext) -> Selection:
        if ctx.cached_greedy is not None:
            sel = ctx.cached_greedy(k, ctx.on_step)
        else:
            order, errors = greedy_order(ctx.problems, k, ctx.xp, ctx.on_step)
            sel = Selection(np.sort(np.asarray(order)), tuple(order), tuple(errors))
        if ctx.search != "swap":
            return sel
        found = swap_search(ctx.problems, sel.order, ctx.xp)
        # after a swap the kept set is no prefix of the greedy order any more
        return replace(sel, kept=found.kept, order=sel.order if not found.swaps else None, search=found.to_dict())
