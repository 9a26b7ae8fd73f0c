"""The `analyze` stage: find every prunable channel group, and say why the rest is left alone.

Channel layouts (layout.py) are propagated forward through the graph in topological order.
Every Conv / Gemm / MatMul with a constant weight starts a *source*; element-wise ops that
combine two sources position by position (a residual Add, a gated Mul) couple them, and
coupled sources form one group (union-find). A source is refused, with the first reason
found, as soon as its channels reach something not provably per-channel; a group is prunable
only when none of its sources is refused. Pure graph work: no onnxruntime, no graph surgery.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from ..errors import OnnxPruneError
from .index import GraphIndex, attr, opset_version
from .groups import Analysis, Group, Skipped
from .oprules import transfer
from .roles import Refusal, consumer, depthwise_conv, is_matmul_like, production


def analyze(model: onnx.ModelProto, exclude: Iterable[str] = (), index: GraphIndex | None = None) -> Analysis:
    """All prunable groups in topological order, plus every Conv/Gemm/MatMul left alone."""
    idx = index or GraphIndex.build(model)
    exclude = set(exclude)
    unknown = exclude - set(idx.nodes)
    if unknown:
        raise OnnxPruneError(
            f"--exclude names no node of the model: {', '.join(sorted(unknown))} (see `onnxprune analyze` for names)"
        )
    opset = opset_version(model)
    prop = _Propagation(idx, opset, exclude)
    prop.run()
    return prop.assemble()


class _Propagation:
    def __init__(self, idx: GraphIndex, opset: int, exclude: set):
        self.idx, self.opset, self.exclude = idx, opset, exclude
        self.layouts = {}          # tensor -> Layout
        self.sources = {}          # source id -> roles.Source
        self.parent = {}           # union-find over source ids
        self.refused = {}          # source id -> reason
        self.sites = {}            # source id -> [ParamSite | AttrSite]
        self.passthrough = {}      # source id -> {node names}
        self.consumers = {}        # source id -> {node name: Consumer}
        self.tensors = {}          # source id -> [tensor names]
        self.not_sources = []      # Skipped for Conv/Gemm/MatMul that start no source
        self.handled = set()       # bias Adds folded into their MatMul producer

    # -- propagation -----------------------------------------------------------------------
    def run(self) -> None:
        for node in self.idx.topo_nodes():
            if node.name in self.handled:
                continue
            tracked = {i: self.layouts[t] for i, t in enumerate(node.input) if t in self.layouts}
            if tracked:
                self._visit(node, tracked)
            if is_matmul_like(node) and not self._is_depthwise(node):
                self._start_source(node)
            elif is_matmul_like(node):
                self.not_sources.append(Skipped(node.name, node.op_type,
                                                "depthwise Conv: its channels follow its input's group"))
        for tensor, layout in self.layouts.items():
            if tensor in self.idx.graph_outputs:
                self._refuse_all(layout.sources, f"channels reach the model output '{tensor}'")
            for node, i in self.idx.uses(tensor):
                if i < 0:
                    self._refuse_all(layout.sources, f"channels are read inside a subgraph of "
                                                     f"{node.op_type} '{node.name}'")

    def _is_depthwise(self, node) -> bool:
        return node.op_type == "Conv" and attr(node, "group", 1) != 1 and node.input[0] in self.layouts

    def _visit(self, node, tracked: dict) -> None:
        sources = set().union(*(lay.sources for lay in tracked.values()))
        try:
            effect = None
            if node.op_type == "Conv":
                effect = depthwise_conv(self.idx, node, tracked)
            if effect is None and is_matmul_like(node):
                if set(tracked) != {0}:
                    raise Refusal(f"channels enter {node.op_type} '{node.name}' as a weight operand")
                found = consumer(self.idx, node, 0, tracked[0])
                for s in sources:
                    self.consumers[s][node.name] = found
                return
            if effect is None:
                effect = transfer(self.idx, node, tracked, self.opset)
        except Refusal as why:
            self._refuse_all(sources, str(why))
            return
        for s in sources:
            self.passthrough[s].add(node.name)
        for site in effect.sites:
            for layout in ([site.layout] if hasattr(site, "layout") else site.layouts):
                for s in layout.sources:
                    self.sites[s].append(site)
        for a, b in effect.couplings:
            self._couple(a, b, node)
        for tensor, layout in effect.outputs.items():
            self.layouts[tensor] = layout
            for s in layout.sources:
                self.tensors[s].append(tensor)

    def _start_source(self, node) -> None:
        if node.name in self.exclude:
            self.not_sources.append(Skipped(node.name, node.op_type, "excluded by --exclude"))
            return
        try:
            src = production(self.idx, node)
        except Refusal as why:
            self.not_sources.append(Skipped(node.name, node.op_type, str(why)))
            return
        sid = src.producer.node
        self.sources[sid] = src
        self.parent[sid] = sid
        self.sites[sid] = list(src.sites)
        self.passthrough[sid] = set()
        self.consumers[sid] = {}
        self.tensors[sid] = [src.output]
        self.layouts[src.output] = src.layout
        if src.producer.bias_node:
            self.handled.add(src.producer.bias_node)

    # -- coupling and refusals -------------------------------------------------------------
    def _couple(self, a, b, node) -> None:
        """Sources meeting position by position must keep channel c together."""
        if a.positions != b.positions:
            self._refuse_all(a.sources | b.sources, f"{node.op_type} '{node.name}' combines channel "
                                                    "axes of different widths")
            return
        for sa, la, sb, lb in _aligned(a, b):
            if sa is None and sb is None:
                continue
            if sa is None or sb is None:
                self._refuse(sa or sb, f"{node.op_type} '{node.name}' adds its channels to channels that are "
                                       "not prunable (e.g. zero padding or a model input)")
                continue
            if la != lb or self.sources[sa].channels != self.sources[sb].channels:
                self._refuse_all({sa, sb}, f"{node.op_type} '{node.name}' pairs channel c of '{sb}' with "
                                           f"channel c{la - lb:+d} of '{sa}' (e.g. a zero-padded shortcut)")
                continue
            self._union(sa, sb)

    def _find(self, s):
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def _union(self, a, b) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            first, second = sorted((ra, rb), key=lambda s: self.idx.order[s])
            self.parent[second] = first

    def _refuse(self, sid, reason: str) -> None:
        self.refused.setdefault(sid, reason)

    def _refuse_all(self, sids, reason: str) -> None:
        for s in sids:
            self._refuse(s, reason)

    # -- assembly ----------------------------------------------------------------------------
    def assemble(self) -> Analysis:
        classes = {}
        for sid in sorted(self.sources, key=self.idx.order.__getitem__):
            classes.setdefault(self._find(sid), []).append(sid)
        groups, skipped = [], list(self.not_sources)
        for root, members in classes.items():
            reason = self._class_refusal(members)
            if reason is None:
                try:
                    groups.append(self._group(members))
                    continue
                except Refusal as why:
                    reason = str(why)
            for sid in members:
                own = self.refused.get(sid)
                why = own if own else f"coupled with '{_first_refused(self.refused, members)}': {reason}"
                skipped.append(Skipped(sid, self.sources[sid].producer.op, why))
        groups.sort(key=lambda g: g.position)
        skipped.sort(key=lambda s: self.idx.order[s.node])
        return Analysis(groups=tuple(groups), skipped=tuple(skipped))

    def _class_refusal(self, members) -> str | None:
        reasons = [self.refused[m] for m in members if m in self.refused]
        if reasons:
            return reasons[0]
        if not any(self.consumers[m] for m in members):
            self._refuse(members[0], "no Conv/Gemm/MatMul consumes the channels")
            return self.refused[members[0]]
        return None

    def _group(self, members) -> Group:
        order = self.idx.order.__getitem__
        consumers = {}
        for m in members:
            consumers.update(self.consumers[m])
        sites, attr_sites, seen = [], [], set()
        for m in members:
            for site in self.sites[m]:
                key = (type(site).__name__, getattr(site, "name", None), getattr(site, "axis", None),
                       getattr(site, "node", None), getattr(site, "kind", None))
                if key in seen:
                    continue
                seen.add(key)
                (sites if hasattr(site, "layout") else attr_sites).append(site)
        group = Group(
            name=members[0],
            channels=self.sources[members[0]].channels,
            producers=tuple(self.sources[m].producer for m in members),
            sources=tuple(members),
            passthrough=tuple(sorted(set().union(*(self.passthrough[m] for m in members)), key=order)),
            consumers=tuple(sorted(consumers.values(), key=lambda c: order(c.node))),
            sites=tuple(sites),
            attr_sites=tuple(attr_sites),
            tensors=tuple(t for m in members for t in self.tensors[m]),
            position=order(members[0]),
        )
        self._check_even_positions(group)
        self._check_private_params(group)
        return group

    def _check_even_positions(self, group: Group) -> None:
        members = set(group.sources)
        for c in group.consumers:
            src, ch = c.layout.owners()
            counts = np.bincount(ch[np.isin(src, list(members))], minlength=group.channels)
            if len(set(counts[counts > 0])) > 1:
                raise Refusal(f"channels reach {c.op} '{c.node}' an uneven number of times")

    def _check_private_params(self, group: Group) -> None:
        """Refuse when a parameter we would resize is shared with another node (tied weights)."""
        names = [p.name for p in group.params] + [c.bias for c in group.consumers if c.bias]
        for name in names:
            users = {n.name for n, _ in self.idx.uses(name)}
            if len(users) > 1:
                raise Refusal(f"initializer '{name}' is shared by nodes {', '.join(sorted(users))}")


def _aligned(a, b):
    """(source_a, lo_a, source_b, lo_b) for each stretch where both layouts are uniform."""
    sa, sb = list(a.segments), list(b.segments)
    i = j = 0
    off_a = off_b = 0
    while i < len(sa) and j < len(sb):
        x, y = sa[i], sb[j]
        yield x.source, x.lo + off_a, y.source, y.lo + off_b
        step = min(x.size - off_a, y.size - off_b)
        off_a += step
        off_b += step
        if off_a == x.size:
            i, off_a = i + 1, 0
        if off_b == y.size:
            j, off_b = j + 1, 0


def _first_refused(refused: dict, members) -> str:
    return next((m for m in members if m in refused), members[0])
