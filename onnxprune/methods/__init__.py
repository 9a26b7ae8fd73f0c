"""Channel-selection methods, one module each, behind the `Method` interface (base.py).

`importance` turns scores into exactly k kept channels plus the importance weights that keep
the pruned layer unbiased (sampling, coreset). The registry below is the only list of
methods: adding one is its module plus one line here. Nothing here imports onnxruntime.
"""
from __future__ import annotations

import numpy as np

from .base import Method, Selection
from .coreset import Coreset
from .greedy import Greedy
from .random_global import RandomGlobal
from .random_uniform import RandomUniform
from .sampling import Sampling
from .weight_norm import WeightNorm

REGISTRY: dict = {m.name: m for m in (
    Greedy(),
    WeightNorm(),
    RandomUniform(),
    RandomGlobal(),
    Sampling(),
    Coreset(),
)}
METHODS = tuple(REGISTRY)


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name}") from None


def select(method: str, k: int, ctx) -> Selection:
    """Keep k of ctx.channels with `method` (all of them when k covers the group)."""
    if k >= ctx.channels:
        return Selection(np.arange(ctx.channels))
    return get(method).select(k, ctx)

