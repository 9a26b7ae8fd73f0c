"""Per-group error curves for `--allocation error`: how much the network's output moves when
a group keeps k channels, for every k, without labels.

1. The nested greedy gives each group's relative reconstruction error at its consumers for
   every k in one run (layer-mode statistics of the original model).
2. That local error reaches the output amplified or damped by the rest of the network (a
   residual branch adds into a much larger stream, an early layer feeds everything). So each
   group is also pruned *alone* at a few keep fractions (greedy + reweight, the cached
   orders make it cheap) and the network-output relative error measured on a calibration
   subset; the median ratio output/local error is the group's gain.

The curve used for allocation is gain x local curve: the measured output errors at the grid
points, the greedy's shape in between.

The budget stage cannot prune or run a model itself (that is run/'s job, and budget/ must
not import run/): `output_curves` is handed a `GroupProbe` that does both.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .allocation import Rules
from ..graph.layout import Alive
from ..solve.problem import ChannelView, Problem, original_rows
from ..rewrite.weights import consumer_matrix

GRID = (0.25, 0.5, 0.75)        # keep fractions at which each group is pruned alone
SAMPLES = 128                   # calibration samples for the output error


class LayerStatistics(Protocol):
    """Layer-mode statistics of the original model (run.layercache.LayerCache)."""
    groups: list
    index: object
    xp: object
    stats: dict

    def layer_capture(self, groups, method, clock, progress=None) -> None: ...

    def greedy_selection(self, g, problems, matrices, keep_rows, k: int, on_step=None): ...


class GroupProbe(Protocol):
    """Prunes one group alone and runs models on a calibration subset (run.allocate.AloneProbe)."""
    original: object                # the unpruned ModelProto

    def prune_alone(self, group: str, k: int): ...          # -> ModelProto with only `group` at k channels

    def outputs(self, model) -> list: ...                    # -> the model's outputs, one array each


def local_curves(layers: LayerStatistics, rules: Rules, clock, progress=None) -> dict:
    """group -> relative greedy reconstruction error at its consumers after keeping 0..C.

    From layer-mode statistics of the original model in every mode: seq/asym statistics
    only exist once the earlier groups are pruned, i.e. after the budget is fixed.
    """
    names = {g.name for g in layers.groups if len(rules.allowed(g)) > 1}
    layers.layer_capture([g for g in layers.groups if g.name in names], None, clock, progress)
    alive, curves = Alive(), {}
    for g in layers.groups:
        if g.name not in names:
            curves[g.name] = np.zeros(g.channels + 1)
            continue
        matrices = [consumer_matrix(layers.index, c) for c in g.consumers]
        views = [ChannelView.of(c, set(g.sources), g.channels, alive) for c in g.consumers]
        keep = [original_rows(c, alive) for c in g.consumers]
        problems = [Problem.build(layers.stats[c.node], m, v, layers.xp, keep_rows=r)
                    for c, m, v, r in zip(g.consumers, matrices, views, keep)]
        label = f"error curve {g.name}"
        sel = layers.greedy_selection(g, problems, matrices, keep, g.channels,
                                      lambda j, label=label, n=g.channels: progress and progress(label, j, n))
        energy = sum(p.target for p in problems)
        curves[g.name] = np.asarray(sel.errors) / energy if energy > 0 else np.zeros(g.channels + 1)
    return curves


def output_curves(groups, local: dict, rules: Rules, probe: GroupProbe, progress=None) -> dict:
    """group -> predicted relative network-output error after keeping 0..C (see module doc):
    the `local` curves scaled by each group's measured output gain."""
    reference = probe.outputs(probe.original)
    energy = sum(float(np.sum(y.astype(np.float64) ** 2)) for y in reference)
    out = {}
    for i, g in enumerate(groups):
        if progress:
            progress("output error per group", i, len(groups))
        ratios = []
        for k in sorted({rules.nearest_for(g, f * g.channels) for f in GRID} - {g.channels}):
            if local[g.name][k] <= 0:
                continue
            pruned = probe.outputs(probe.prune_alone(g.name, k))
            err = sum(float(np.sum((y.astype(np.float64) - z) ** 2)) for y, z in zip(reference, pruned))
            ratios.append(err / energy / local[g.name][k] if energy > 0 else 0.0)
        out[g.name] = local[g.name] * (float(np.median(ratios)) if ratios else 1.0)
    if progress:
        progress("output error per group", len(groups), len(groups))
    return out
