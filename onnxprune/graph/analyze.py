"""The `analyze` stage: find every prunable channel group, and say why the rest is left alone.

Channel layouts (layout.py) are propagated forward through the graph in topological order.
Every Conv / Gemm / MatMul with a constant weight starts a *source*, and a Pad of zeros on the
channel axis starts a *zero source*; element-wise ops that combine two sources position by
position (a residual Add, a gated Mul) couple their channels, possibly at an offset (a C2f
half, an option-A shortcut), and coupled channel ranges form one group (pieces.py). A range
of channels is refused, with the first reason found, as soon as it reaches something not
provably per-channel; a group is prunable only when none of its pieces is refused
(assemble.py). Pure graph work: no onnxruntime, no graph surgery.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from ..errors import OnnxPruneError
from .index import GraphIndex, attr, opset_version
from .assemble import assemble
from .groups import Skipped
from .headscan import attach_heads
from .oprules import transfer
from .pieces import Pieces
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
    return attach_heads(assemble(prop), idx, opset, exclude)


class _Propagation:
    def __init__(self, idx: GraphIndex, opset: int, exclude: set):
        self.idx, self.opset, self.exclude = idx, opset, exclude
        self.layouts = {}          # tensor -> Layout
        self.sources = {}          # source id -> roles.Source
        self.zeros = {}            # zero source id -> (channel count, Pad node name)
        self.pieces = Pieces()     # couplings between channel ranges of sources
        self.refusals = []         # (source id, lo, hi, reason), first reason first
        self.sites = {}            # source id -> [ParamSite | AttrSite]
        self.passthrough = {}      # source id -> {node names}
        self.seen = {}             # node name -> layouts it read or wrote
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
                self._refuse_layout(layout, f"channels reach the model output '{tensor}'")
            for node, i in self.idx.uses(tensor):
                if i < 0:
                    self._refuse_layout(layout, f"channels are read inside a subgraph of "
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
            for layout in tracked.values():
                self._refuse_layout(layout, str(why))
            return
        for zid, size in effect.zeros.items():
            self._add_source(zid, size)
            self.zeros[zid] = (size, node.name)
        for s in sources | set(effect.zeros):
            self.passthrough[s].add(node.name)
        self.seen[node.name] = list(tracked.values()) + list(effect.outputs.values())
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

    def _add_source(self, sid: str, channels: int) -> None:
        self.pieces.add_source(sid, channels)
        self.sites.setdefault(sid, [])
        self.passthrough.setdefault(sid, set())
        self.consumers.setdefault(sid, {})
        self.tensors.setdefault(sid, [])

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
        self._add_source(sid, src.channels)
        self.sites[sid] = list(src.sites)
        self.tensors[sid] = [src.output]
        self.layouts[src.output] = src.layout
        if src.producer.bias_node:
            self.handled.add(src.producer.bias_node)

    # -- coupling and refusals -------------------------------------------------------------
    def _couple(self, a, b, node) -> None:
        """Channels meeting position by position are kept or removed together."""
        if a.positions != b.positions:
            msg = f"{node.op_type} '{node.name}' combines channel axes of different widths"
            self._refuse_layout(a, msg)
            self._refuse_layout(b, msg)
            return
        for sa, la, sb, lb, n in _aligned(a, b):
            if sa is None and sb is None:
                continue
            if sa is None or sb is None:
                self.refusals.append((sa or sb, la if sa else lb, (la if sa else lb) + n,
                                      f"{node.op_type} '{node.name}' adds its channels to channels that are "
                                      "not prunable (e.g. a model input or non-zero padding)"))
                continue
            self.pieces.link(sa, la, sb, lb, n)

    def _refuse_layout(self, layout, reason: str) -> None:
        for seg in layout.segments:
            if seg.source is not None:
                self.refusals.append((seg.source, seg.lo, seg.hi, reason))


def _aligned(a, b):
    """(source_a, lo_a, source_b, lo_b, length) for each stretch where both layouts are uniform."""
    sa, sb = list(a.segments), list(b.segments)
    i = j = 0
    off_a = off_b = 0
    while i < len(sa) and j < len(sb):
        x, y = sa[i], sb[j]
        step = min(x.size - off_a, y.size - off_b)
        yield x.source, x.lo + off_a, y.source, y.lo + off_b, step
        off_a += step
        off_b += step
        if off_a == x.size:
            i, off_a = i + 1, 0
        if off_b == y.size:
            j, off_b = j + 1, 0
