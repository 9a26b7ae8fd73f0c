"""One accumulator per input tensor: consumers that read the same tensor with the same geometry
(Q/K/V of an attention layer, the branches fed by one feature map) share one Gram, with their
asym target columns stacked, and get their own statistics back once it is done."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .stats import GramAccumulator
from ..graph.groups import Consumer


def design_key(c: Consumer) -> tuple:
    """Consumers with equal keys lay the same input out as the same rows x features."""
    return (c.input, c.conv is not None, c.conv, c.trans_a, c.layout.axis, c.kernel_area)


def shared_accumulators(consumers: list, xp, targets: dict | None, settings=None, first_batch: int = 0) -> list:
    """[(consumers, accumulator)]: one accumulator (one Gram) per distinct design_key; asym
    (`targets`: consumer node -> original matrix) stacks the consumers' target columns.
    `first_batch`: the calibration index of the first batch these accumulators will see."""
    by_key: dict = {}
    for c in consumers:
        by_key.setdefault(design_key(c), []).append(c)
    out = []
    for group in by_key.values():
        weight = None if targets is None else np.hstack([np.asarray(targets[c.node]) for c in group])
        acc = GramAccumulator(group[0], xp, asym=targets is not None, weight=weight, settings=settings,
                              first_batch=first_batch)
        out.append((group, acc))
    return out


def split_results(shared: list, consumers: list, targets: dict | None) -> list:
    """Each consumer's ConsumerStats, in `consumers` order, from shared_accumulators' sums."""
    by_node = {}
    for group, acc in shared:
        stats, col = acc.result(), 0
        for c in group:
            if targets is None:
                by_node[c.node] = replace(stats, consumer=c)
                continue
            width = np.asarray(targets[c.node]).shape[1]
            cols = slice(col, col + width)
            col += width
            column = stats.column_target[cols]
            by_node[c.node] = replace(stats, consumer=c, h=stats.h[:, cols], column_target=column,
                                      target=float(acc.xp.sum(column)))
    return [by_node[c.node] for c in consumers]


def step_targets(consumers: list, weights: dict | None) -> dict:
    """Consumer node -> the original matrix its asym statistics target (None where not given)."""
    return {c.node: (weights or {}).get(c.node) for c in consumers}
