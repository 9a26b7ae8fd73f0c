"""One pruning run over the groups, in topological order of their first producers:
capture -> select -> reweight -> rewrite for each group in turn.

In seq/asym mode every group is captured from the model with the earlier groups already
pruned; in layer mode the statistics come from one pass of the original model, cached in
the Workspace so that a sweep captures (and runs the greedy) only once.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from ..capture.stream import Capturer
from ..graph.index import GraphIndex
from ..graph.layout import Alive
from ..methods import coreset
from ..methods.sampling import SensitivityAccumulator
from ..solve.problem import ChannelView, Problem, original_rows
from .report import GroupReport
from ..solve.reweight import least_squares
from ..rewrite.apply import apply_group
from ..solve.greedy import select
from ..rewrite.weights import consumer_matrix, consumer_update
from ..solve.xp import to_numpy


def group_rng(seed: int, group) -> np.random.Generator:
    """The random stream of one group (random, random-global, sampling, coreset draws)."""
    return np.random.default_rng([seed, group.position])


class GroupPruner:
    def __init__(self, workspace, opts, clock, progress):
        self.ws = workspace
        self.opts = opts
        self.xp = workspace.xp
        self.clock = clock
        self.progress = progress or (lambda stage, done, total: None)
        self.original = workspace.model
        self.alive = Alive()
        self.layer = opts.mode == "layer"
        self.capturer = None
        if workspace.calibration is not None and not self.layer:
            self.capturer = Capturer(workspace.calibration, workspace.batch_size, workspace.device, self.xp,
                                     self.progress, workspace.row_mask)
        self.masked = set()           # consumers whose padding rows were dropped (--row-mask)

    def run(self, counts: dict):
        groups = self.ws.groups
        todo = [g for g in groups if counts[g.name] < g.channels]
        if self.ws.calibration is not None and todo:    # keep=1 (or rounding) may leave nothing to capture
            if self.layer:
                self.ws.layer_capture(todo, self.opts.method == "sampling", self.clock, self.progress)
            else:
                self.capturer.plan(self.original, [g.boundary for g in todo])
        current, reports = self.original, []
        try:
            for g in groups:
                k = counts[g.name]
                if k >= g.channels:
                    reports.append(asdict(GroupReport(g.name, g.channels, g.channels, list(range(g.channels)), 0.0,
                                                      [c.node for c in g.consumers])))
                    continue
                current, report = self._prune_group(current, g, k)
                reports.append(report)
        finally:
            if self.capturer is not None:
                self.capturer.close()
        return current, reports

    def _prune_group(self, current, g, k: int):
        opts = self.opts
        idx = GraphIndex.build(current, infer=False)
        members = set(g.sources)
        matrices = [consumer_matrix(idx, c) for c in g.consumers]
        views = [ChannelView.of(c, members, g.channels, self.alive) for c in g.consumers]
        observers = ()
        if opts.method == "sampling" and not self.layer:
            observers = tuple(SensitivityAccumulator(c, m, v.candidates, self.xp)
                              for c, m, v in zip(g.consumers, matrices, views))
        problems, keep_rows = self._problems(current, g, matrices, views, observers)
        t = time.perf_counter()
        sel = self._select(g, k, idx, problems, keep_rows, matrices, views, observers)
        t = self.clock.add("select", t)
        updates, err, energy = [], 0.0, 0.0
        for c, matrix, view, problem in zip(g.consumers, matrices, views, problems or [None] * len(g.consumers)):
            if sel.scales is not None and not opts.reweight:
                matrix = scaled_rows(matrix, view, sel.kept, sel.scales)
            if problem is not None:
                canonical = (least_squares(problem, sel.kept, opts.ridge, self.xp) if opts.reweight
                             else matrix[view.order][problem.rows(sel.kept)])
                err += problem.error(sel.kept, self.xp.asarray(canonical), self.xp)
                energy += problem.target
                rows = view.order[problem.rows(sel.kept)]
                new = canonical[np.argsort(rows)]
            else:
                new = matrix[view.remaining(sel.kept)]
            updates.append(consumer_update(idx, c, new))
        t = self.clock.add("reweight", t)
        pruned = apply_group(current, g, sel.kept, updates, self.alive)
        self.alive.mark(g.sources, g.channels, sel.kept)
        self.clock.add("rewrite", t)
        rel = (err / energy if energy > 0 else 0.0) if problems is not None else None
        return pruned, asdict(GroupReport(g.name, g.channels, k, [int(i) for i in sel.kept], rel,
                                          [c.node for c in g.consumers]))

    def _select(self, g, k, idx, problems, keep_rows, matrices, views, observers):
        opts = self.opts
        label = f"select {g.name}"
        on_step = lambda j: self.progress(label, j, k)        # noqa: E731
        if opts.method == "greedy" and self.layer:
            return self.ws.greedy_selection(g, problems, matrices, keep_rows, k, on_step)
        rows = [v.dense_rows(m) for m, v in zip(matrices, views)]
        sensitivity = None
        if opts.method == "coreset":
            sensitivity = coreset.sensitivities(idx, g, self.alive, rows, opts.coreset_beta)
        elif opts.method == "sampling":
            sensitivity = (self.ws.sensitivity[g.name] if self.layer
                           else np.max([o.result() for o in observers], axis=0))
        return select(opts.method, k, g.channels, problems=problems, weights=rows, xp=self.xp,
                      rng=group_rng(opts.seed, g), on_step=on_step, sensitivity=sensitivity, draw=opts.draw)

    def _problems(self, current, g, matrices, views, observers):
        """One least-squares Problem per consumer, and the rows of layer-mode statistics still
        present ((None, None) without calibration data)."""
        if self.ws.calibration is None:
            return None, None
        xp, opts = self.xp, self.opts
        t = time.perf_counter()
        if self.layer:
            stats = [self.ws.stats[c.node] for c in g.consumers]
            keep = [original_rows(c, self.alive) for c in g.consumers]
            targets = [None] * len(g.consumers)
        else:
            targets = ([self._target_weight(c) for c in g.consumers] if opts.mode == "asym"
                       else [None] * len(g.consumers))
            original = self.original if opts.mode == "asym" else None
            stats = self.capturer.step_stats(current, list(g.consumers), f"capture {g.name}", original,
                                             {c.node: w for c, w in zip(g.consumers, targets)}, observers)
            keep = [None] * len(g.consumers)
        self.clock.add("capture", t)
        self.masked.update(s.consumer.node for s in stats if s.masked)
        problems = [Problem.build(s, m, v, xp, keep_rows=r, target_weight=w)
                    for s, m, v, r, w in zip(stats, matrices, views, keep, targets)]
        return problems, keep

    def _target_weight(self, c):
        """asym target: the original consumer matrix, limited to the outputs still present."""
        matrix = consumer_matrix(self.ws.index, c)
        cols = self.alive.kept.get(c.node)
        return matrix if cols is None else matrix[:, cols]


def scaled_rows(matrix: np.ndarray, view: ChannelView, kept, scales) -> np.ndarray:
    """A copy of `matrix` with each kept channel's rows multiplied by its importance weight."""
    out = to_numpy(matrix).copy()
    present = view.present(kept)                   # a consumer may see only some of the group
    weight = np.asarray(scales)[np.searchsorted(np.asarray(kept), view.members[present])]
    out[view.candidates[present]] *= weight[:, None, None]
    return out
