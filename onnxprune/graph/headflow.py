"""Unfused multi-head attention: find the heads by following a *head axis* from Q, K, V to O.

Every constant-weight MatMul/Gemm whose output a Reshape splits, on its last axis, into
[..., H, Dh] starts a *stream*. From there each tensor carrying heads has a `Tag` (which axis
holds the heads, which one the head features) and each op is allowed only where it provably
keeps head h's values a function of head h's inputs alone: Transpose, element-wise ops whose
other operands broadcast over the head axis (scale, masks, rotary cos/sin), Softmax on
another axis, batched MatMul of two streams on the same head axis (QK^T couples Q with K,
the scores times V couple V), Slice/Split/Concat on other axes, Shape reads of other axes.
The Reshape that merges [..., H, Dh] back into H*Dh features, read by a constant-weight
MatMul, ends the flow at the output projection O. Streams coupled along the way form one
attention block (a HeadGroup); anything else a head reaches refuses its block with the
reason. Pure graph work, like the rest of graph/.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .groups import AttrSite
from .headdims import leading_kept, reads_axis
from .heads import HeadGroup, HeadRefusal, HeadStream
from .headops import Tag, effect
from .index import GraphIndex, attr
from .layout import Layout, Segment
from .roles import Refusal, consumer, production
from .shapes import Const, shape_entries


@dataclass
class _Stream:
    producer: object        # Producer
    rank: int               # rank of the producer's output
    heads: int = 0
    head_dim: int = 0
    role: str = ""
    source: str = ""        # the producer node (one source for all pieces of a packed QKV)
    piece: int = 0          # which output of the packed Split


@dataclass
class _Block:
    """What the flow records per stream (merged over coupled streams at the end)."""

    nodes: set = field(default_factory=set)
    tensors: list = field(default_factory=list)
    counts: list = field(default_factory=list)    # (node, Const) head counts, value = units x factor
    ends: list = field(default_factory=list)      # (O node, merged rank, head positions, head size)
    group: set = field(default_factory=set)       # (head positions, positions per repeat) seen
    reason: str | None = None
    when: int = 0


def unfused_attention(idx: GraphIndex, opset: int) -> list:
    """HeadGroup / HeadRefusal for every attention block found in the graph."""
    return _Flow(idx, opset).run()


class _Flow:
    def __init__(self, idx: GraphIndex, opset: int):
        self.idx, self.opset = idx, opset
        self.tags = {}          # tensor -> Tag
        self.streams = {}       # stream id (producer node) -> _Stream
        self.parent = {}        # union-find over stream ids
        self.blocks = {}        # stream id -> _Block
        self.packed = {}        # producer node -> (its Split node, stream ids of its pieces)
        self.refusals = []      # reasons in the order found (a block reports its first)

    # -- union-find ------------------------------------------------------------------------
    def find(self, s: str) -> str:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def refuse(self, root: str, reason: str) -> None:
        block = self.blocks[self.find(root)]
        if block.reason is None:
            block.reason, block.when = reason, len(self.refusals)
            self.refusals.append(reason)

    # -- walk ------------------------------------------------------------------------------
    def run(self) -> list:
        for node in self.idx.topo_nodes():
            tagged = {i: self.tags[t] for i, t in enumerate(node.input) if t in self.tags}
            if tagged:
                try:
                    self._visit(node, tagged)
                except Refusal as why:
                    for tag in tagged.values():
                        self.refuse(tag.root, str(why))
            elif node.op_type in ("MatMul", "Gemm") and node.domain in ("", "ai.onnx"):
                self._start(node)
        for tensor, tag in self.tags.items():
            if tensor in self.idx.graph_outputs:
                self.refuse(tag.root, f"heads reach the model output '{tensor}'")
            if any(i < 0 for _, i in self.idx.uses(tensor)):
                self.refuse(tag.root, "heads are read inside a subgraph")
        return self._results()

    def _start(self, node) -> None:
        try:
            src = production(self.idx, node)
        except Refusal:
            return
        out, rank = src.output, src.layout.rank
        if src.layout.axis != rank - 1 or rank < 2:
            return
        split = self._packed_split(out, rank)
        pieces = list(split.output) if split is not None else [out]
        if not any(n.op_type == "Reshape" and i == 0 and self.head_split(n, t) is not None
                   for t in pieces for n, i in self.idx.uses(t)):
            return
        sids = [node.name] if split is None else [f"{node.name}#{i}" for i in range(len(pieces))]
        for i, sid in enumerate(sids):
            self.streams[sid] = _Stream(src.producer, rank, source=node.name, piece=i)
            self.parent[sid] = sid
            self.blocks[sid] = _Block(tensors=[out] if i == 0 else [])
        if split is not None:
            self.packed[node.name] = (split, sids)
            self.blocks[sids[0]].nodes.add(split.name)
        try:
            if split is not None:
                self._entry(out, rank, split, "the channel count")
            for sid, piece in zip(sids, pieces):
                self._entry(piece, rank, None, "the channel count", sid)
        except Refusal as why:
            for sid in sids:
                self.refuse(sid, str(why))

    def _packed_split(self, out: str, rank: int):
        """The Split of a packed QKV projection's output on its last axis, if that is what reads it."""
        splits = [n for n, _ in self.idx.uses(out) if n.op_type == "Split"]
        if len(splits) != 1:
            return None
        axis = attr(splits[0], "axis", 0)
        return splits[0] if axis in (-1, rank - 1) else None

    def _entry(self, out: str, rank: int, split, what: str, sid: str | None = None) -> None:
        """A projection output (or a piece of it) goes only to its head-split Reshape, the
        packed Split, and Shape reads of other axes."""
        if out in self.idx.graph_outputs:
            raise Refusal(f"the projection output '{out}' is a model output")
        for node, i in self.idx.uses(out):
            if node.op_type == "Shape":
                self._shape_read(node, rank, rank - 1, what)
            elif split is not None and node is split and i == 0:
                continue
            elif sid is not None and node.op_type == "Reshape" and i == 0:
                self._split(sid, node, out)
            else:
                raise Refusal(f"the projection output '{out}' is also read by {node.op_type} '{node.name}'")

    def head_split(self, node, data: str):
        """(heads, head size, head-count entry) when Reshape `node` splits the last axis of
        `data` into [..., H, Dh], else None: only such a split starts a stream (any other
        Reshape keeps the channel analysis's own reason)."""
        din = self.idx.shapes.get(data)
        entries = shape_entries(self.idx, node.input[1])
        if entries is None or not din or din[-1] is None or len(entries) != len(din) + 1:
            return None
        channels, rank = din[-1], len(din)
        eh, ed = entries[-2:]
        if not (isinstance(eh, Const) and isinstance(ed, Const)):
            return None
        lead = lambda: leading_kept(self.idx, data, entries[:-2], attr(node, "allowzero", 0), rank - 1)  # noqa: E731
        if eh.value > 0 and ed.value > 0 and eh.value * ed.value == channels:
            return eh.value, ed.value, eh
        if eh.value == -1 and ed.value > 0 and channels % ed.value == 0 and lead():
            return channels // ed.value, ed.value, eh
        if ed.value == -1 and eh.value > 0 and channels % eh.value == 0 and lead():
            return eh.value, channels // eh.value, eh
        return None

    def _split(self, sid: str, node, data: str) -> None:
        found = self.head_split(node, data)
        if found is None:
            raise Refusal(f"Reshape '{node.name}' does not split the channels into heads")
        heads, dh, eh = found
        rank = len(self.idx.shapes[data])
        stream = self.streams[sid]
        stream.heads, stream.head_dim = heads, dh
        if eh.value > 0:
            self.count(sid, node, eh, "head count")
        self.blocks[sid].nodes.add(node.name)
        lead = tuple(self.idx.model_dims.get(data) or (None,) * rank)[:-1]
        self._tag(node.output[0], Tag(rank - 1, rank + 1, heads, rank, sid, lead + (heads, dh)))

    # -- what the op rules (headops.py) report -----------------------------------------------
    def count(self, root: str, node, const: Const, what: str) -> None:
        """A constant holding a head count (units x some factor), rewritten after pruning."""
        if const.initializer is None:
            raise Refusal(f"{node.op_type} '{node.name}' takes its {what} from a computed constant")
        self.blocks[self.find(root)].counts.append((node.name, const))

    def role(self, sid: str, role: str) -> None:
        self.streams[sid].role = self.streams[sid].role or role

    def merge(self, node, t: Tag) -> None:
        """The Reshape merging [..., H, Dh] into H*Dh features read by the output projection."""
        data = node.input[0]
        din = self.idx.shapes.get(data)
        if t.axis != t.rank - 2 or t.dh != t.rank - 1 or din is None or din[-1] is None:
            raise Refusal(f"Reshape '{node.name}' reshapes heads other than merging [heads, head_dim] last")
        dh, width = din[-1], t.heads * din[-1]
        entries = shape_entries(self.idx, node.input[1])
        if entries is None or len(entries) != t.rank - 1 or not isinstance(entries[-1], Const):
            raise Refusal(f"Reshape '{node.name}' merges the heads by a shape onnxprune cannot follow")
        last = entries[-1]
        if last.value == width:
            self.count(t.root, node, last, "merged width")
        elif not (last.value == -1 and leading_kept(self.idx, data, entries[:-1], attr(node, "allowzero", 0),
                                                    t.rank - 2)):
            raise Refusal(f"Reshape '{node.name}' does not merge the heads into {width} features")
        out = node.output[0]
        uses = self.idx.uses(out)
        if len(uses) != 1 or uses[0][0].op_type != "MatMul" or uses[0][1] != 0 or out in self.idx.graph_outputs:
            raise Refusal(f"the merged heads of Reshape '{node.name}' are not read by one output projection")
        block = self.blocks[self.find(t.root)]
        block.ends.append((uses[0][0], t.rank - 1, t.heads, dh))
        block.nodes.add(node.name)

    def _tag(self, tensor: str, tag: Tag) -> None:
        self.tags[tensor] = tag
        block = self.blocks[self.find(tag.root)]
        block.tensors.append(tensor)
        block.group.add((tag.heads, tag.group))

    def _shape_read(self, node, rank: int, axis: int, what: str) -> None:
        """A Shape of a head-carrying tensor is fine while it never reads `axis`."""
        if reads_axis(self.idx, node, rank, axis):
            raise Refusal(f"Shape '{node.name}' reads {what}")

    # -- one node --------------------------------------------------------------------------
    def _visit(self, node, tagged: dict) -> None:
        op = node.op_type
        roots = {self.find(t.root) for t in tagged.values()}
        first = next(iter(roots))
        for r in roots:
            self.union(first, r)
        root = self.find(first)
        if node.domain not in ("", "ai.onnx"):
            raise Refusal(f"heads reach {op} '{node.name}' of domain {node.domain}")
        if op == "Shape":
            tag = tagged[0]
            self._shape_read(node, tag.rank, tag.axis, "the head count")
            return
        out = effect(self, node, tagged)
        self.blocks[root].nodes.add(node.name)
        for tensor, tag in out.items():
            self._tag(tensor, tag)

    # -- blocks ----------------------------------------------------------------------------
    def _results(self) -> list:
        members = {}
        for sid in self.streams:
            members.setdefault(self.find(sid), []).append(sid)
        out = []
        for sids in members.values():
            parts = [self.blocks[s] for s in sids]
            found = sorted((b.when, b.reason) for b in parts if b.reason)
            reason = found[0][1] if found else self._check(sids, parts)
            producers = tuple(dict.fromkeys(self.streams[s].producer.node for s in sids))
            if isinstance(reason, str):
                out.append(HeadRefusal(producers, reason, lone=self._lone(sids)))
                continue
            try:
                out.append(self._group(sids, parts, reason))
            except Refusal as why:
                out.append(HeadRefusal(producers, str(why)))
        return out

    def _lone(self, sids) -> bool:
        """Whether these projections look like no attention: no other stream's projection reads
        their input (Q, K and V of one block read the same hidden state)."""
        inputs = {self.idx.nodes[self.streams[s].producer.node].input[0] for s in sids}
        others = {self.idx.nodes[st.producer.node].input[0] for sid, st in self.streams.items() if sid not in sids}
        return len(sids) == 1 and not inputs & others

    def _check(self, sids, parts):
        """The number of units of a coupled block, or why it is refused.

        Units are the largest split of the head axis that every tensor of the block agrees
        on: each stream's heads and each repeated K/V head stay whole inside one unit."""
        ends = [e for b in parts for e in b.ends]
        if len(sids) < 2:
            return "the heads are never multiplied with another projection's heads"
        if len(ends) != 1:
            return "the heads reach no output projection" if not ends else "the heads reach several outputs"
        for source, (_, pieces) in self.packed.items():
            inside = [p for p in pieces if p in sids]
            if inside and len(inside) < len(pieces):
                return f"the pieces of packed projection '{source}' feed different attention blocks"
            if inside and len({(self.streams[p].heads, self.streams[p].head_dim) for p in pieces}) != 1:
                return f"the pieces of packed projection '{source}' have different head counts or sizes"
        seen = set().union(*(b.group for b in parts)) | {(self.streams[s].heads, 1) for s in sids}
        units = min(p // g for p, g in seen)
        if any(p % units or (p // units) % g for p, g in seen):
            return "the heads of the projections do not line up in whole groups"
        values = [c.value for b in parts for _, c in b.counts]
        if any(v % units for v in values):
            return "a head count in the graph is not a multiple of the attention units"
        return units

    def _group(self, sids, parts, units: int) -> HeadGroup:
        o_node, o_rank, positions, dh = next(e for b in parts for e in b.ends)
        streams, counts, sources = [], [], {}
        for s in sids:
            sources.setdefault(self.streams[s].source, []).append(self.streams[s])
        unit = lambda source, block=1: Layout(0, 1, (Segment(source, 0, units),), block=block)  # noqa: E731
        for source, own in sources.items():
            own.sort(key=lambda st: st.piece)
            width = own[0].heads // units * own[0].head_dim
            layout = Layout(own[0].rank - 1, own[0].rank, tuple(Segment(source, 0, units) for _ in own), block=width)
            role = "".join(st.role for st in own) if len(own) > 1 else own[0].role or "?"
            streams.append(HeadStream(role, own[0].producer, layout, own[0].head_dim))
            if source in self.packed:
                split = self.packed[source][0]
                counts.append(AttrSite(split.name, "split", tuple(unit(source, width) for _ in own),
                                       name=split.input[1] if len(split.input) > 1 and split.input[1] else None))
        v = next((st.source for st in self.streams.values() if st.role == "v" and st.source in sources),
                 next(iter(sources)))
        for node, c in (x for b in parts for x in b.counts):
            counts.append(AttrSite(node, "reshape", (unit(v),), name=c.initializer, index=c.index,
                                   factor=c.value // units))
        o = consumer(self.idx, o_node, 0, Layout(o_rank - 1, o_rank, (Segment(v, 0, units),),
                                                 block=positions // units * dh))
        order = self.idx.order.__getitem__
        nodes = sorted({n for b in parts for n in b.nodes}, key=order)
        fused = any(self.idx.nodes[n].op_type == "Attention" for n in nodes)     # headattn.py
        return HeadGroup(units=units, head_dim=dh, queries_per_unit=positions // units, streams=tuple(streams),
                         output=o, counts=tuple(counts), nodes=tuple(nodes),
                         tensors=tuple(t for b in parts for t in b.tensors),
                         pattern="ai.onnx.Attention (4-D)" if fused else "unfused")
