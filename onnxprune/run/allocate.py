"""The budget stage as run/ drives it: kept channels per group for a run's options.

budget/ does the counting and the curves; this module supplies what budget/ must not build
itself: the cached layer statistics and a `GroupProbe` that prunes one group alone and runs a
model (budget.curves.output_curves), so the arrows run one way: run -> budget -> solve.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..budget.allocation import Target, check_reachable, error_counts, keep_counts, ranking_counts, uniform_counts
from ..budget.curves import SAMPLES, local_curves, output_curves
from ..capture import runtime
from .clock import NoClock
from .layercache import LayerCache
from .runner import GroupPruner
from .session import Session


def target(session: Session, opts) -> Target:
    return Target(session.index, session.groups, opts.target, adds_bias=opts.refits,
                  sample_dims=session.sample_dims)


def check_budget(session: Session, opts) -> None:
    """Raise the user error a run with `opts` would raise for its budget (no data needed)."""
    if opts.compression is not None:
        check_reachable(target(session, opts), opts.compression, opts.rules)


def counts(session: Session, cache: LayerCache, opts, clock, progress=None) -> dict:
    """Kept channels per group for `opts` (error allocation: from the greedy curves)."""
    rules, groups, method = opts.rules, session.groups, opts.impl
    if method.ranks_globally:
        scores = {g.name: method.global_scores(g, opts.seed) for g in groups}
        if opts.keep_fraction is not None:
            return ranking_counts(groups, rules, scores, keep=opts.keep_fraction)
        return ranking_counts(groups, rules, scores, target=target(session, opts), ratio=opts.compression)
    if opts.keep_fraction is not None:
        return keep_counts(groups, opts.keep_fraction, rules)
    goal = target(session, opts)
    if opts.allocation == "error":
        check_reachable(goal, opts.compression, rules)
        curves = cache.curves((opts.min_channels, opts.round_to, opts.ridge, opts.min_heads, opts.heads_keep,
                               opts.ffn_keep),
                              lambda: error_curves(session, cache, opts, clock, progress))
        return error_counts(goal, opts.compression, rules, curves)
    return uniform_counts(goal, opts.compression, rules)


def error_curves(session: Session, cache: LayerCache, opts, clock, progress=None) -> dict:
    """group -> predicted relative network-output error after keeping 0..C (budget/curves.py)."""
    local = local_curves(cache, opts.rules, clock, progress)
    return output_curves(session.groups, local, opts.rules, AloneProbe(session, cache, opts), progress)


class AloneProbe:
    """budget.curves.GroupProbe over a session: a group pruned alone by the layer-mode greedy
    with reweighting (cheap: the cached orders), and the model outputs on a calibration subset."""

    def __init__(self, session: Session, cache: LayerCache, opts):
        self.session, self.cache = session, cache
        self.opts = replace(opts, method="greedy", mode="layer", reweight=True, allocation="uniform", search="none")
        self.original = session.model
        self.calib = session.calibration.head(min(SAMPLES, session.calibration.samples))
        self.names = [o.name for o in session.model.graph.output]
        self.full = {g.name: g.channels for g in session.groups}

    def prune_alone(self, group: str, k: int):
        pruner = GroupPruner(self.session, self.cache, self.opts, NoClock(), None)
        return pruner.run(dict(self.full, **{group: k}))[0]

    def outputs(self, model) -> list:
        sess = runtime.session(model, self.session.device, built="a model pruned in one group for --allocation error")
        parts = [runtime.run(sess, feeds, self.names)
                 for feeds in runtime.batches(self.calib.arrays, self.session.batch_size)]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(self.names))]
