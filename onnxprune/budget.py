"""How many channels each group keeps: from --keep, or from a --compression target.

Parameter counts follow the paper: every floating-point initializer element of the model.
Counting is structural (it needs no data), so the budget is fixed before any slow work.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import OnnxPruneError
from .graph import GraphIndex, float_param_count


def counts_for_keep(groups, keep: float) -> dict:
    """Kept channels per group for a uniform fraction (at least one channel each)."""
    return {g.name: min(g.channels, max(1, int(math.floor(keep * g.channels + 0.5)))) for g in groups}


def axis_length(layout, counts_by_source: dict, channels_by_source: dict) -> int:
    """Elements along a site's axis once every source keeps counts_by_source[s] channels.

    A segment covering part of a source ([lo, hi) after a Split) is assumed to keep the
    same share as the whole source; the exact count is only known after selection.
    """
    positions = 0
    for seg in layout.segments:
        if seg.source is None or seg.source not in counts_by_source:
            positions += seg.size
        else:
            k, total = counts_by_source[seg.source], channels_by_source[seg.source]
            positions += k if seg.size == total else int(round(seg.size * k / total))
    return positions * layout.block


def params_after(idx: GraphIndex, groups, counts: dict, adds_bias: bool, before: int | None = None) -> int:
    """Float parameter count of the model once every group keeps counts[name] channels."""
    by_source, channels = {}, {}
    for g in groups:
        for s in g.sources:
            by_source[s], channels[s] = counts[g.name], g.channels
    dims, seen = {}, set()
    for g in groups:
        for p in g.params:
            if (p.name, p.axis) in seen:
                continue
            seen.add((p.name, p.axis))
            shape = dims.setdefault(p.name, list(idx.shapes[p.name]))
            shape[p.axis] = axis_length(p.layout, by_source, channels)
    before = float_param_count(idx.model) if before is None else before
    removed = sum(int(np.prod(idx.shapes[n])) - int(np.prod(d)) for n, d in dims.items())
    added = 0
    if adds_bias:
        counted = set()
        for g in groups:
            for c in g.consumers:
                if c.bias is None and c.node not in counted:
                    counted.add(c.node)
                    w = dims.get(c.weight, list(idx.shapes[c.weight]))
                    added += w[_output_axis(c)]
    return before - removed + added


def _output_axis(c) -> int:
    if c.op == "Conv":
        return 0
    if c.op == "Gemm":
        return 0 if c.trans_b else 1
    return 1


def counts_for_compression(idx: GraphIndex, groups, ratio: float, adds_bias: bool) -> dict:
    """The largest uniform keep fraction whose parameter ratio reaches `ratio`.

    Fractions are searched over every breakpoint k/C, so the result never falls short of the
    target and keeping one more channel per group would.
    """
    before = float_param_count(idx.model)
    if ratio < 1:
        raise OnnxPruneError(f"--compression must be >= 1 (original/pruned parameters), got {ratio}")
    if not groups:
        raise OnnxPruneError("nothing to prune: the model has no prunable channel groups (see `onnxprune analyze`)")

    def reached(counts):
        return before / params_after(idx, groups, counts, adds_bias, before)

    floor = {g.name: 1 for g in groups}
    best = reached(floor)
    if best < ratio * (1 - 1e-12):
        raise OnnxPruneError(
            f"--compression {ratio:g} is unreachable: pruning every group to one channel gives {best:.3f}x at most"
        )
    fractions = sorted({k / g.channels for g in groups for k in range(1, g.channels + 1)})
    lo, hi = 0, len(fractions) - 1      # reached() is non-increasing in the fraction
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if reached(counts_for_keep(groups, fractions[mid])) >= ratio * (1 - 1e-12):
            lo = mid
        else:
            hi = mid - 1
    counts = counts_for_keep(groups, fractions[lo])
    if reached(counts) < ratio * (1 - 1e-12):
        return floor
    return counts
