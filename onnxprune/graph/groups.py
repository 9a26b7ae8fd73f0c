"""Typed results of graph analysis: prunable channel groups and the layers left alone.

These are plain frozen values; every later stage (capture, select, rewrite, budget) reads
them and none of them needs the graph traversal again. Every place that depends on a group's
channels is a *site* carrying the channel layout of that axis (see layout.py), so a site can
be rewritten in the current model's coordinates whatever else was pruned before.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .layout import Layout, channel_indices  # noqa: F401 - solve/problem.py imports it from here


@dataclass(frozen=True)
class ParamSite:
    """An initializer whose `axis` is laid out like `layout`."""

    name: str
    axis: int
    layout: Layout

    def to_dict(self) -> dict:
        return {"name": self.name, "axis": self.axis, "block": self.layout.block}


@dataclass(frozen=True)
class AttrSite:
    """A value derived from channel counts: a Conv `group`, Split sizes, a Reshape entry.

    kind 'conv_group': node's `group` = positions of layouts[0];
    kind 'split': node's split sizes = positions x block of each output layout;
    kind 'reshape': entry `index` of shape constant `name` = positions of layouts[0] x factor;
    kind 'num_heads' / 'kv_num_heads' / 'q_num_heads': the node's attribute of that name =
    positions of layouts[0] x factor (a fused attention op, see fused_attention.py);
    kind 'qkv_hidden_sizes': the node's attribute = positions x factor of each layout;
    kind 'pad': a Pad of zeros on the channel axis: `values` are its original pads (attribute,
    or input `name` when given), entries `index` and `index + factor` (before, after on the
    channel axis) = positions of layouts[0] and layouts[1].
    """

    node: str
    kind: str
    layouts: tuple
    name: str | None = None
    index: int = 0
    factor: int = 1
    values: tuple = ()


@dataclass(frozen=True)
class Producer:
    """A node whose output channels are a group's: its weight's `weight_axis` indexes them."""

    node: str
    op: str                  # Conv | Gemm | MatMul
    weight: str
    weight_axis: int
    bias: str | None = None
    bias_node: str | None = None     # the Add carrying a MatMul bias

    @property
    def nodes(self) -> tuple:
        return (self.node,) + ((self.bias_node,) if self.bias_node else ())


@dataclass(frozen=True)
class ConvGeometry:
    """What im2col needs to lay a Conv (or ConvTranspose) consumer's input out as rows x
    (channel, kernel)."""

    kernel: tuple
    strides: tuple
    pads: tuple          # begin pads for every spatial axis, then end pads (ONNX order)
    dilations: tuple
    auto_pad: str = "NOTSET"
    transposed: bool = False         # a ConvTranspose: see capture/features.transposed_cols
    output_padding: tuple = ()


@dataclass(frozen=True)
class Consumer:
    """A Conv / Gemm / MatMul reading pruned channels; its input weights are refitted.

    `layout` describes the contracted axis of its data input. Its weight matrix rows (see
    weights.py) are that axis's elements, each expanded by the kernel area for a Conv.
    """

    node: str
    op: str                 # Conv | ConvTranspose | Gemm | MatMul
    input: str              # the tensor captured for statistics
    weight: str
    weight_axis: int        # axis of `weight` indexed by the input channels
    layout: Layout
    bias: str | None = None          # Conv B, Gemm C, or the constant of the MatMul's Add
    bias_node: str | None = None     # the Add node carrying a MatMul bias
    trans_a: bool = False
    trans_b: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    conv: ConvGeometry | None = None

    @property
    def kernel_area(self) -> int:
        return int(np.prod(self.conv.kernel, dtype=np.int64)) if self.conv else 1

    @property
    def block(self) -> int:
        """Weight rows (features) per input channel position."""
        return self.layout.block * self.kernel_area

    @property
    def weight_site(self) -> ParamSite:
        return ParamSite(self.weight, self.weight_axis, self.layout)

    def features(self, positions, total_positions: int) -> np.ndarray:
        """Weight-matrix rows of the given current input positions, position by position."""
        from .layout import element_indices

        elems = element_indices(positions, self.layout, total_positions)
        k = self.kernel_area
        return (elems[:, None] * k + np.arange(k)).ravel()


@dataclass(frozen=True)
class HeadInfo:
    """What makes a group a group of attention heads (graph/heads.py): its channels are units
    of `queries_per_unit` query heads of `head_dim` features each."""

    num_heads: int
    head_dim: int
    queries_per_unit: int = 1
    pattern: str = "unfused"
    streams: tuple = ()          # (role, producer node) per Q/K/V projection

    def to_dict(self) -> dict:
        return {"num_heads": self.num_heads, "head_dim": self.head_dim,
                "queries_per_unit": self.queries_per_unit, "pattern": self.pattern,
                "streams": {node: role for role, node in self.streams}}


@dataclass(frozen=True)
class Group:
    """Channels that are removed together, with every node and parameter that depends on them.

    Several sources (producer outputs) form one group when an element-wise op couples them
    (residual Add, gated Mul): channel c of each of them is kept or removed together.
    """

    name: str
    channels: int
    producers: tuple        # Producer values
    sources: tuple          # source ids (producer node names) of the coupled outputs
    passthrough: tuple      # node names, topological order
    consumers: tuple        # Consumer values
    sites: tuple            # ParamSite of producers and pass-through ops
    attr_sites: tuple = ()  # AttrSite values
    tensors: tuple = ()     # tensors carrying the channels
    position: int = 0       # topological position of the first producer
    outputs: tuple = ()     # (producer node, Layout of its output channels in group coordinates)
    heads: HeadInfo | None = None   # set when the channels are attention heads (graph/heads.py)

    @property
    def unit(self) -> str:
        """What one channel of this group is: 'head' (a unit of attention heads) or 'channel'."""
        return "head" if self.heads is not None else "channel"

    def output_layout(self, node: str) -> Layout | None:
        """A producer's output channels as layouts name them (None: not recorded)."""
        return next((lay for n, lay in self.outputs if n == node), None)

    @property
    def boundary(self) -> str:
        """The first producer node: pruning this group changes nothing before it."""
        return self.producers[0].node

    @property
    def params(self) -> tuple:
        """Every initializer axis that depends on this group's channels (consumers included)."""
        return self.sites + tuple(c.weight_site for c in self.consumers)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "channels": self.channels,
            "producers": [n for p in self.producers for n in p.nodes],
            "passthrough": list(self.passthrough),
            "consumers": [c.node for c in self.consumers],
            "block_sizes": {c.node: c.block for c in self.consumers},
            "params": [p.to_dict() for p in self.params],
            "attributes": [{"node": a.node, "kind": a.kind} for a in self.attr_sites],
            **({"heads": self.heads.to_dict()} if self.heads is not None else {}),
        }


@dataclass(frozen=True)
class Skipped:
    """A Conv / Gemm / MatMul that is not pruned, and why."""

    node: str
    op: str
    reason: str

    def to_dict(self) -> dict:
        return {"node": self.node, "op": self.op, "reason": self.reason}


@dataclass(frozen=True)
class Analysis:
    groups: tuple
    skipped: tuple
    notes: tuple = field(default=())

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def coverage(self, index) -> dict:
        """Share of Conv/Gemm/MatMul output channels that are prunable (a depthwise Conv's
        follow its group; com.microsoft Attention's packed Q/K/V projection counts as one)."""
        inside = {p.node for g in self.groups for p in g.producers} | {n for g in self.groups for n in g.passthrough}
        prunable = total = 0
        for node in index.topo_nodes():
            packed = node.op_type == "Attention" and node.domain == "com.microsoft"    # its QKV weight
            if not packed and (node.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose")
                               or node.domain not in ("", "ai.onnx")):
                continue
            width = _output_channels(index, node)
            total += width
            prunable += width if node.name in inside else 0
        return {"prunable_channels": prunable, "total_channels": total,
                "share": round(prunable / total, 4) if total else 0.0}

    def to_dict(self, index=None) -> dict:
        out = {
            "groups": [g.to_dict() for g in self.groups],
            "skipped": [s.to_dict() for s in self.skipped],
        }
        if index is not None:
            out["coverage"] = self.coverage(index)
            if index.shape_sources:       # shapes static inference could not give, by fallback
                out["shape_sources"] = dict(sorted(index.shape_sources.items()))
        return out


def _output_channels(index, node) -> int:
    w = index.shapes.get(node.input[1]) if len(node.input) > 1 else None
    if node.op_type == "MatMul" and w and len(w) == 2 and index.is_constant(node.input[1]):
        return int(w[1])                  # also where the output's shape is unknown
    if not w or node.op_type == "MatMul":
        out = index.shapes.get(node.output[0])
        return int(out[-1]) if out and out[-1] is not None else 0
    if node.op_type == "Conv":
        return int(w[0])
    if node.op_type == "ConvTranspose":
        from .index import attr

        return int(w[1]) * int(attr(node, "group", 1))
    if node.op_type == "Gemm":
        from .index import attr

        return int(w[0] if attr(node, "transB", 0) else w[-1])
    return int(w[-1])

