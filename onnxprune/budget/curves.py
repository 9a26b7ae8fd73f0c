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
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..capture import runtime
from .allocation import Rules
from ..graph.layout import Alive
from ..solve.problem import ChannelView, Problem, original_rows
from ..run.runner import GroupPruner
from ..rewrite.weights import consumer_matrix

GRID = (0.25, 0.5, 0.75)        # keep fractions at which each group is pruned alone
SAMPLES = 128                   # calibration samples for the output error


def local_curves(ws, rules: Rules, clock, progress=None) -> dict:
    """group -> relative greedy reconstruction error at its consumers after keeping 0..C.

    From layer-mode statistics of the original model in every mode: seq/asym statistics
    only exist once the earlier groups are pruned, i.e. after the budget is fixed.
    """
    names = {g.name for g in ws.groups if len(rules.choices(g.channels)) > 1}
    ws.layer_capture([g for g in ws.groups if g.name in names], False, clock, progress)
    alive, curves = Alive(), {}
    for g in ws.groups:
        if g.name not in names:
            curves[g.name] = np.zeros(g.channels + 1)
            continue
        matrices = [consumer_matrix(ws.index, c) for c in g.consumers]
        views = [ChannelView.of(c, set(g.sources), g.channels, alive) for c in g.consumers]
        keep = [original_rows(c, alive) for c in g.consumers]
        problems = [Problem.build(ws.stats[c.node], m, v, ws.xp, keep_rows=r)
                    for c, m, v, r in zip(g.consumers, matrices, views, keep)]
        label = f"error curve {g.name}"
        sel = ws.greedy_selection(g, problems, matrices, keep, g.channels,
                                  lambda j, label=label, n=g.channels: progress and progress(label, j, n))
        energy = sum(p.target for p in problems)
        curves[g.name] = np.asarray(sel.errors) / energy if energy > 0 else np.zeros(g.channels + 1)
    return curves


def output_curves(ws, opts, clock, progress=None) -> dict:
    """group -> predicted relative network-output error after keeping 0..C (see module doc)."""
    rules = opts.rules
    local = local_curves(ws, rules, clock, progress)
    calib = ws.calibration.head(min(SAMPLES, ws.calibration.samples))
    names = [o.name for o in ws.model.graph.output]
    reference = _outputs(ws, ws.model, calib, names)
    energy = sum(float(np.sum(y.astype(np.float64) ** 2)) for y in reference)
    alone_opts = replace(opts, method="greedy", mode="layer", reweight=True, allocation="uniform")
    full = {g.name: g.channels for g in ws.groups}
    out = {}
    for i, g in enumerate(ws.groups):
        if progress:
            progress("output error per group", i, len(ws.groups))
        ratios = []
        for k in sorted({rules.nearest(g.channels, f * g.channels) for f in GRID} - {g.channels}):
            if local[g.name][k] <= 0:
                continue
            model, _ = GroupPruner(ws, alone_opts, _NoClock(), None).run(dict(full, **{g.name: k}))
            pruned = _outputs(ws, model, calib, names)
            err = sum(float(np.sum((y.astype(np.float64) - z) ** 2)) for y, z in zip(reference, pruned))
            ratios.append(err / energy / local[g.name][k] if energy > 0 else 0.0)
        out[g.name] = local[g.name] * (float(np.median(ratios)) if ratios else 1.0)
    if progress:
        progress("output error per group", len(ws.groups), len(ws.groups))
    return out


def _outputs(ws, model, calib, names) -> list:
    sess = runtime.session(model, ws.device)
    parts = [runtime.run(sess, feeds, names) for feeds in runtime.batches(calib.arrays, ws.batch_size)]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(names))]


class _NoClock:
    def add(self, stage, since):
        return time.perf_counter()
