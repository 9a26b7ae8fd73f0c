"""One pruning run: budget -> groups -> verify -> report (`prune_run`).

The groups are pruned in topological order of their first producers, capture -> select ->
reweight -> rewrite each (`GroupPruner`). In seq/asym mode every group is captured from the
model with the earlier groups already pruned; in layer mode the statistics come from one pass
of the original model, kept in the LayerCache so that a sweep captures (and runs the greedy)
only once.
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace

import numpy as np

from ..capture import runtime
from ..graph.index import GraphIndex
from ..graph.layout import Alive
from ..graph.residual import skip_partner
from ..methods.base import ConsumerPart, SelectContext, group_rng
from ..methods.importance import scaled_rows
from ..methods.pieces import cover_pieces, split_pieces
from ..methods.weight_norm import weight_norms
from ..rewrite.apply import apply_group
from ..rewrite.weights import consumer_matrix, consumer_update
from ..solve.problem import ChannelView, Problem, original_rows
from ..solve.reweight import least_squares, resolve_ridge
from .clock import Clock
from .layercache import LayerCache
from .refit import GroupStep, plan_steps, refit_layers
from .report import GroupReport, build_report
from .rowmask import check_applied as check_row_mask_applied
from .session import Session, calibration_for, capturer
from .surgery import surgery_check
from .verify import check, drift_warning, output_fidelity

VERIFY_SAMPLES = 128     # verify compares outputs on the first this many calibration samples (two passes)


def data_free_note(method: str) -> str:
    return (f"{method} without calibration data: the consumers are not refitted (reweighting needs data; "
            "pass --calib to refit them)")


def prune_run(session: Session, cache: LayerCache, opts, budget, progress=None, include_setup: bool = True):
    """One run with `opts` (their data and model options must be the session's); `budget`
    (opts, clock, progress) -> kept channels per group. Returns (pruned ModelProto, Report)."""
    start = time.perf_counter()
    clock = Clock()
    notes = list(session.notes)
    if opts.reweight is None:
        opts = replace(opts, reweight=not (opts.impl.data_free and session.calibration is None))
        if not opts.reweight:
            notes.append(data_free_note(opts.method))
    if opts.refit is None:
        refit = opts.reweight and opts.mode != "layer" and session.calibration is not None
        opts = replace(opts, refit="all" if refit else "consumers")
    elif opts.refit == "all" and not (opts.reweight and session.calibration is not None):
        notes.append("--refit all needs calibration data and reweighting: only the consumers' refit applies")
        opts = replace(opts, refit="consumers")
    if opts.residual_target is None:
        opts = replace(opts, residual_target="sum" if opts.refit == "all" and opts.mode == "asym" else "branch")
    if opts.needs_data and session.calibration is None:
        calibration_for(session.model, None, opts)            # raises the user error
    if session.pool is not None:
        notes.append(f"capture ran on {session.pool.workers} Ray worker(s), their statistics summed in worker "
                     "order (equal to one process up to float summation order)")
    t, captured = time.perf_counter(), clock.seconds.get("capture", 0.0)
    counts = budget(opts, clock, progress)
    clock.add("budget", t)
    clock.seconds["budget"] -= clock.seconds.get("capture", 0.0) - captured    # reported as capture
    pruner = GroupPruner(session, cache, opts, clock, progress)
    pruned, group_reports = pruner.run(counts)
    check_row_mask_applied(session.mask, pruner.masked, bool(pruner.captured))

    t = time.perf_counter()
    runtime.release_memory()           # the capture's sessions and batches
    check(pruned)
    verify = {"checker": "passed",
              "surgery_check": surgery_check(session, {g["name"]: g["kept"] for g in group_reports})}
    if session.calibration is not None:
        verify.update(output_fidelity(session.model, pruned, session.calibration.head(VERIFY_SAMPLES),
                                      session.batch_size, session.device, session.row_mask, opts.metric))
        warning = drift_warning(group_reports, verify)
        if warning:
            verify["warning"] = warning
    clock.add("verify", t)
    clock.seconds["analyze"] = session.setup_seconds if include_setup else 0.0
    clock.seconds["total"] = time.perf_counter() - start + clock.seconds["analyze"]
    refits = pruner.refits if opts.refit == "all" else None
    if pruner.summed:
        notes.append(f"{len(pruner.summed)} layer(s) end a residual branch and were refitted to the original model's "
                     "sum at their Add minus the current skip path (--residual-target sum), which also cancels "
                     "the skip path's drift")
    return pruned, build_report(session, opts, pruned, group_reports, verify, clock.seconds, notes + pruner.notes,
                                pruner.masked, refits, bool(pruner.captured))


class GroupPruner:
    """Prunes the groups one after another (the model, and `alive`, change as it goes)."""

    def __init__(self, session: Session, cache: LayerCache, opts, clock, progress):
        self.session = session
        self.cache = cache
        self.opts = opts
        self.method = opts.impl
        self.xp = session.xp
        self.clock = clock
        self.progress = progress or (lambda stage, done, total: None)
        self.original = session.model
        self.alive = Alive()
        self.layer = opts.mode == "layer"
        self.capturer = None
        if session.calibration is not None and not self.layer:
            self.capturer = capturer(session, self.progress)
        self.masked = set()           # consumers whose padding rows were dropped (--row-mask)
        self.captured = set()         # consumers whose statistics were captured
        self.refits = []              # --refit all: one entry per refitted non-consumer layer
        self.notes = []               # decisions a user should know about (for the report)
        self.underdetermined = []     # --refit all: layers with fewer calibration rows than features
        self.summed = set()           # layers refitted to the original sum at their residual Add

    def run(self, counts: dict):
        groups = self.session.groups
        todo = [g for g in groups if counts[g.name] < g.channels]
        refit = self.opts.refit if self.capturer is not None else "consumers"
        steps, self.notes = plan_steps(self.session, todo, refit, self.opts.exclude)
        if self.session.calibration is not None and todo:    # keep=1 (or rounding) may leave nothing to capture
            if self.layer:
                self.cache.layer_capture(todo, self.method, self.clock, self.progress)
            else:
                self.capturer.plan(self.original, [s.boundary for s in steps], self.session.index)
        current, done = self.original, {}
        try:
            for step in steps:
                if isinstance(step, GroupStep):
                    g = step.group
                    current, done[g.name] = self._prune_group(current, g, counts[g.name])
                    continue
                current, entries = refit_layers(self, current, step)
                self.refits.extend(entries)
                self.underdetermined += [e["node"] for e in entries if e["rows"] < e["features"]]
        finally:
            if self.capturer is not None:
                self.capturer.close()
        if self.underdetermined:
            self.notes.append(f"--refit all: {len(self.underdetermined)} layer(s) had fewer calibration rows than "
                              f"input features (the ridge toward their weights decides the rest): "
                              f"{', '.join(self.underdetermined)}")
        reports = []
        for g in groups:
            if g.name in done:
                reports.append(done[g.name])
            else:
                reports.append(asdict(GroupReport(g.name, g.channels, g.channels, list(range(g.channels)), 0.0,
                                                  [c.node for c in g.consumers])))
        return current, reports

    def _prune_group(self, current, g, k: int):
        opts, xp = self.opts, self.xp
        idx = GraphIndex.build(current, infer=False)
        members = set(g.sources)
        parts = [ConsumerPart(c, consumer_matrix(idx, c), ChannelView.of(c, members, g.channels, self.alive))
                 for c in g.consumers]
        observers = self.method.observers(parts, xp) if not self.layer else ()
        has_data = self._problems(current, g, parts, observers)
        t = time.perf_counter()
        sel = self.method.select(k, self._context(g, k, idx, parts, observers, has_data))
        sel = self._cover_pieces(g, sel, parts)
        t = self.clock.add("select", t)
        updates, err, energy, ridges = [], 0.0, 0.0, {}
        for part in parts:
            matrix, view, problem = part.matrix, part.view, part.problem
            if sel.scales is not None and not opts.reweight:
                matrix = scaled_rows(matrix, view, sel.kept, sel.scales)
            if problem is not None:
                if not opts.reweight:
                    canonical = matrix[view.order][problem.rows(sel.kept)]
                else:
                    w0 = problem.weight[xp.asarray(problem.rows(sel.kept))]    # the ridge pulls toward them
                    ridges[part.consumer.node] = resolve_ridge(problem, sel.kept, opts.ridge, xp, w0=w0)
                    canonical = least_squares(problem, sel.kept, ridges[part.consumer.node], xp, w0=w0)
                err += problem.error(sel.kept, xp.asarray(canonical), xp)
                energy += problem.target
                rows = view.order[problem.rows(sel.kept)]
                new = canonical[np.argsort(rows)]
            else:
                new = matrix[view.remaining(sel.kept)]
            updates.append(consumer_update(idx, part.consumer, new))
        t = self.clock.add("reweight", t)
        pruned = apply_group(current, g, sel.kept, updates, self.alive)
        self.alive.mark(g.sources, g.channels, sel.kept)
        self.clock.add("rewrite", t)
        rel = (err / energy if energy > 0 else 0.0) if has_data else None
        report = asdict(GroupReport(g.name, g.channels, len(sel.kept), [int(i) for i in sel.kept], rel,
                                    [c.node for c in g.consumers]))
        if sel.search is not None:
            report["search"] = sel.search
        if ridges:
            report["ridge"] = ridges
        return pruned, report

    def _cover_pieces(self, g, sel, parts: list):
        """No Split piece of the group may lose all its channels (see methods/pieces.py)."""
        pieces = split_pieces(g)
        if not pieces:
            return sel
        scores = sum(weight_norms(p.dense_rows(), g.channels) for p in parts)
        sel, notes = cover_pieces(sel, pieces, scores)
        self.notes.extend(f"{g.name}: {n}" for n in notes)
        return sel

    def _context(self, g, k: int, idx, parts: list, observers: tuple, has_data: bool) -> SelectContext:
        """Everything a method may read to select in this group (see methods/base.py)."""
        label = f"select {g.name}"
        on_step = lambda j: self.progress(label, j, k)        # noqa: E731
        problems = [p.problem for p in parts] if has_data else None
        cached = None
        if self.layer and has_data:
            def cached(k, on_step):
                return self.cache.greedy_selection(g, problems, [p.matrix for p in parts],
                                                   [p.keep_rows for p in parts], k, on_step)
        observed = self.cache.observed(self.method, g) if self.layer else self.method.combine(observers)
        return SelectContext(g.channels, parts, problems, xp=self.xp, rng=group_rng(self.opts.seed, g),
                             on_step=on_step, observed=observed, draw=self.opts.draw,
                             coreset_beta=self.opts.coreset_beta, group=g, idx=idx, alive=self.alive,
                             cached_greedy=cached, search=self.opts.search)

    def _problems(self, current, g, parts: list, observers: tuple) -> bool:
        """Fill each part's least-squares Problem (and, in layer mode, the rows of the original
        statistics still present); False without calibration data."""
        if self.session.calibration is None:
            return False
        xp, opts = self.xp, self.opts
        t = time.perf_counter()
        if self.layer:
            stats = [self.cache.stats[c.node] for c in g.consumers]
            for p in parts:
                p.keep_rows = original_rows(p.consumer, self.alive)
        else:
            original = self.original if opts.mode == "asym" else None
            targets = {c.node: self._target_weight(c) for c in g.consumers} if original is not None else {}
            stats = self.capturer.step_stats(current, list(g.consumers), f"capture {g.name}", original,
                                             targets, observers,
                                             self.partners(g.consumers) if original is not None else None)
        self.clock.add("capture", t)
        self.masked.update(s.consumer.node for s in stats if s.masked)
        self.captured.update(s.consumer.node for s in stats)
        for p, s in zip(parts, stats):
            p.problem = Problem.build(s, p.matrix, p.view, xp, keep_rows=p.keep_rows)
        return True

    def partners(self, consumers) -> dict:
        """--residual-target sum: consumer node -> the skip operand of the residual Add it
        feeds (graph/residual.py), for those that end a residual branch."""
        if self.opts.residual_target != "sum":
            return {}
        found = {c.node: skip_partner(self.session.index, c) for c in consumers}
        found = {node: skip for node, skip in found.items() if skip}
        self.summed.update(found)
        return found

    def _target_weight(self, c):
        """asym target: the original consumer matrix, limited to the outputs still present."""
        matrix = consumer_matrix(self.session.index, c)
        cols = self.alive.kept.get(c.node)
        return matrix if cols is None else matrix[:, cols]
