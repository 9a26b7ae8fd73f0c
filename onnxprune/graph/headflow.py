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

from dataclasses import dataclass, field, replace

from .groups import AttrSite
from .heads import HeadGroup, HeadRefusal, HeadStream
from .index import GraphIndex, attr
from .layout import Layout, Segment
from .roles import Refusal, consumer, production
from .headdims import leading_kept, reads_axis, size_one_at
from .shapes import Const, shape_entries

UNARY = {"IsNaN", "Not", "Cast", "Neg", "Identity", "Dropout", "Exp", "Tanh", "Relu", "Sigmoid", "Sqrt", "Abs", "Erf",
         "Softplus", "Reciprocal", "Log"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Clip", "Equal", "Less", "Greater"}


@dataclass(frozen=True)
class Tag:
    """A tensor carrying heads: `heads` positions on `axis`; head features on `dh` (None once
    contracted, e.g. the scores); `root` the stream it came from."""

    axis: int
    rank: int
    heads: int
    dh: int | None
    root: str


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
    counts: list = field(default_factory=list)
    ends: list = field(default_factory=list)      # (merge Reshape node, O Consumer)
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
        if not any(n.op_type == "Reshape" and i == 0 for t in pieces for n, i in self.idx.uses(t)):
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
                self._split(sid, node, out, self.idx.shapes[out][-1])
            else:
                raise Refusal(f"the projection output '{out}' is also read by {node.op_type} '{node.name}'")

    def _split(self, sid: str, node, data: str, channels: int) -> None:
        din = self.idx.shapes.get(data)
        entries = shape_entries(self.idx, node.input[1])
        rank = len(din) if din else 0
        if entries is None or not din or len(entries) != rank + 1:
            raise Refusal(f"Reshape '{node.name}' splits the channels by a shape onnxprune cannot follow")
        eh, ed = entries[-2:]
        if not (isinstance(eh, Const) and isinstance(ed, Const)):
            raise Refusal(f"Reshape '{node.name}' reads its head count or head size from a shape")
        allowzero = attr(node, "allowzero", 0)
        if eh.value > 0 and ed.value > 0 and eh.value * ed.value == channels:
            heads, dh = eh.value, ed.value
        elif eh.value == -1 and ed.value > 0 and channels % ed.value == 0 and leading_kept(self.idx, data, entries[:-2], allowzero, rank - 1):
            heads, dh = channels // ed.value, ed.value
        elif ed.value == -1 and eh.value > 0 and channels % eh.value == 0 and leading_kept(self.idx, data, entries[:-2], allowzero, rank - 1):
            heads, dh = eh.value, channels // eh.value
        else:
            raise Refusal(f"Reshape '{node.name}' does not split the {channels} channels into heads")
        stream = self.streams[sid]
        stream.heads, stream.head_dim = heads, dh
        block = self.blocks[sid]
        if eh.value > 0:
            if eh.initializer is None:
                raise Refusal(f"Reshape '{node.name}' takes its head count from a computed constant")
            block.counts.append(AttrSite(node.name, "reshape", (self.unit_layout(sid),), name=eh.initializer,
                                         index=eh.index, factor=1))
        block.nodes.add(node.name)
        self._tag(node.output[0], Tag(rank - 1, rank + 1, heads, rank, sid))

    def unit_layout(self, sid: str, block: int = 1) -> Layout:
        s = self.streams[sid]
        return Layout(s.rank - 1, s.rank, (Segment(s.source, 0, s.heads),), block=block)

    def _tag(self, tensor: str, tag: Tag) -> None:
        self.tags[tensor] = tag
        self.blocks[self.find(tag.root)].tensors.append(tensor)

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
        out = self._effect(node, tagged)
        self.blocks[root].nodes.add(node.name)
        for tensor, tag in out.items():
            self._tag(tensor, tag)

    def _effect(self, node, tagged: dict) -> dict:
        """Output tags of `node`, or Refusal."""
        op, t0 = node.op_type, next(iter(tagged.values()))
        if op in UNARY:
            if set(tagged) != {0}:
                raise Refusal(f"heads enter {op} '{node.name}' as a parameter")
            return {node.output[0]: t0}
        if op in BROADCAST:
            return {node.output[0]: self._broadcast(node, tagged)}
        if op == "Transpose":
            perm = list(attr(node, "perm", list(range(t0.rank))[::-1]))
            return {node.output[0]: replace(t0, axis=perm.index(t0.axis),
                                            dh=None if t0.dh is None else perm.index(t0.dh))}
        if op == "Softmax" or op == "LogSoftmax":
            axis = attr(node, "axis", -1 if self.opset >= 13 else 1)
            axis = axis + t0.rank if axis < 0 else axis
            if axis == t0.axis or (self.opset < 13 and axis < t0.axis):
                raise Refusal(f"{op} '{node.name}' normalises across heads")
            return {node.output[0]: t0}
        if op == "MatMul":
            return {node.output[0]: self._matmul(node, tagged)}
        if op == "Reshape":
            return self._reshape(node, tagged)
        if op in ("Slice", "Split", "Concat"):
            return self._along_other_axis(node, tagged)
        raise Refusal(f"heads reach {op} '{node.name}', which onnxprune does not follow for heads")

    def _broadcast(self, node, tagged: dict) -> Tag:
        """Element-wise: tagged operands align on one head axis; the others broadcast over it."""
        ranks = [self.idx.rank(t) if i not in tagged else tagged[i].rank for i, t in enumerate(node.input) if t]
        if any(r is None for r in ranks):
            raise Refusal(f"{node.op_type} '{node.name}' has an operand of unknown rank")
        out_rank = max(ranks)
        axes = {out_rank - t.rank + t.axis for t in tagged.values()}
        dhs = {None if t.dh is None else out_rank - t.rank + t.dh for t in tagged.values()}
        heads = {t.heads for t in tagged.values()}
        if len(axes) != 1 or len(heads) != 1:
            raise Refusal(f"{node.op_type} '{node.name}' combines heads on different axes")
        axis = axes.pop()
        for i, t in enumerate(node.input):
            if not t or i in tagged:
                continue
            if not size_one_at(self.idx, t, out_rank - axis):
                raise Refusal(f"{node.op_type} '{node.name}' combines the heads with '{t}', which does not "
                              "broadcast over the head axis")
        t0 = next(iter(tagged.values()))
        return Tag(axis, out_rank, t0.heads, dhs.pop() if len(dhs) == 1 else None, t0.root)

    def _matmul(self, node, tagged: dict) -> Tag:
        """A batched MatMul of two head-carrying tensors on the same head axis."""
        if set(tagged) != {0, 1}:
            raise Refusal(f"MatMul '{node.name}' multiplies heads with a tensor that has none")
        a, b = tagged[0], tagged[1]
        r = a.rank
        if b.rank != r or a.axis != b.axis or a.axis >= r - 2 or a.heads != b.heads:
            raise Refusal(f"MatMul '{node.name}' mixes heads (they are not one batch axis of both operands)")
        if b.dh == r - 1:
            self.streams[b.root].role = self.streams[b.root].role or "v"
            dh = r - 1
        else:
            if a.dh == r - 1 and b.dh == r - 2:
                self.streams[a.root].role = self.streams[a.root].role or "q"
                self.streams[b.root].role = self.streams[b.root].role or "k"
            dh = r - 2 if a.dh == r - 2 else None
        return Tag(a.axis, r, a.heads, dh, b.root if b.dh == r - 1 else a.root)

    def _along_other_axis(self, node, tagged: dict) -> dict:
        op, t0 = node.op_type, next(iter(tagged.values()))
        if op == "Concat":
            axis = attr(node, "axis")
            if len(tagged) != len([t for t in node.input if t]) or \
                    len({(t.axis, t.rank, t.heads) for t in tagged.values()}) != 1:
                raise Refusal(f"Concat '{node.name}' joins heads with a tensor that has none")
        elif op == "Split":
            axis = attr(node, "axis", 0)
            if set(tagged) != {0}:
                raise Refusal(f"Split '{node.name}' takes heads as its sizes")
        else:
            if set(tagged) != {0}:
                raise Refusal(f"Slice '{node.name}' takes heads as a parameter")
            axes = self.idx.known_value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            if axes is None:
                raise Refusal(f"Slice '{node.name}' may cut the head axis (no constant axes)")
            axes = [int(a) + t0.rank if int(a) < 0 else int(a) for a in axes.reshape(-1)]
            if t0.axis in axes:
                raise Refusal(f"Slice '{node.name}' cuts the head axis")
            return {node.output[0]: t0}
        axis = axis + t0.rank if axis < 0 else axis
        if axis == t0.axis:
            raise Refusal(f"{op} '{node.name}' cuts or joins the head axis")
        return {o: t0 for o in node.output if o}

    def _reshape(self, node, tagged: dict) -> dict:
        """The merge of [..., H, Dh] into H*Dh features, read by the output projection."""
        if set(tagged) != {0}:
            raise Refusal(f"Reshape '{node.name}' takes heads as its shape")
        t = tagged[0]
        data = node.input[0]
        din = self.idx.shapes.get(data)
        if t.axis != t.rank - 2 or t.dh != t.rank - 1 or din is None or din[-1] is None:
            raise Refusal(f"Reshape '{node.name}' reshapes heads other than merging [heads, head_dim] last")
        dh, width = din[-1], t.heads * din[-1]
        entries = shape_entries(self.idx, node.input[1])
        if entries is None or len(entries) != t.rank - 1 or not isinstance(entries[-1], Const):
            raise Refusal(f"Reshape '{node.name}' merges the heads by a shape onnxprune cannot follow")
        last = entries[-1]
        root = self.find(t.root)
        block = self.blocks[root]
        if last.value == width:
            if last.initializer is None:
                raise Refusal(f"Reshape '{node.name}' takes its merged width from a computed constant")
            block.counts.append(AttrSite(node.name, "reshape", (self.unit_layout(t.root),), name=last.initializer,
                                         index=last.index, factor=dh))
        elif not (last.value == -1 and leading_kept(self.idx, data, entries[:-1], attr(node, "allowzero", 0), t.rank - 2)):
            raise Refusal(f"Reshape '{node.name}' does not merge the heads into {width} features")
        out = node.output[0]
        uses = self.idx.uses(out)
        if len(uses) != 1 or uses[0][0].op_type != "MatMul" or uses[0][1] != 0 or out in self.idx.graph_outputs:
            raise Refusal(f"the merged heads of Reshape '{node.name}' are not read by one output projection")
        layout = Layout(t.rank - 2, t.rank - 1, (Segment(self.streams[t.root].source, 0, t.heads),), block=dh)
        block.ends.append((node.name, consumer(self.idx, uses[0][0], 0, layout)))
        block.nodes.add(node.name)
        return {}

    # -- blocks ----------------------------------------------------------------------------
    def _results(self) -> list:
        members = {}
        for sid in self.streams:
            members.setdefault(self.find(sid), []).append(sid)
        out = []
        for root, sids in members.items():
            parts = [self.blocks[s] for s in sids]
            found = sorted((b.when, b.reason) for b in parts if b.reason)
            reason = found[0][1] if found else None
            ends = [e for b in parts for e in b.ends]
            if reason is None and len(sids) < 2:
                reason = "the heads are never multiplied with another projection's heads"
            if reason is None and len(ends) != 1:
                reason = "the heads reach no output projection" if not ends else "the heads reach several outputs"
            heads = {self.streams[s].heads for s in sids}
            if reason is None and len(heads) != 1:
                reason = f"the projections have different head counts {sorted(heads)}"
            for source, (_, pieces) in self.packed.items():
                inside = sum(p in sids for p in pieces)
                if reason is None and 0 < inside < len(pieces):
                    reason = f"the pieces of packed projection '{source}' feed different attention blocks"
                if reason is None and inside and len({self.streams[p].head_dim for p in pieces}) != 1:
                    reason = f"the pieces of packed projection '{source}' have different head sizes"
            producers = tuple(dict.fromkeys(self.streams[s].producer.node for s in sids))
            if reason is not None:
                out.append(HeadRefusal(producers, reason))
                continue
            out.append(self._group(sids, parts, ends[0][1]))
        return out

    def _group(self, sids, parts, o) -> HeadGroup:
        streams, counts = [], [c for b in parts for c in b.counts]
        for source in dict.fromkeys(self.streams[s].source for s in sids):
            own = [self.streams[s] for s in sids if self.streams[s].source == source]
            own.sort(key=lambda st: st.piece)
            dh = own[0].head_dim
            layout = Layout(own[0].rank - 1, own[0].rank, tuple(Segment(source, 0, st.heads) for st in own), block=dh)
            role = own[0].role or "qkv"[len(streams) % 3] if len(own) == 1 else "".join(st.role for st in own)
            streams.append(HeadStream(role, own[0].producer, layout, dh))
            if source in self.packed:
                split = self.packed[source][0]
                counts.append(AttrSite(split.name, "split", tuple(self.unit_layout(s, self.streams[s].head_dim)
                                                                  for s in self.packed[source][1]),
                                       name=split.input[1] if len(split.input) > 1 and split.input[1] else None))
        order = self.idx.order.__getitem__
        nodes = sorted({n for b in parts for n in b.nodes}, key=order)
        return HeadGroup(units=next(iter({self.streams[s].heads for s in sids})), head_dim=o.layout.block,
                         queries_per_unit=1, streams=tuple(streams), output=o, counts=tuple(counts),
                         nodes=tuple(nodes), tensors=tuple(t for b in parts for t in b.tensors))
