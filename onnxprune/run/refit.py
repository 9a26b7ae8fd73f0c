"""`--refit all`: in seq/asym mode, refit every Conv / Gemm / MatMul whose input drifted.

Pruning a group refits its consumers; every other layer downstream keeps its weights while its
input moves away from the original network's. The sweep (runner.GroupPruner) therefore walks
*steps* in topological order: a group step (select + refit the consumers, as always) or a
layer step, which refits a layer that is no consumer of a pruned group, all its inputs kept,
by ridge least squares toward its current weights: inputs from the current model (B, with
every earlier layer pruned and refitted), targets the original layer's output (A W, only the
output channels still present), i.e. the asym problem with nothing to select. Layers reading
the same tensor with the same geometry share one step and one Gram. A layer whose input
depends on nothing pruned or refitted before it is not refitted (it would fit itself).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from onnx import numpy_helper

from ..capture.shared import design_key
from ..graph.index import GraphIndex
from ..graph.roles import Refusal, is_matmul_like, refit_layer
from ..rewrite.apply import apply_group
from ..rewrite.weights import consumer_matrix, consumer_update
from ..solve.refit import whole_problem
from ..solve.reweight import least_squares, resolve_ridge

REFITS = ("consumers", "all")


@dataclass(frozen=True)
class LayerStep:
    """One or more layers reading the same input, refitted together (one Gram)."""

    layers: tuple           # Consumer values (roles.refit_layer)

    @property
    def boundary(self) -> str:
        return self.layers[0].node


@dataclass(frozen=True)
class GroupStep:
    group: object

    @property
    def boundary(self) -> str:
        return self.group.boundary


def _touched(g) -> set:
    """Nodes a group's pruning changes (all at or after its boundary)."""
    nodes = {n for p in g.producers for n in p.nodes} | set(g.passthrough)
    nodes |= {c.node for c in g.consumers} | {c.bias_node for c in g.consumers if c.bias_node}
    return nodes | {a.node for a in g.attr_sites}


def _ancestors(idx: GraphIndex, tensor: str, memo: dict) -> frozenset:
    """Nodes the value of `tensor` depends on (memoised per tensor; iterative)."""
    if tensor in memo:
        return memo[tensor]
    stack = [tensor]
    while stack:
        t = stack[-1]
        if t in memo:
            stack.pop()
            continue
        node = idx.producer.get(t)
        if node is None:
            memo[t] = frozenset()
            stack.pop()
            continue
        reads = [i for i in node.input if i and not idx.is_constant(i)]
        reads += [r for r in idx.outer_reads.get(node.name, ()) if not idx.is_constant(r)]
        todo = [i for i in reads if i not in memo]
        if todo:
            stack.extend(todo)
            continue
        out = {node.name}
        for i in reads:
            out |= memo[i]
        memo[t] = frozenset(out)
        stack.pop()
    return memo[tensor]


def plan_steps(session, todo: list, refit: str, exclude=()) -> tuple:
    """(steps in topological order, notes): every todo group, and with refit 'all' every
    other Conv/Gemm/MatMul with a constant weight whose input changes."""
    steps = [GroupStep(g) for g in todo]
    notes = []
    if refit != "all":
        return steps, notes
    idx = session.index
    consumers = {c.node for g in todo for c in g.consumers}
    boundary = {g.boundary: g for g in todo}
    changed = set()             # nodes changed so far, in topological order
    memo, layers = {}, []
    for node in idx.topo_nodes():
        g = boundary.get(node.name)
        if not is_matmul_like(node) or node.name in consumers:
            if g is not None:
                changed |= _touched(g)
            continue
        if len(node.input) < 2 or not idx.is_constant(node.input[1]):
            if g is not None:
                changed |= _touched(g)
            continue
        if changed & _ancestors(idx, node.input[0], memo) and node.name not in exclude:
            try:
                layers.append(refit_layer(idx, node))
                changed.add(node.name)
            except Refusal as why:
                notes.append(f"--refit all: {node.name} not refitted: {why}")
        if g is not None:
            changed |= _touched(g)
    shared: dict = {}
    for c in layers:
        shared.setdefault(design_key(c), []).append(c)
    steps += [LayerStep(tuple(cs)) for cs in shared.values()]
    steps.sort(key=lambda s: (idx.order[s.boundary], isinstance(s, GroupStep)))
    return steps, notes


def refit_layers(pruner, current, step: LayerStep):
    """Refit the layers of `step` on `current`; returns (new model, report entries)."""
    session, xp, alive = pruner.session, pruner.xp, pruner.alive
    idx = GraphIndex.build(current, infer=False)
    targets, currents = [], []
    for c in step.layers:
        target = consumer_matrix(session.index, c)
        cols = alive.kept.get(c.node)
        targets.append(target if cols is None else target[:, cols])
        currents.append(consumer_matrix(idx, c))
    lead = step.layers[0]
    t = time.perf_counter()
    partners = pruner.partners([lead]) if len(step.layers) == 1 else None
    stats = pruner.capturer.step_stats(current, [lead], f"refit {lead.node}", pruner.original,
                                       {lead.node: np.hstack(targets)}, partners=partners)[0]
    t = pruner.clock.add("capture", t)
    pruner.masked.update([c.node for c in step.layers] if stats.masked else [])
    updates, entries, col, folds = [], [], 0, {}
    for c, target, w0 in zip(step.layers, targets, currents):
        width = target.shape[1]
        energy = float(xp.sum(stats.column_target[col:col + width]))
        col += width
        problem = whole_problem(stats.gram, stats.h[:, col - width:col], energy, w0, xp)
        fold = _batchnorm_mean(idx, c, w0.shape[1])
        has_bias = c.bias is not None or c.bias_node is not None or fold is not None
        ridge = resolve_ridge(problem, [], pruner.opts.ridge, xp, w0=w0, intercept=has_bias)
        new = least_squares(problem, [], ridge, xp, w0=w0, intercept=has_bias)
        before = problem.error([], xp.asarray(w0), xp)
        after = problem.error([], xp.asarray(new), xp)
        if fold is not None:
            folds.update(_fold_into_batchnorm(idx, c, new, fold))
        updates.append(consumer_update(idx, c, new))
        entries.append({"node": c.node, "rel_error_before": before / energy if energy > 0 else 0.0,
                        "rel_error_after": after / energy if energy > 0 else 0.0,
                        "rows": int(stats.rows), "features": int(stats.features), "ridge": ridge})
    t = pruner.clock.add("reweight", t)
    stub = SimpleNamespace(channels=0, sources=(), sites=(), producers=(), attr_sites=(),
                           consumers=tuple(step.layers))
    out = apply_group(current, stub, [], updates, alive)
    for init in out.graph.initializer:
        if init.name in folds:
            init.CopyFrom(numpy_helper.from_array(folds[init.name], init.name))
    pruner.clock.add("rewrite", t)
    return out, entries


def _batchnorm_mean(idx: GraphIndex, c, outputs: int) -> str | None:
    """The running-mean initializer that can take the refitted intercept of a bias-free
    Conv/Gemm whose only reader is a BatchNormalization (BN(y + b) = BN'(y) with
    mean' = mean - b), or None. A layer with neither a bias nor such a BN is refitted without
    an intercept, so the refit adds no parameter the budget did not count."""
    if c.bias is not None or c.bias_node is not None or c.op == "MatMul":
        return None
    node = idx.nodes[c.node]
    uses = idx.uses(node.output[0])
    if len(uses) != 1 or node.output[0] in idx.graph_outputs:
        return None
    bn, slot = uses[0]
    if bn.op_type != "BatchNormalization" or slot != 0 or len(bn.input) < 5 or len(bn.output) > 1:
        return None
    mean = bn.input[3]
    if not idx.is_constant(mean) or len(idx.uses(mean)) != 1 or idx.array(mean).shape != (outputs,):
        return None
    return mean


def _fold_into_batchnorm(idx: GraphIndex, c, new: np.ndarray, mean: str) -> dict:
    """Moves new's intercept row into the BN's running mean (see _batchnorm_mean); zeroes the
    row in place and returns {mean initializer: new value}."""
    old = idx.array(mean)
    folded = (old.astype(np.float64) - new[-1]).astype(old.dtype)
    new[-1] = 0.0
    return {mean: folded}
